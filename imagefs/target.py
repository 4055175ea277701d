"""Where an image is written: the `ImageTarget` seam and its OCI-layout implementation.

A target receives blobs (each verified against its digest) and then, last, the manifest,
which is what makes the image visible; so a failed write never leaves a manifest pointing
at missing blobs. A registry target lives in `registry/`, plugged in at the edge.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from imagefs.digest import Digest
from imagefs.errors import ImagefsError, IntegrityError, SourceError, TargetError
from imagefs.oci import Descriptor, OciLayout

COPY_BYTES = 1 << 20


class ImageTarget(Protocol):
    def has_blob(self, digest: Digest) -> bool: ...

    def put_blob_from(self, digest: Digest, size: int, file: BinaryIO) -> None:
        """Store `size` bytes read from `file` as blob `digest` (verified; skipped when the
        target already holds it)."""
        ...

    def put_manifest(self, desc: Descriptor, data: bytes) -> None:
        """Store the manifest and point the target's tag at it (the last step)."""
        ...

    def describe(self) -> str: ...


def copy_exact(file: BinaryIO, out: BinaryIO, size: int, what: str) -> str:
    """Copy exactly `size` bytes; returns their sha256 hex. A short source is an error."""
    h = hashlib.sha256()
    left = size
    while left:
        try:
            piece = file.read(min(COPY_BYTES, left))
        except OSError as exc:
            raise SourceError(f"cannot read {what}: {exc.strerror or exc}") from None
        if not piece:
            raise SourceError(f"{what} ended {left} bytes early")
        out.write(piece)
        h.update(piece)
        left -= len(piece)
    return h.hexdigest()


class LayoutTarget:
    """An OCI layout being written. Blobs are installed atomically (temp file, fsync,
    rename); the ones this target added are remembered so `rollback` removes exactly
    those; the tag is set in index.json last."""

    def __init__(self, layout: OciLayout, tag: str) -> None:
        self.layout = layout
        self.tag = tag
        self.added: list[Digest] = []

    def describe(self) -> str:
        return f"oci:{self.layout.root}:{self.tag}"

    def has_blob(self, digest: Digest) -> bool:
        return self.layout.has_blob(digest)

    def install(self, tmp: str | Path, digest: Digest) -> None:
        """Move a finished temp file (in the blob directory) into place as `digest`."""
        path = self.layout.blob_path(digest)
        if path.exists():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            return
        os.replace(tmp, path)
        self.added.append(digest)

    def temp_file(self) -> tuple[BinaryIO, str]:
        blob_dir = self.layout.root / "blobs" / "sha256"
        try:
            blob_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=blob_dir)
        except OSError as exc:
            raise TargetError(f"cannot write to {self.layout.root}: {exc.strerror}") from None
        return os.fdopen(fd, "wb"), tmp

    def put_blob_from(self, digest: Digest, size: int, file: BinaryIO) -> None:
        if self.has_blob(digest):
            return
        out, tmp = self.temp_file()
        try:
            with out:
                got = copy_exact(file, out, size, f"blob {digest}")
                out.flush()
                os.fsync(out.fileno())
            if got != digest.hex:
                raise IntegrityError(f"blob {digest}: the source sent bytes that do not match")
            self.install(tmp, digest)
        except OSError as exc:
            raise TargetError(f"cannot write blob {digest}: {exc.strerror}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def put_bytes(self, data: bytes) -> Digest:
        digest = Digest.of(data)
        self.put_blob_from(digest, len(data), io.BytesIO(data))
        return digest

    def put_manifest(self, desc: Descriptor, data: bytes) -> None:
        if Digest.of(data) != desc.digest:
            raise IntegrityError(f"manifest bytes do not match {desc.digest}")
        self.put_bytes(data)
        self.layout.set_tag(desc, self.tag)

    def rollback(self) -> None:
        """Remove every blob this target added (best effort)."""
        for digest in reversed(self.added):
            with contextlib.suppress(OSError):
                self.layout.blob_path(digest).unlink()
        self.added.clear()


@contextlib.contextmanager
def layout_target(path: Path, tag: str) -> Iterator[LayoutTarget]:
    """Write into the OCI layout at `path`. A new layout is built in a sibling temp dir and
    renamed into place only when the block succeeds; in an existing layout, blobs added by a
    failed block are removed again and index.json is only touched by `put_manifest`."""
    fresh = not path.exists() or (path.is_dir() and not any(path.iterdir()))
    if not fresh:
        try:
            layout = OciLayout.open(path)
        except ImagefsError:
            raise TargetError(f"target {path} exists and is not an OCI image layout") from None
        target = LayoutTarget(layout, tag)
        try:
            yield target
        except BaseException:
            target.rollback()
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
        yield LayoutTarget(OciLayout.create(tmp), tag)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        os.rename(tmp, path)  # replaces an empty directory the user made
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TargetError(f"cannot create {path}: {exc.strerror}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
