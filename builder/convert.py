"""`imagefs convert SOURCE TARGET` as one service function: open the source, build into the
target, store the manifest last. Nothing appears at TARGET unless the conversion succeeds: a
new OCI layout is built in a sibling temp dir and renamed into place; in an existing layout,
blobs this run added are removed again on failure; in a registry, the manifest is pushed only
after every blob it names."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from builder.blobs import BlobSink, LayoutBlobSink, SpoolingBlobSink
from builder.build import Progress, build_image
from builder.refs import parse_source, parse_target
from builder.sources import LayerSource, open_image_store, opened
from imagefs.chunkdict import (
    ChainedChunkDictionary,
    LmdbChunkDictionary,
    MemoryChunkDictionary,
    known_chunks,
)
from imagefs.chunks import BlobReader
from imagefs.config import Config
from imagefs.copy import LazyBlobStream
from imagefs.digest import Digest
from imagefs.errors import NotFoundError
from imagefs.format import ChunkRef, load_bootstrap, parse_imagefs_manifest
from imagefs.image import ImageStore
from imagefs.oci import Descriptor, LayoutRef
from imagefs.target import ImageTarget, LayoutTarget, layout_target


@dataclass(frozen=True, slots=True)
class ConvertResult:
    manifest_digest: Digest
    target: str
    bytes_in: int  # uncompressed file bytes read
    chunks_total: int  # chunk occurrences, duplicates included
    chunks_unique: int  # chunks stored in this image's blobs
    bytes_stored: int  # bytes of the data blobs written
    blobs: int  # data blobs
    seconds: float
    chunks_reused: int = 0  # chunks referenced where other images store them
    bytes_reused: int = 0  # their uncompressed bytes
    external_blobs: int = 0  # blobs of other images this image now lists


@contextlib.contextmanager
def _source(source: str | ImageStore, platform: Mapping[str, str] | None) -> Iterator[LayerSource]:
    if isinstance(source, str):
        with opened(parse_source(source)) as src:
            yield src
        return
    src = open_image_store(source, platform)
    try:
        yield src
    finally:
        src.close()


@contextlib.contextmanager
def _target(target: str | ImageTarget) -> Iterator[tuple[ImageTarget, BlobSink, str]]:
    if isinstance(target, str):
        ref = parse_target(target)
        with layout_target(ref.path, ref.tag) as layout:
            yield layout, LayoutBlobSink(layout), str(ref)
        return
    sink = LayoutBlobSink(target) if isinstance(target, LayoutTarget) else SpoolingBlobSink(target)
    yield target, sink, target.describe()


def dictionary_of(stores: Sequence[ImageStore]) -> MemoryChunkDictionary:
    """The chunks of the imagefs images behind `stores` (their bootstraps only)."""
    dictionary = MemoryChunkDictionary()
    for store in stores:
        _, manifest = store.resolve_manifest()
        image = parse_imagefs_manifest(manifest)
        bootstrap = load_bootstrap(store.read_blob(image.bootstrap.digest))
        dictionary.add(known_chunks(bootstrap, store.describe()))
    return dictionary


def _ensure_blobs(
    target: ImageTarget,
    blobs: Sequence[tuple[Descriptor, str]],
    stores: Mapping[str, ImageStore],
    open_store: Callable[[str], ImageStore] | None,
) -> None:
    """Make the target hold the other images' blobs the new manifest lists (streamed from
    where they are, or mounted within one registry; skipped when already there)."""
    for desc, home in blobs:
        if target.has_blob(desc.digest):
            continue
        store = stores.get(home)
        if store is None:
            if open_store is None:
                raise NotFoundError(f"blob {desc.digest} lives in {home}, which cannot be opened")
            store = open_store(home)
        with LazyBlobStream(store, desc.digest) as stream:
            target.put_blob_from(desc.digest, desc.size, cast(BinaryIO, stream))


def _absolute(ref: str) -> str:
    """A layout reference with an absolute path (the chunk index outlives the cwd)."""
    if not ref.startswith("oci:"):
        return ref
    layout = LayoutRef.parse(ref)
    return str(LayoutRef(layout.path.absolute(), layout.tag))


def convert(
    source: str | ImageStore,
    target: str | ImageTarget,
    config: Config,
    *,
    progress: Progress | None = None,
    prefetch_paths: Sequence[str] = (),
    platform: Mapping[str, str] | None = None,
    dedup_with: Sequence[ImageStore] = (),
    chunk_index: Path | None = None,
    open_store: Callable[[str], ImageStore] | None = None,
) -> ConvertResult:
    """Convert SOURCE (`oci:PATH[:TAG]`, `docker-archive:PATH`, `dir:PATH`, or an opened
    `ImageStore` such as a registry image) into an imagefs image at TARGET (`oci:PATH[:TAG]`,
    tag default "latest", or an opened `ImageTarget` such as a registry repository).

    `progress(bytes_done, bytes_total_or_None)` is called as source bytes are consumed.
    `prefetch_paths` (absolute image paths of regular files, in order) become the image's
    prefetch list. `platform` picks the image of a multi-platform source index.

    Chunks that the `dedup_with` images or the persistent `chunk_index` already store are
    referenced where they are: their blobs are listed in the new manifest and copied (or
    mounted) into the target, never re-chunked. `open_store` opens an image the chunk index
    names as a chunk's home. After a successful conversion the index learns the new image's
    chunks (with TARGET as their home)."""
    started = time.monotonic()
    homes = {store.describe(): store for store in dedup_with}
    memory = dictionary_of(dedup_with) if dedup_with else None
    with contextlib.ExitStack() as stack:
        index = None
        if chunk_index is not None:
            index = stack.enter_context(LmdbChunkDictionary(chunk_index))
        parts = [d for d in (memory, index) if d is not None]
        dictionary = ChainedChunkDictionary(*parts) if parts else None
        src = stack.enter_context(_source(source, platform))
        dest, sink, where = stack.enter_context(_target(target))
        readers: dict[str, BlobReader] = {}

        def fetch(ref: ChunkRef, home: str) -> bytes:
            reader = readers.get(home)
            if reader is None:
                store = homes.get(home) or (open_store(home) if open_store else None)
                if store is None:
                    raise NotFoundError(f"chunks stored in {home} cannot be read")
                reader = readers[home] = store.blob_reader()
            return reader.read_range(ref.blob, ref.offset, ref.stored_size)

        image = build_image(
            src,
            sink,
            config,
            progress=progress,
            prefetch_paths=prefetch_paths,
            dictionary=dictionary,
            fetch=fetch,
        )
        _ensure_blobs(dest, image.external, homes, open_store)
        dest.put_manifest(image.manifest_descriptor, image.manifest_bytes)
        if index is not None:
            bootstrap = load_bootstrap(image.bootstrap_bytes)
            index.add(known_chunks(bootstrap, _absolute(where)))
    stats = image.stats
    return ConvertResult(
        manifest_digest=image.manifest_descriptor.digest,
        target=where,
        bytes_in=stats.bytes_in,
        chunks_total=stats.chunks_total,
        chunks_unique=stats.chunks_unique,
        bytes_stored=stats.bytes_stored,
        blobs=stats.blobs,
        seconds=time.monotonic() - started,
        chunks_reused=stats.chunks_reused,
        bytes_reused=stats.bytes_reused,
        external_blobs=len(image.external),
    )
