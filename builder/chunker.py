"""Chunk planning: FastCDC cut points per file, streamed in blocks without holding a file.

Boundaries restart at each file; a file of at most `min_chunk_bytes` is one chunk, an empty
file has none. Cutting a file block by block gives exactly the cuts of cutting it whole.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import pyfastcdc

from builder.entries import show
from imagefs.config import Config
from imagefs.errors import ConfigError, SourceError

# FastCDC's minimum max_size (pyfastcdc rejects smaller).
_FASTCDC_MIN_MAX = 1024


@dataclass(frozen=True, slots=True)
class ChunkParams:
    min_size: int
    avg_size: int
    max_size: int

    @classmethod
    def from_config(cls, config: Config) -> ChunkParams:
        return cls(config.min_chunk_bytes, config.avg_chunk_bytes, config.max_chunk_bytes)

    @property
    def block_size(self) -> int:
        """Bytes read from a file at a time: several max-size chunks, at least 4 MiB."""
        return max(4 << 20, 4 * self.max_size)


def make_fastcdc(params: ChunkParams) -> pyfastcdc.FastCDC:
    """A FastCDC whose cuts average about `params.avg_size`.

    pyfastcdc's `avg_size` is the distance the cut-point search covers *after* skipping the
    first `min_size` bytes (paper §3.4), so its chunks average about avg_size + min_size.
    We therefore pass avg_size - min_size (never below min_size, FastCDC's own floor), so the
    configured average is what FastCDC aims at: with the 16/64/256 KiB default it uses the
    64 KiB mask with a 48 KiB normalization point and random data averages ~68 KiB per
    chunk, where passing 64 KiB gives ~78 KiB.
    """
    if params.max_size < _FASTCDC_MIN_MAX:
        raise ConfigError(f"max_chunk_bytes must be at least {_FASTCDC_MIN_MAX} for FastCDC")
    target = max(params.min_size, params.avg_size - params.min_size, 256)
    return pyfastcdc.FastCDC(
        target, min_size=params.min_size, max_size=params.max_size, normalized_chunking=1
    )


def cut_block(
    cdc: pyfastcdc.FastCDC, buf: bytes | bytearray | memoryview, max_size: int, *, final: bool
) -> tuple[list[int], int]:
    """Cut `buf` (a file's bytes from a chunk boundary on). Returns (chunk lengths, bytes
    consumed). Unless `final`, the tail where fewer than `max_size` bytes remain after a
    chunk's start is left for the next block, since more data could move that cut."""
    lengths: list[int] = []
    end = len(buf)
    for chunk in cdc.cut_buf(buf):
        if not final and end - chunk.offset < max_size:
            return lengths, chunk.offset
        lengths.append(chunk.length)
    return lengths, end


def plan_chunks(data: bytes, params: ChunkParams) -> list[tuple[int, int]]:
    """(offset, length) of every chunk of a whole file held in memory (for tests and tools)."""
    lengths, _ = cut_block(make_fastcdc(params), data, params.max_size, final=True)
    out = []
    offset = 0
    for length in lengths:
        out.append((offset, length))
        offset += length
    return out


class Readable(Protocol):
    def readinto(self, buffer: bytearray | memoryview, /) -> int | None: ...


class FileReader:
    """A file on disk as a `Readable` that counts the bytes it reads."""

    def __init__(self, path: bytes, counter: _Counter | None = None) -> None:
        self._path = path
        self._counter = counter
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise SourceError(f"cannot read {show(path)}: {exc.strerror}") from None

    def readinto(self, buffer: bytearray | memoryview) -> int:
        try:
            n = os.readv(self._fd, [buffer])
        except OSError as exc:
            raise SourceError(f"cannot read {show(self._path)}: {exc.strerror}") from None
        if self._counter is not None:
            self._counter.value += n
        return n

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Counter(Protocol):
    value: int


def read_exactly(data: Readable, view: memoryview, what: bytes) -> None:
    """Fill `view` from `data`; a short read means the source changed or is truncated."""
    got = 0
    want = len(view)
    while got < want:
        n = data.readinto(view[got:])
        if not n:
            raise SourceError(f"file {show(what)} is shorter than its recorded size")
        got += n


@dataclass(frozen=True, slots=True)
class Block:
    """A piece of a file read into memory and the chunks cut from it (all complete)."""

    buf: bytearray
    lengths: list[int]


def cut_file(
    cdc: pyfastcdc.FastCDC, params: ChunkParams, data: Readable, size: int, path: bytes
) -> Iterator[Block]:
    """Read a file of `size` bytes block by block and cut it; memory stays O(block size).

    The chunks of a yielded block may be used after the next block is read."""
    remaining = size
    carry: memoryview = memoryview(b"")
    block = params.block_size
    min_size, max_size = params.min_size, params.max_size
    while remaining:
        want = min(block - len(carry), remaining)
        buf = bytearray(len(carry) + want)
        view = memoryview(buf)
        view[: len(carry)] = carry
        read_exactly(data, view[len(carry) :], path)
        remaining -= want
        final = not remaining
        if final and len(buf) <= min_size:
            yield Block(buf, [len(buf)])
            return
        lengths, consumed = cut_block(cdc, buf, max_size, final=final)
        carry = view[consumed:]
        yield Block(buf, lengths)
