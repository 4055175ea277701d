"""`imagefs convert SOURCE TARGET` as one service function: open the source, build into the
target, store the manifest last. Nothing appears at TARGET unless the conversion succeeds: a
new OCI layout is built in a sibling temp dir and renamed into place; in an existing layout,
blobs this run added are removed again on failure; in a registry, the manifest is pushed only
after every blob it names."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from builder.blobs import BlobSink, LayoutBlobSink, SpoolingBlobSink
from builder.build import Progress, build_image
from builder.refs import parse_source, parse_target
from builder.sources import LayerSource, open_image_store, opened
from imagefs.config import Config
from imagefs.digest import Digest
from imagefs.image import ImageStore
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


def convert(
    source: str | ImageStore,
    target: str | ImageTarget,
    config: Config,
    *,
    progress: Progress | None = None,
    prefetch_paths: Sequence[str] = (),
    platform: Mapping[str, str] | None = None,
) -> ConvertResult:
    """Convert SOURCE (`oci:PATH[:TAG]`, `docker-archive:PATH`, `dir:PATH`, or an opened
    `ImageStore` such as a registry image) into an imagefs image at TARGET (`oci:PATH[:TAG]`,
    tag default "latest", or an opened `ImageTarget` such as a registry repository).

    `progress(bytes_done, bytes_total_or_None)` is called as source bytes are consumed.
    `prefetch_paths` (absolute image paths of regular files, in order) become the image's
    prefetch list. `platform` picks the image of a multi-platform source index."""
    started = time.monotonic()
    with _source(source, platform) as src, _target(target) as (dest, sink, where):
        image = build_image(src, sink, config, progress=progress, prefetch_paths=prefetch_paths)
        dest.put_manifest(image.manifest_descriptor, image.manifest_bytes)
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
    )
