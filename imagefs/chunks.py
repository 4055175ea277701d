"""Chunk sources and the chunk cache: how a reader gets verified chunk bytes.

Seams (typing.Protocol): `BlobReader` (ranged reads of a blob), `ChunkCache` (digest ->
bytes), `ChunkSource` (refs -> verified bytes). Wrappers compose in one wiring function
(`build_chunk_source`): a cache in front of a fetcher that coalesces neighbouring chunks of
one blob into few range reads, decodes and verifies every chunk before anyone sees it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from imagefs.digest import ChunkDigest, Digest
from imagefs.errors import CacheError, FormatError, IntegrityError, NotFoundError, SourceError
from imagefs.format import (
    BLOB_FOOTER_SIZE,
    BlobChunk,
    ChunkCodec,
    ChunkRef,
    decode_blob_footer,
    decode_blob_table,
)

# ---------------------------------------------------------------------------------------------
# Protocols


class BlobReader(Protocol):
    """Reads byte ranges of blobs (local files, a registry, a mirror)."""

    def read_range(self, blob: Digest, offset: int, length: int) -> bytes: ...


class ChunkCache(Protocol):
    """Verified, uncompressed chunk bytes by digest. `put` may silently decline."""

    def get(self, digest: ChunkDigest) -> bytes | None: ...

    def put(self, digest: ChunkDigest, data: bytes) -> None: ...


class ChunkSource(Protocol):
    """Returns the verified uncompressed bytes of each ref, in order."""

    def get_chunks(self, refs: Sequence[ChunkRef]) -> list[bytes]: ...


# ---------------------------------------------------------------------------------------------
# Statistics


@dataclass
class ReadStats:
    """Counters of one mount (or one reader), safe to update from many threads."""

    bytes_read: int = 0
    read_calls: int = 0
    bytes_fetched: int = 0
    chunks_fetched: int = 0
    cache_hits: int = 0
    requests: int = 0
    integrity_errors: int = 0
    fetched_by_blob: dict[str, int] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                setattr(self, key, getattr(self, key) + value)

    def fetched(self, blob: Digest, nbytes: int, seconds: float) -> None:
        with self._lock:
            self.requests += 1
            self.bytes_fetched += nbytes
            key = str(blob)
            self.fetched_by_blob[key] = self.fetched_by_blob.get(key, 0) + nbytes
            if len(self.latencies_s) < 100_000:
                self.latencies_s.append(seconds)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            lat = sorted(self.latencies_s)

            def pct(p: float) -> float:
                return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 3) if lat else 0.0

            return {
                "bytes_read": self.bytes_read,
                "read_calls": self.read_calls,
                "bytes_fetched": self.bytes_fetched,
                "chunks_fetched": self.chunks_fetched,
                "cache_hits": self.cache_hits,
                "requests": self.requests,
                "integrity_errors": self.integrity_errors,
                "bytes_fetched_by_blob": dict(sorted(self.fetched_by_blob.items())),
                "request_latency_ms": {
                    "p50": pct(0.5),
                    "p90": pct(0.9),
                    "p99": pct(0.99),
                    "max": pct(1.0),
                },
            }


# ---------------------------------------------------------------------------------------------
# Range planning (pure)


@dataclass(frozen=True, slots=True)
class RangePlan:
    """One read of `length` bytes at `offset` of `blob` that serves `refs`."""

    blob: Digest
    offset: int
    length: int
    refs: tuple[ChunkRef, ...]


def plan_ranges(refs: Sequence[ChunkRef], max_bytes: int, max_gap: int) -> list[RangePlan]:
    """Group chunks of one blob that lie close together into few reads.

    Chunks are sorted by (blob, offset); a chunk joins the current read when it starts at
    most `max_gap` bytes after the read's end and the read stays within `max_bytes` (a single
    chunk larger than `max_bytes` is still read whole). Duplicate refs are read once.
    """
    unique = sorted(
        {(r.blob, r.offset, r.stored_size): r for r in refs}.values(),
        key=lambda r: (r.blob, r.offset),
    )
    plans: list[RangePlan] = []
    group: list[ChunkRef] = []
    start = end = 0
    for ref in unique:
        if group and (
            ref.blob == group[0].blob
            and ref.offset - end <= max_gap
            and ref.offset + ref.stored_size - start <= max_bytes
            and ref.offset >= end
        ):
            group.append(ref)
            end = max(end, ref.offset + ref.stored_size)
            continue
        if group:
            plans.append(RangePlan(group[0].blob, start, end - start, tuple(group)))
        group, start, end = [ref], ref.offset, ref.offset + ref.stored_size
    if group:
        plans.append(RangePlan(group[0].blob, start, end - start, tuple(group)))
    return plans


# ---------------------------------------------------------------------------------------------
# Fetching


class FetchingChunkSource:
    """Fetches chunks through a `BlobReader` in coalesced ranges, decodes and verifies them.

    A chunk that fails verification is fetched once more on its own; a second failure is
    an `IntegrityError`. Wrong bytes never leave this class.
    """

    def __init__(
        self,
        reader: BlobReader,
        stats: ReadStats,
        *,
        coalesce_max_bytes: int = 4 << 20,
        coalesce_gap_bytes: int = 64 << 10,
    ) -> None:
        self._reader = reader
        self._stats = stats
        self._max = coalesce_max_bytes
        self._gap = coalesce_gap_bytes
        self._local = threading.local()

    def _codec(self) -> ChunkCodec:
        codec: ChunkCodec | None = getattr(self._local, "codec", None)
        if codec is None:
            codec = self._local.codec = ChunkCodec()
        return codec

    def _read(self, blob: Digest, offset: int, length: int) -> bytes:
        t0 = time.perf_counter()
        data = self._reader.read_range(blob, offset, length)
        self._stats.fetched(blob, len(data), time.perf_counter() - t0)
        if len(data) != length:
            raise IntegrityError(f"short read from blob {blob}: {len(data)} of {length} bytes")
        return data

    def get_chunks(self, refs: Sequence[ChunkRef]) -> list[bytes]:
        got: dict[ChunkDigest, bytes] = {}
        codec = self._codec()
        for plan in plan_ranges(refs, self._max, self._gap):
            data = self._read(plan.blob, plan.offset, plan.length)
            view = memoryview(data)
            for ref in plan.refs:
                at = ref.offset - plan.offset
                try:
                    got[ref.digest] = codec.decode(view[at : at + ref.stored_size], ref)
                except IntegrityError:
                    self._stats.add(integrity_errors=1)
                    again = self._read(ref.blob, ref.offset, ref.stored_size)
                    got[ref.digest] = codec.decode(again, ref)
                self._stats.add(chunks_fetched=1)
        return [got[r.digest] for r in refs]


class CachedChunkSource:
    """Serves chunks from a cache, fetching the misses in one batch from `inner`.

    Single-flight: a chunk that another thread is already fetching is waited for, not
    fetched again (the kernel issues parallel readahead requests for neighbouring pages).
    """

    def __init__(self, inner: ChunkSource, cache: ChunkCache, stats: ReadStats) -> None:
        self._inner = inner
        self._cache = cache
        self._stats = stats
        self._lock = threading.Lock()
        self._inflight: dict[ChunkDigest, threading.Event] = {}

    def get_chunks(self, refs: Sequence[ChunkRef]) -> list[bytes]:
        found: dict[ChunkDigest, bytes] = {}
        missing: dict[ChunkDigest, ChunkRef] = {}
        for r in refs:
            if r.digest not in found and r.digest not in missing:
                data = self._cache.get(r.digest)
                if data is None:
                    missing[r.digest] = r
                else:
                    found[r.digest] = data
        if found:
            self._stats.add(cache_hits=sum(1 for r in refs if r.digest in found))
        if missing:
            mine: list[ChunkRef] = []
            waits: list[tuple[ChunkRef, threading.Event]] = []
            with self._lock:
                for digest, r in missing.items():
                    event = self._inflight.get(digest)
                    if event is None:
                        self._inflight[digest] = threading.Event()
                        mine.append(r)
                    else:
                        waits.append((r, event))
            try:
                if mine:
                    for ref, data in zip(mine, self._inner.get_chunks(mine), strict=True):
                        self._cache.put(ref.digest, data)
                        found[ref.digest] = data
            finally:
                with self._lock:
                    for r in mine:
                        self._inflight.pop(r.digest).set()
            for r, event in waits:
                event.wait()
                data = self._cache.get(r.digest)
                if data is None:  # the other fetch failed, or the cache declined the entry
                    data = self._inner.get_chunks([r])[0]
                    self._cache.put(r.digest, data)
                found[r.digest] = data
        return [found[r.digest] for r in refs]


# ---------------------------------------------------------------------------------------------
# Caches


class MemoryChunkCache:
    """A bounded in-process LRU of chunk bytes (also the in-memory fake for tests)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[ChunkDigest, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, digest: ChunkDigest) -> bytes | None:
        with self._lock:
            data = self._items.get(digest)
            if data is not None:
                self._items.move_to_end(digest)
            return data

    def put(self, digest: ChunkDigest, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(digest, None)
            if old is not None:
                self._size -= len(old)
            self._items[digest] = data
            self._size += len(data)
            while self._size > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._size -= len(dropped)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size(self) -> int:
        return self._size


class LmdbChunkCache:
    """The node-wide chunk cache: an LMDB environment keyed by the 32-byte chunk digest.

    Entries are written in one transaction each, so a killed process leaves either the
    whole verified entry or nothing. Values are re-verified against their digest on read;
    a mismatching entry (disk corruption) is deleted and reported as a miss.
    When the map is full, `put` declines and reads are served uncached.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        import lmdb

        self.path = Path(path)
        self.max_bytes = max_bytes
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._env = lmdb.open(
                str(self.path),
                map_size=max(max_bytes, 1 << 20),
                max_dbs=2,
                subdir=True,
                metasync=False,
                sync=False,
                readahead=False,
                max_readers=1024,
            )
        except (OSError, lmdb.Error) as exc:
            raise CacheError(f"cannot open the chunk cache at {self.path}: {exc}") from None
        self._lmdb = lmdb

    def get(self, digest: ChunkDigest) -> bytes | None:
        try:
            with self._env.begin(buffers=False) as txn:
                data = txn.get(digest.raw)
        except self._lmdb.Error as exc:
            raise CacheError(f"chunk cache read failed: {exc}") from None
        if data is None:
            return None
        if ChunkDigest.of(data) != digest:
            with contextlib.suppress(self._lmdb.Error), self._env.begin(write=True) as txn:
                txn.delete(digest.raw)
            return None
        return data

    def put(self, digest: ChunkDigest, data: bytes) -> None:
        try:
            with self._env.begin(write=True) as txn:
                txn.put(digest.raw, data, overwrite=False)
        except self._lmdb.MapFullError:
            return
        except self._lmdb.Error as exc:
            raise CacheError(f"chunk cache write failed: {exc}") from None

    def stats(self) -> dict[str, int]:
        info = self._env.info()
        st = self._env.stat()
        return {
            "entries": st["entries"],
            "map_bytes": info["map_size"],
            "used_bytes": (info["last_pgno"] + 1) * st["psize"],
        }

    def close(self) -> None:
        self._env.close()


class TieredChunkCache:
    """A fast small cache in front of a larger one; hits in the second are promoted."""

    def __init__(self, first: ChunkCache, second: ChunkCache) -> None:
        self._first = first
        self._second = second

    def get(self, digest: ChunkDigest) -> bytes | None:
        data = self._first.get(digest)
        if data is None:
            data = self._second.get(digest)
            if data is not None:
                self._first.put(digest, data)
        return data

    def put(self, digest: ChunkDigest, data: bytes) -> None:
        self._first.put(digest, data)
        self._second.put(digest, data)


# ---------------------------------------------------------------------------------------------
# Blob readers


class FileBlobReader:
    """Reads blobs from files (an OCI layout's blobs/sha256 directory) with pread."""

    def __init__(self, blob_dir: Path) -> None:
        self._dir = Path(blob_dir)
        self._fds: dict[Digest, int] = {}
        self._lock = threading.Lock()

    def _fd(self, blob: Digest) -> int:
        fd = self._fds.get(blob)
        if fd is None:
            with self._lock:
                fd = self._fds.get(blob)
                if fd is None:
                    try:
                        fd = os.open(self._dir / blob.algorithm / blob.hex, os.O_RDONLY)
                    except FileNotFoundError:
                        raise NotFoundError(f"blob {blob} is missing from {self._dir}") from None
                    self._fds[blob] = fd
        return fd

    def read_range(self, blob: Digest, offset: int, length: int) -> bytes:
        try:
            return os.pread(self._fd(blob), length, offset)
        except OSError as exc:
            raise SourceError(f"cannot read blob {blob}: {exc.strerror}") from None

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


class MemoryBlobReader:
    """Blobs held in memory (the fake for tests)."""

    def __init__(self, blobs: dict[Digest, bytes]) -> None:
        self.blobs = blobs
        self.reads: list[tuple[Digest, int, int]] = []

    def read_range(self, blob: Digest, offset: int, length: int) -> bytes:
        self.reads.append((blob, offset, length))
        try:
            return self.blobs[blob][offset : offset + length]
        except KeyError:
            raise NotFoundError(f"blob {blob} not found") from None


def build_chunk_source(
    reader: BlobReader,
    stats: ReadStats,
    *,
    cache: ChunkCache | None = None,
    memory_cache_bytes: int = 64 << 20,
    coalesce_max_bytes: int = 4 << 20,
    coalesce_gap_bytes: int = 64 << 10,
) -> ChunkSource:
    """The one wiring of a reader's chunk path: memory LRU -> node cache -> verified fetch."""
    fetcher = FetchingChunkSource(
        reader,
        stats,
        coalesce_max_bytes=coalesce_max_bytes,
        coalesce_gap_bytes=coalesce_gap_bytes,
    )
    tier: ChunkCache = MemoryChunkCache(memory_cache_bytes)
    if cache is not None:
        tier = TieredChunkCache(tier, cache)
    return CachedChunkSource(fetcher, tier, stats)


def iter_blob_chunks(reader: BlobReader, blob: Digest, size: int) -> Iterator[BlobChunk]:
    """The chunk table a blob carries about itself (footer, then table)."""
    if size < BLOB_FOOTER_SIZE:
        raise FormatError(f"blob {blob} is too short to be an imagefs blob")
    footer = decode_blob_footer(
        reader.read_range(blob, size - BLOB_FOOTER_SIZE, BLOB_FOOTER_SIZE), size
    )
    table = reader.read_range(blob, footer.table_offset, footer.table_size)
    yield from decode_blob_table(table, footer)
