"""Where converted blobs go: the `BlobSink` seam (an in-memory sink and an OCI-layout sink
that can roll back what it added), and the writer of one imagefs data blob (chunk frames,
then the chunk table and footer)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import queue
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from imagefs.digest import ChunkDigest, Digest
from imagefs.errors import TargetError
from imagefs.format import BlobChunk, Compression, encode_blob_tail
from imagefs.target import ImageTarget, LayoutTarget


class BlobWriter(Protocol):
    """A blob being streamed; it exists in the sink only after `commit`."""

    def write(self, data: bytes | memoryview) -> None: ...

    def commit(self) -> tuple[Digest, int]: ...

    def abort(self) -> None: ...


class BlobSink(Protocol):
    def begin(self) -> BlobWriter: ...

    def put(self, data: bytes) -> Digest: ...


# ---------------------------------------------------------------------------------------------
# In memory


class _MemoryWriter:
    def __init__(self, sink: MemoryBlobSink) -> None:
        self._sink = sink
        self._parts: list[bytes] = []

    def write(self, data: bytes | memoryview) -> None:
        self._parts.append(bytes(data))

    def commit(self) -> tuple[Digest, int]:
        data = b"".join(self._parts)
        return self._sink.put(data), len(data)

    def abort(self) -> None:
        self._parts.clear()


class MemoryBlobSink:
    """Blobs in a dict, keyed by digest (for unit tests)."""

    def __init__(self) -> None:
        self.blobs: dict[Digest, bytes] = {}

    def begin(self) -> BlobWriter:
        return _MemoryWriter(self)

    def put(self, data: bytes) -> Digest:
        digest = Digest.of(data)
        self.blobs.setdefault(digest, data)
        return digest


# ---------------------------------------------------------------------------------------------
# OCI image layout


class _LayoutWriter:
    """Writes and hashes on a background thread, so that a slow disk (page-cache writeback
    throttling) overlaps with chunking instead of stalling it; `commit` waits for it."""

    _END = b""

    def __init__(self, sink: LayoutBlobSink, file: BinaryIO, tmp: str) -> None:
        self._sink = sink
        self._file = file
        self._tmp = tmp
        self._hash = hashlib.sha256()
        self._size = 0
        self._queue: queue.Queue[bytes | memoryview] = queue.Queue(16)
        self._error: OSError | None = None
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while True:
            data = self._queue.get()
            if not data:
                return
            if self._error is None:
                try:
                    self._file.write(data)
                    self._hash.update(data)
                except OSError as exc:
                    self._error = exc

    def _check(self) -> None:
        if self._error is not None:
            raise TargetError(
                f"cannot write to {self._sink.layout.root}: {self._error.strerror}"
            ) from None

    def write(self, data: bytes | memoryview) -> None:
        self._check()
        if not data:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="imagefs-blob", daemon=True)
            self._thread.start()
        self._queue.put(data)
        self._size += len(data)

    def _join(self) -> None:
        if self._thread is not None:
            self._queue.put(self._END)
            self._thread.join()
            self._thread = None

    def commit(self) -> tuple[Digest, int]:
        self._join()
        self._check()
        digest = Digest("sha256", self._hash.hexdigest())
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._sink._install(self._tmp, digest)
        except OSError as exc:
            raise TargetError(f"cannot write blob {digest}: {exc.strerror}") from None
        finally:
            self.abort()
        return digest, self._size

    def abort(self) -> None:
        self._join()
        if not self._file.closed:
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


class LayoutBlobSink:
    """Blobs written atomically into an OCI layout through a `LayoutTarget` (temp file,
    fsync, rename), which remembers what was added so that a failure can roll it back."""

    def __init__(self, target: LayoutTarget) -> None:
        self.target = target
        self.layout = target.layout

    def begin(self) -> BlobWriter:
        file, tmp = self.target.temp_file()
        return _LayoutWriter(self, file, tmp)

    def put(self, data: bytes) -> Digest:
        return self.target.put_bytes(data)

    def _install(self, tmp: str, digest: Digest) -> None:
        self.target.install(tmp, digest)


# ---------------------------------------------------------------------------------------------
# Any other target (a registry): spool each blob to a temp file, then hand it over


class _SpoolWriter:
    def __init__(self, target: ImageTarget, spool_dir: Path | None) -> None:
        self._target = target
        self._file = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115 - closed in abort
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes | memoryview) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise TargetError(f"cannot spool a blob: {exc.strerror}") from None
        self._hash.update(data)
        self._size += len(data)

    def commit(self) -> tuple[Digest, int]:
        digest = Digest("sha256", self._hash.hexdigest())
        try:
            self._file.seek(0)
            self._target.put_blob_from(digest, self._size, cast(BinaryIO, self._file))
        finally:
            self.abort()
        return digest, self._size

    def abort(self) -> None:
        self._file.close()


class SpoolingBlobSink:
    """A `BlobSink` over any `ImageTarget`: data blobs are spooled to a temp file while
    they are written, then put into the target (which skips blobs it already holds)."""

    def __init__(self, target: ImageTarget, spool_dir: Path | None = None) -> None:
        self.target = target
        self.spool_dir = spool_dir

    def begin(self) -> BlobWriter:
        return _SpoolWriter(self.target, self.spool_dir)

    def put(self, data: bytes) -> Digest:
        digest = Digest.of(data)
        self.target.put_blob_from(digest, len(data), io.BytesIO(data))
        return digest


# ---------------------------------------------------------------------------------------------
# One imagefs data blob


class DataBlobWriter:
    """Chunk frames appended in order, then `encode_blob_tail` (table + footer). Frames are
    handed to the sink in pieces of about `WRITE_BYTES`."""

    WRITE_BYTES = 1 << 20

    def __init__(self, writer: BlobWriter) -> None:
        self._writer = writer
        self._offset = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.chunks: list[BlobChunk] = []

    def add(
        self, digest: ChunkDigest, size: int, compression: Compression, stored: bytes
    ) -> BlobChunk:
        chunk = BlobChunk(digest, self._offset, len(stored), size, compression)
        self._pending.append(stored)
        self._pending_bytes += len(stored)
        if self._pending_bytes >= self.WRITE_BYTES:
            self._write_pending()
        self._offset += len(stored)
        self.chunks.append(chunk)
        return chunk

    def _write_pending(self) -> None:
        pending = self._pending
        self._writer.write(pending[0] if len(pending) == 1 else b"".join(pending))
        self._pending, self._pending_bytes = [], 0

    def finish(self) -> tuple[Digest, int]:
        self._pending.append(encode_blob_tail(self.chunks, self._offset))
        self._write_pending()
        return self._writer.commit()

    def abort(self) -> None:
        self._writer.abort()
