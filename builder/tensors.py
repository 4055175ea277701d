"""Tensor-aware chunking of safetensors and GGUF files.

FastCDC restarts at every segment of the file's layout (see `imagefs.tensors`): the header
region, then each tensor's extent. A tensor's chunks therefore depend on its bytes alone,
not on where it sits, so a tensor unchanged in a fine-tune, or moved to another offset,
shard or file, dedups exactly. A safetensors header (JSON) is one chunk up to the format's
largest chunk size; a GGUF header region (which may hold a large vocabulary) is cut as
usual. A file whose header does not parse is cut as a plain file, with the same chunks
`cut_file` gives.

The header is read into memory first (at most `MAX_HEADER_BYTES` and a little); tensor data
is streamed block by block as `cut_file` does.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyfastcdc

from builder.chunker import Block, ChunkParams, Readable, cut_file, read_exactly
from imagefs.format import MAX_CHUNK_SIZE
from imagefs.tensors import MAX_HEADER_BYTES, TensorLayout, model_format, tensor_layout

__all__ = ["cut_model_file", "is_model_file", "segment_lengths"]


def is_model_file(name: bytes) -> bool:
    return model_format(name) is not None


class _Head:
    """A file's first bytes, read from `data` on demand, then replayed to the cutter."""

    def __init__(self, data: Readable, size: int, path: bytes) -> None:
        self.data = data
        self.size = size
        self.path = path
        self.buf = bytearray()
        self.pos = 0  # how much of `buf` has been replayed

    def fetch(self, n: int) -> bytes:
        n = min(n, self.size, MAX_HEADER_BYTES + (1 << 20))
        have = len(self.buf)
        if n > have:
            self.buf.extend(bytes(n - have))
            read_exactly(self.data, memoryview(self.buf)[have:], self.path)
        return bytes(memoryview(self.buf)[:n])

    def readinto(self, buffer: bytearray | memoryview) -> int | None:
        if self.pos < len(self.buf):
            n = min(len(buffer), len(self.buf) - self.pos)
            buffer[:n] = memoryview(self.buf)[self.pos : self.pos + n]
            self.pos += n
            if self.pos == len(self.buf):
                self.buf = bytearray()
                self.pos = 0
            return n
        return self.data.readinto(buffer)


def segment_lengths(layout: TensorLayout, size: int) -> list[int]:
    ends = [*layout.starts[1:], size]
    return [end - start for start, end in zip(layout.starts, ends, strict=True)]


def cut_model_file(
    cdc: pyfastcdc.FastCDC, params: ChunkParams, data: Readable, size: int, path: bytes
) -> Iterator[Block]:
    """Like `cut_file`, with FastCDC restarting at each segment of the file's tensor layout
    (when `path` names a safetensors or GGUF file whose header parses)."""
    head = _Head(data, size, path)
    layout = tensor_layout(path, head.fetch, size)
    if layout is None:
        yield from cut_file(cdc, params, head, size, path)
        return
    for i, length in enumerate(segment_lengths(layout, size)):
        if i == 0 and layout.header_whole and length <= MAX_CHUNK_SIZE:
            buf = bytearray(length)
            read_exactly(head, memoryview(buf), path)
            yield Block(buf, [length])
        else:
            yield from cut_file(cdc, params, head, length, path)
