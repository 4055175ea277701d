"""`imagefs copy`: one image from an `ImageStore` into an `ImageTarget`, byte for byte (no
re-chunking): the config and every layer blob the target lacks, streamed and verified, then
the manifest, last."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import BinaryIO, cast

from imagefs.digest import Digest
from imagefs.image import ImageStore
from imagefs.oci import Descriptor
from imagefs.target import ImageTarget


class LazyBlobStream(io.RawIOBase):
    """Opens the source blob on the first read: a target that mounts the blob from
    elsewhere, or finds it already there, never starts the download."""

    def __init__(self, store: ImageStore, digest: Digest) -> None:
        self._store = store
        self._digest = digest
        self._stream: BinaryIO | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._stream is None:
            self._stream = self._store.open_blob(self._digest)
        return self._stream.read(size)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        super().close()


@dataclass(frozen=True, slots=True)
class CopyResult:
    manifest_digest: Digest
    target: str
    blobs_copied: int
    blobs_skipped: int  # the target already held them
    bytes_copied: int


def copy_image(
    store: ImageStore,
    target: ImageTarget,
    *,
    platform: Mapping[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> CopyResult:
    desc, manifest = store.resolve_manifest(platform)
    raw = store.read_manifest(desc)
    copied = skipped = nbytes = 0
    seen: set[Digest] = set()
    for blob in (manifest.config, *manifest.layers):
        if blob.digest in seen:
            continue
        seen.add(blob.digest)
        if target.has_blob(blob.digest):
            skipped += 1
        else:
            with LazyBlobStream(store, blob.digest) as f:
                target.put_blob_from(blob.digest, blob.size, cast(BinaryIO, f))
            copied += 1
            nbytes += blob.size
        if progress is not None:
            progress(blob.size)
    target.put_manifest(Descriptor(desc.media_type, desc.digest, desc.size), raw)
    return CopyResult(desc.digest, target.describe(), copied, skipped, nbytes)
