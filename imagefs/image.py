"""Opening an imagefs image for reading: manifest -> bootstrap -> filesystem view.

`ImageStore` is the seam between the core and where images live (an OCI layout here; a
registry through `registry/`, plugged in at the edge).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from imagefs.chunks import (
    BlobReader,
    ChunkCache,
    FileBlobReader,
    ReadStats,
    build_chunk_source,
)
from imagefs.config import Config
from imagefs.digest import Digest
from imagefs.errors import FormatError
from imagefs.format import Bootstrap, ImagefsImage, load_bootstrap, parse_imagefs_manifest
from imagefs.oci import Descriptor, LayoutRef, Manifest, OciLayout
from imagefs.view import FileSystemView


class ImageStore(Protocol):
    """Where an image's manifest and blobs are read from."""

    def resolve_manifest(
        self, platform: Mapping[str, str] | None = None
    ) -> tuple[Descriptor, Manifest]: ...

    def read_manifest(self, desc: Descriptor) -> bytes:
        """The exact bytes of a manifest `resolve_manifest` returned (verified)."""
        ...

    def read_blob(self, digest: Digest) -> bytes: ...

    def open_blob(self, digest: Digest) -> BinaryIO:
        """A stream of the blob's bytes; a digest mismatch surfaces as an error at EOF or
        is caught by the reader hashing what it copies."""
        ...

    def blob_reader(self) -> BlobReader: ...

    def describe(self) -> str: ...


class LayoutImageStore:
    """An image in a local OCI image layout (`oci:PATH[:TAG]`)."""

    def __init__(self, ref: LayoutRef) -> None:
        self.ref = ref
        # absolute: a FUSE server changes its working directory to / once it serves
        self.layout = OciLayout.open(ref.path.absolute())

    def resolve_manifest(
        self, platform: Mapping[str, str] | None = None
    ) -> tuple[Descriptor, Manifest]:
        return self.layout.resolve_manifest(self.ref.tag, platform)

    def read_manifest(self, desc: Descriptor) -> bytes:
        return self.layout.read_blob(desc.digest)

    def read_blob(self, digest: Digest) -> bytes:
        return self.layout.read_blob(digest)

    def open_blob(self, digest: Digest) -> BinaryIO:
        return self.layout.open_blob(digest)

    def blob_reader(self) -> BlobReader:
        return FileBlobReader(Path(self.layout.root) / "blobs")

    def describe(self) -> str:
        return str(self.ref)


@dataclass(frozen=True, slots=True)
class OpenedImage:
    store: ImageStore
    manifest_descriptor: Descriptor
    image: ImagefsImage
    bootstrap: Bootstrap
    view: FileSystemView
    stats: ReadStats


def open_store(ref: str) -> ImageStore:
    """The store for a local image reference (registries are plugged in by the caller)."""
    if ref.startswith("oci:"):
        return LayoutImageStore(LayoutRef.parse(ref))
    raise FormatError(f"unsupported image reference {ref!r} (expected oci:PATH[:TAG])")


def open_image(
    store: ImageStore,
    config: Config,
    *,
    cache: ChunkCache | None = None,
    platform: Mapping[str, str] | None = None,
) -> OpenedImage:
    """Fetch the manifest and the bootstrap (one read), and build the view over them."""
    desc, manifest = store.resolve_manifest(platform)
    image = parse_imagefs_manifest(manifest)
    bootstrap = load_bootstrap(store.read_blob(image.bootstrap.digest))
    stats = ReadStats()
    chunks = build_chunk_source(
        store.blob_reader(),
        stats,
        cache=cache,
        memory_cache_bytes=config.memory_cache_bytes,
        coalesce_max_bytes=config.coalesce_max_bytes,
        coalesce_gap_bytes=config.coalesce_gap_bytes,
        fetch_threads=config.fetch_threads,
    )
    view = FileSystemView(
        bootstrap,
        chunks,
        stats,
        readahead_bytes=config.readahead_bytes,
        locality_bytes=config.locality_bytes,
    )
    return OpenedImage(store, desc, image, bootstrap, view, stats)
