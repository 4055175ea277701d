"""Chunk work on a small thread pool: reading small files (directory sources), FastCDC
cutting of whole small files, blake3 hashing and zstd compression.

Batches of jobs go in; per-job chunk results come back in submission order, so everything
downstream is deterministic whatever the thread scheduling. Each distinct chunk is
compressed once: the first worker to hash it claims it (compressed bytes do not depend on
which worker made them). At most `max_pending` batches are in flight, bounding memory.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, NamedTuple, TypeVar

import blake3
import pyfastcdc

from builder.chunker import ChunkParams, cut_block, make_fastcdc
from builder.entries import show
from imagefs.errors import SourceError
from imagefs.format import ChunkCodec, Compression

T = TypeVar("T")


class Chunks(NamedTuple):
    """Chunks already cut (a block of a large file)."""

    views: list[memoryview]


class Whole(NamedTuple):
    """A whole file in memory, cut by the worker."""

    data: bytearray


class ReadWhole(NamedTuple):
    """A whole file on disk of `size` bytes, read and cut by the worker."""

    path: bytes
    size: int


Job = Chunks | Whole | ReadWhole
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Batch:
    """One worker batch; chunks it claims are ready once it is done."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


class Stored:
    """A chunk's stored form, filled in by the batch that claimed the chunk."""

    __slots__ = ("batch", "compression", "data")

    def __init__(self, batch: _Batch) -> None:
        self.batch = batch
        self.compression = Compression.RAW
        self.data: bytes | None = None

    def wait(self) -> tuple[Compression, bytes]:
        self.batch.done.wait()
        if self.batch.error is not None:
            raise self.batch.error
        assert self.data is not None, "stored bytes were already released"
        return self.compression, self.data


_RELEASED = Stored(_Batch())
_RELEASED.batch.done.set()


class Hashed(NamedTuple):
    digest: bytes  # blake3-256, raw
    size: int
    stored: Stored


def read_file(path: bytes, size: int) -> bytearray:
    """Exactly `size` bytes of the file at `path` (a SourceError if it changed)."""
    buf = bytearray(size)
    try:
        fd = os.open(path, _OPEN_FLAGS)
        try:
            view = memoryview(buf)
            got = 0
            while got < size:
                n = os.readv(fd, [view[got:]])
                if not n:
                    raise SourceError(f"file {show(path)} shrank while it was read")
                got += n
        finally:
            os.close(fd)
    except OSError as exc:
        raise SourceError(f"cannot read {show(path)}: {exc.strerror}") from None
    return buf


class ChunkPipeline(Generic[T]):
    """Run job batches on `threads` workers; results in submission order."""

    def __init__(
        self,
        *,
        threads: int,
        level: int,
        min_saving: float,
        params: ChunkParams,
        max_pending: int | None = None,
    ) -> None:
        self._threads = max(1, threads)
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="imagefs-chunk")
        self._local = threading.local()
        self._level = level
        self._min_saving = min_saving
        self._params = params
        self._claims: dict[bytes, Stored] = {}
        self._lock = threading.Lock()
        self._pending: deque[tuple[Future[list[list[Hashed]]], T]] = deque()
        self._max_pending = max_pending or 2 * self._threads + 1

    def _tools(self) -> tuple[ChunkCodec, pyfastcdc.FastCDC]:
        tools: tuple[ChunkCodec, pyfastcdc.FastCDC] | None = getattr(self._local, "tools", None)
        if tools is None:
            codec = ChunkCodec(self._level, self._min_saving)
            tools = self._local.tools = (codec, make_fastcdc(self._params))
        return tools

    def _cut(self, cdc: pyfastcdc.FastCDC, data: bytearray) -> list[memoryview]:
        view = memoryview(data)
        if len(data) <= self._params.min_size:
            return [view] if data else []
        lengths, _ = cut_block(cdc, data, self._params.max_size, final=True)
        out = []
        offset = 0
        for length in lengths:
            out.append(view[offset : offset + length])
            offset += length
        return out

    def _work(self, jobs: Sequence[Job]) -> list[list[Hashed]]:
        codec, cdc = self._tools()
        claims, lock = self._claims, self._lock
        batch = _Batch()
        results = []
        try:
            for job in jobs:
                if isinstance(job, Chunks):
                    views = job.views
                elif isinstance(job, Whole):
                    views = self._cut(cdc, job.data)
                else:
                    views = self._cut(cdc, read_file(job.path, job.size))
                out = []
                for view in views:
                    digest = blake3.blake3(view).digest()
                    stored = claims.get(digest)
                    if stored is None:
                        with lock:
                            stored = claims.get(digest)
                            mine = stored is None
                            if stored is None:
                                stored = claims[digest] = Stored(batch)
                        if mine:
                            stored.compression, stored.data = codec.encode(view)
                    out.append(Hashed(digest, len(view), stored))
                results.append(out)
        except BaseException as exc:
            batch.error = exc
            raise
        finally:
            batch.done.set()
        return results

    def submit(self, jobs: Sequence[Job], tag: T) -> Iterator[tuple[T, list[list[Hashed]]]]:
        """Queue a batch; yields the (tag, per-job results) of the oldest batches while too
        many are in flight. Consume the iterator fully."""
        self._pending.append((self._pool.submit(self._work, jobs), tag))
        while len(self._pending) > self._max_pending:
            future, old = self._pending.popleft()
            yield old, future.result()

    def drain(self) -> Iterator[tuple[T, list[list[Hashed]]]]:
        """(tag, per-job results) of every batch still in flight, in submission order."""
        while self._pending:
            future, tag = self._pending.popleft()
            yield tag, future.result()

    def release(self, digest: bytes) -> None:
        """Forget a chunk's stored bytes once they are written; the claim stays, as a shared
        placeholder, so later copies are not compressed again."""
        self._claims[digest] = _RELEASED

    def close(self) -> None:
        for future, _ in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
