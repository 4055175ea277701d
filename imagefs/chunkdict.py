"""The chunk dictionary: chunk digest -> where that chunk is already stored (blob, offset,
sizes, and the image that holds the blob), so that a conversion references it instead of
storing it again.

`MemoryChunkDictionary` is built from the bootstraps of the images given to
`convert --dedup-with`; `LmdbChunkDictionary` is the persistent index a CI pipeline keeps
between runs (`--chunk-index`): one LMDB environment, updated in one write transaction per
conversion, safe for concurrent processes. The first image to store a chunk stays its home.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import lmdb

from imagefs.digest import ChunkDigest, Digest
from imagefs.errors import CacheError, FormatError
from imagefs.format import Bootstrap, ChunkRef, Compression

MAP_SIZE = 64 << 30  # address space only; the file grows as entries are added


@dataclass(frozen=True, slots=True)
class KnownChunk:
    """A chunk stored in `ref.blob` (of `blob_size` bytes) of the image named `home`."""

    ref: ChunkRef
    blob_size: int
    home: str  # an image reference: oci:PATH[:TAG] or a registry reference


class ChunkDictionary(Protocol):
    def get(self, digest: ChunkDigest) -> KnownChunk | None: ...


def known_chunks(bootstrap: Bootstrap, home: str) -> Iterator[KnownChunk]:
    """Every chunk an image's bootstrap references, with the image as its home."""
    sizes = {b.digest: b.size for b in bootstrap.blobs}
    for ref in bootstrap.chunks():
        yield KnownChunk(ref, sizes.get(ref.blob, 0), home)


class MemoryChunkDictionary:
    """Chunks of a few images, in a dict (first image wins for a shared chunk)."""

    def __init__(self, chunks: Iterable[KnownChunk] = ()) -> None:
        self._chunks: dict[bytes, KnownChunk] = {}
        self.add(chunks)

    def add(self, chunks: Iterable[KnownChunk]) -> None:
        for chunk in chunks:
            self._chunks.setdefault(chunk.ref.digest.raw, chunk)

    def get(self, digest: ChunkDigest) -> KnownChunk | None:
        return self._chunks.get(digest.raw)

    def __len__(self) -> int:
        return len(self._chunks)


class ChainedChunkDictionary:
    """The first dictionary that knows a chunk answers."""

    def __init__(self, *parts: ChunkDictionary) -> None:
        self.parts = parts

    def get(self, digest: ChunkDigest) -> KnownChunk | None:
        for part in self.parts:
            found = part.get(digest)
            if found is not None:
                return found
        return None


# record: blob digest (32), offset, stored size, size, blob size (u64 each), compression (u8),
# then the home reference (UTF-8)
_RECORD = struct.Struct("<32sQQQQB")


def encode_known(chunk: KnownChunk) -> bytes:
    ref = chunk.ref
    head = _RECORD.pack(
        ref.blob.raw, ref.offset, ref.stored_size, ref.size, chunk.blob_size, ref.compression
    )
    return head + chunk.home.encode()


def decode_known(digest: ChunkDigest, value: bytes) -> KnownChunk:
    if len(value) < _RECORD.size:
        raise FormatError("chunk index entry is truncated")
    blob, offset, stored, size, blob_size, comp = _RECORD.unpack_from(value)
    try:
        compression = Compression(comp)
        home = value[_RECORD.size :].decode()
    except (ValueError, UnicodeDecodeError):
        raise FormatError("chunk index entry is malformed") from None
    ref = ChunkRef(digest, Digest.from_raw(blob), offset, stored, size, compression)
    return KnownChunk(ref, blob_size, home)


class LmdbChunkDictionary:
    """The persistent chunk index at `path` (a directory)."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True)
            self._env: Any = lmdb.open(
                str(path), map_size=MAP_SIZE, subdir=True, max_dbs=0, readonly=readonly
            )
        except (OSError, lmdb.Error) as exc:
            raise CacheError(f"cannot open the chunk index {path}: {exc}") from None

    def get(self, digest: ChunkDigest) -> KnownChunk | None:
        try:
            with self._env.begin() as txn:
                value = txn.get(digest.raw)
        except lmdb.Error as exc:
            raise CacheError(f"chunk index {self.path}: {exc}") from None
        return None if value is None else decode_known(digest, bytes(value))

    def add(self, chunks: Iterable[KnownChunk]) -> int:
        """Record chunks not yet known (one transaction); returns how many were new."""
        added = 0
        try:
            with self._env.begin(write=True) as txn:
                for chunk in chunks:
                    if txn.put(chunk.ref.digest.raw, encode_known(chunk), overwrite=False):
                        added += 1
        except lmdb.Error as exc:
            raise CacheError(f"cannot update the chunk index {self.path}: {exc}") from None
        return added

    def stats(self) -> Mapping[str, int]:
        with self._env.begin() as txn:
            return {"chunks": txn.stat()["entries"]}

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> LmdbChunkDictionary:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
