"""`imagefs convert SOURCE TARGET` as one service function: parse the references, open the
source, build into the target OCI layout, tag it. Nothing appears at TARGET unless the
conversion succeeds: a new layout is built in a sibling temp dir and renamed into place; in
an existing layout, blobs this run added are removed again on failure, and index.json is
updated last."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.blobs import LayoutBlobSink
from builder.build import Progress, build_image
from builder.refs import TargetRef, parse_source, parse_target
from builder.sources import opened
from imagefs.config import Config
from imagefs.digest import Digest
from imagefs.errors import ImagefsError, TargetError
from imagefs.oci import OciLayout


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
def _target_layout(ref: TargetRef) -> Iterator[LayoutBlobSink]:
    path = ref.path
    fresh = not path.exists() or (path.is_dir() and not any(path.iterdir()))
    if not fresh:
        try:
            layout = OciLayout.open(path)
        except ImagefsError:
            raise TargetError(f"target {path} exists and is not an OCI image layout") from None
        sink = LayoutBlobSink(layout)
        try:
            yield sink
        except BaseException:
            sink.rollback()
            raise
        return
    parent = path.absolute().parent
    if not parent.is_dir():
        raise TargetError(f"cannot create {path}: {parent} is not a directory")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.imagefs-", dir=parent))
    except OSError as exc:
        raise TargetError(f"cannot create {path}: {exc.strerror}") from None
    try:
        yield LayoutBlobSink(OciLayout.create(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        os.rename(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TargetError(f"cannot create {path}: {exc.strerror}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def convert(
    source: str,
    target: str,
    config: Config,
    *,
    progress: Progress | None = None,
    prefetch_paths: Sequence[str] = (),
) -> ConvertResult:
    """Convert SOURCE (`oci:PATH[:TAG]`, `docker-archive:PATH`, `dir:PATH`) into an imagefs
    image tagged in the OCI layout TARGET (`oci:PATH[:TAG]`, tag default "latest").

    `progress(bytes_done, bytes_total_or_None)` is called as source bytes are consumed.
    `prefetch_paths` (absolute image paths of regular files, in order) become the image's
    prefetch list."""
    started = time.monotonic()
    source_ref = parse_source(source)
    target_ref = parse_target(target)
    with opened(source_ref) as src, _target_layout(target_ref) as sink:
        image = build_image(src, sink, config, progress=progress, prefetch_paths=prefetch_paths)
        sink.layout.set_tag(image.manifest_descriptor, target_ref.tag)
    stats = image.stats
    return ConvertResult(
        manifest_digest=image.manifest_descriptor.digest,
        target=str(target_ref),
        bytes_in=stats.bytes_in,
        chunks_total=stats.chunks_total,
        chunks_unique=stats.chunks_unique,
        bytes_stored=stats.bytes_stored,
        blobs=stats.blobs,
        seconds=time.monotonic() - started,
    )
