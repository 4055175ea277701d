"""Where the tensors of a safetensors or GGUF file lie: pure header parsing, shared by the
builder (chunk boundaries on tensor boundaries) and the mount (prefetch of model headers).

A file's layout is a sorted list of segment starts, the first 0: each segment runs to the
next start (or the end of the file). Segment 0 is the header region; the others are tensor
extents (or the gaps between them). Parsers never raise on malformed input: they return
None and the file is treated as a plain file. Only errors of the `Fetch` callable the
caller passes propagate.

safetensors: u64 LE header length N, N bytes of JSON {name: {dtype, shape, data_offsets:
[begin, end]}, "__metadata__": {...}}, then the data; offsets count from byte 8 + N.

GGUF (v2/v3, little-endian): magic, u32 version, u64 tensor count, u64 key/value count,
the typed key/values, the tensor infos (name, u32 n_dims, u64 dims, u32 type, u64 offset
from the data section), then the data section at the next multiple of
`general.alignment` (default 32).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

SAFETENSORS_SUFFIX = b".safetensors"
GGUF_SUFFIX = b".gguf"
MAX_HEADER_BYTES = 64 << 20  # a header region larger than this is not parsed
MAX_TENSORS = 1 << 20
MAX_KV = 1 << 20
MAX_DIMS = 8
MAX_ARRAY_DEPTH = 4
GGUF_DEFAULT_ALIGNMENT = 32
_FIRST_FETCH = 64 << 10  # a GGUF file's first fetch, and the least it grows by

ModelFormat = Literal["safetensors", "gguf"]
Fetch = Callable[[int], bytes]
"""`fetch(n)`: the file's first min(n, size) bytes (it may return more)."""


@dataclass(frozen=True, slots=True)
class TensorLayout:
    format: ModelFormat
    header_end: int  # the header region is [0, header_end)
    starts: tuple[int, ...]  # segment starts, sorted, starts[0] == 0, all < size

    @property
    def header_whole(self) -> bool:
        """Whether the header region is meant to be one chunk (safetensors' JSON header;
        GGUF's metadata, which may hold a large vocabulary, is cut as usual)."""
        return self.format == "safetensors"


def model_format(name: bytes) -> ModelFormat | None:
    """The model file format a file name says (by suffix), or None."""
    lower = name.lower()
    if lower.endswith(SAFETENSORS_SUFFIX):
        return "safetensors"
    if lower.endswith(GGUF_SUFFIX):
        return "gguf"
    return None


def _starts(header_end: int, extents: list[tuple[int, int]], size: int) -> tuple[int, ...]:
    points = {0, header_end}
    for begin, end in extents:
        points.add(begin)
        points.add(end)
    return tuple(sorted(p for p in points if p < size))


# ---------------------------------------------------------------------------------------------
# safetensors


def safetensors_header_length(first8: bytes, size: int) -> int | None:
    """N, the JSON header's length, from a file's first 8 bytes; None unless the header fits
    in the file (of `size` bytes) and in MAX_HEADER_BYTES."""
    if len(first8) < 8:
        return None
    n = int.from_bytes(first8[:8], "little")
    if n < 2 or 8 + n > size or n > MAX_HEADER_BYTES:
        return None
    return n


def safetensors_segments(header_json: bytes, size: int) -> list[int] | None:
    """Segment starts of a safetensors file of `size` bytes whose header (the N bytes after
    the length) is `header_json`: 0 (the header region [0, 8 + N)), each tensor's start and
    the start of any gap or trailing bytes. None if the header is malformed: not a JSON
    object, offsets that are not integers, outside the file, or overlapping."""
    data_start = 8 + len(header_json)
    if header_json[:1] != b"{" or data_start > size:
        return None
    try:
        doc = json.loads(header_json)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    extents: list[tuple[int, int]] = []
    limit = size - data_start
    for name, info in doc.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            return None
        offsets = info.get("data_offsets")
        if not isinstance(offsets, list) or len(offsets) != 2:
            return None
        begin, end = offsets
        if type(begin) is not int or type(end) is not int or not 0 <= begin <= end <= limit:
            return None
        extents.append((data_start + begin, data_start + end))
    extents.sort()
    previous = data_start
    for begin, end in extents:
        if begin < previous:
            return None
        previous = end
    return list(_starts(data_start, extents, size))


def safetensors_layout(fetch: Fetch, size: int) -> TensorLayout | None:
    n = safetensors_header_length(fetch(8), size)
    if n is None:
        return None
    head = fetch(8 + n)
    if len(head) < 8 + n:
        return None
    starts = safetensors_segments(head[8 : 8 + n], size)
    if starts is None:
        return None
    return TensorLayout("safetensors", 8 + n, tuple(starts))


# ---------------------------------------------------------------------------------------------
# GGUF

_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STR, _ARRAY, _U64, _I64, _F64 = range(13)
_FIXED = {_U8: 1, _I8: 1, _U16: 2, _I16: 2, _U32: 4, _I32: 4, _F32: 4, _BOOL: 1}
_FIXED |= {_U64: 8, _I64: 8, _F64: 8}
_U32S = struct.Struct("<I")
_U64S = struct.Struct("<Q")


class _Bad(Exception):
    """Not a well-formed GGUF header (or one too large to parse)."""


class _Cursor:
    """A position in a file's first bytes, fetching more as the parser goes: the header is
    parsed once, however often it has to grow."""

    __slots__ = ("buf", "fetch", "limit", "pos")

    def __init__(self, fetch: Fetch, size: int) -> None:
        self.fetch = fetch
        self.limit = min(size, MAX_HEADER_BYTES)
        self.buf = fetch(min(self.limit, _FIRST_FETCH))
        self.pos = 0

    def grow(self, end: int, hint: int = 0) -> None:
        """Have at least `end` bytes (`hint`: how many the parser expects to need)."""
        if end > self.limit:
            raise _Bad
        have = len(self.buf)
        # at least an eighth more each time, so that a header takes few fetches
        want = min(self.limit, max(end, hint, have + max(have // 8, _FIRST_FETCH)))
        self.buf = self.fetch(want)
        if len(self.buf) < end:
            raise _Bad  # the file (or the prefix given) ends inside the header

    def take(self, n: int) -> int:
        """Advance over n bytes; the position they start at."""
        at = self.pos
        end = at + n
        if end > len(self.buf):
            self.grow(end)
        self.pos = end
        return at

    def u32(self) -> int:
        at = self.take(4)  # first: it may replace the buffer
        value: int = _U32S.unpack_from(self.buf, at)[0]
        return value

    def u64(self) -> int:
        at = self.take(8)
        value: int = _U64S.unpack_from(self.buf, at)[0]
        return value

    def string(self, limit: int) -> int:
        """Skip a string of at most `limit` bytes; where its bytes start."""
        n = self.u64()
        if n > limit:
            raise _Bad
        return self.take(n)

    def strings(self, count: int) -> None:
        """Skip `count` strings (an array's items), growing the buffer by an estimate of
        what the rest needs (the items' mean length so far)."""
        unpack = _U64S.unpack_from
        buf, pos, end = self.buf, self.pos, len(self.buf)
        first = pos
        for i in range(count):
            if pos + 8 > end:
                self.grow(pos + 8, pos + (count - i) * max(8, (pos - first) // max(i, 1)))
                buf, end = self.buf, len(self.buf)
            n = unpack(buf, pos)[0]
            if n > MAX_HEADER_BYTES:
                raise _Bad
            pos += 8 + n
            if pos > end:
                mean = max(8, (pos - first) // (i + 1))
                self.grow(pos, pos + (count - i - 1) * mean)
                buf, end = self.buf, len(self.buf)
        self.pos = pos

    def value(self, kind: int, depth: int = 0) -> None:
        fixed = _FIXED.get(kind)
        if fixed is not None:
            self.take(fixed)
        elif kind == _STR:
            self.string(MAX_HEADER_BYTES)
        elif kind == _ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise _Bad
            item = self.u32()
            count = self.u64()
            if count > MAX_HEADER_BYTES:
                raise _Bad
            width = _FIXED.get(item)
            if width is not None:
                self.take(width * count)
            elif item == _STR:
                self.strings(count)
            elif item == _ARRAY:
                for _ in range(count):
                    self.value(item, depth + 1)
            else:
                raise _Bad
        else:
            raise _Bad


def _gguf_parse(fetch: Fetch, size: int) -> tuple[int, list[int]]:
    """(data section start, tensor offsets into it) of a GGUF file of `size` bytes whose
    first bytes `fetch` gives. Raises _Bad when the header is malformed or too large."""
    cur = _Cursor(fetch, size)
    cur.take(4)
    if cur.buf[:4] != b"GGUF":
        raise _Bad
    version = cur.u32()
    if version not in (2, 3):
        raise _Bad
    tensors = cur.u64()
    kvs = cur.u64()
    if tensors > MAX_TENSORS or kvs > MAX_KV:
        raise _Bad
    alignment = GGUF_DEFAULT_ALIGNMENT
    for _ in range(kvs):
        key_at = cur.string(1 << 16)
        key = cur.buf[key_at : cur.pos]
        kind = cur.u32()
        if key == b"general.alignment":
            if kind != _U32:
                raise _Bad
            alignment = cur.u32()
            if alignment <= 0 or alignment & (alignment - 1):
                raise _Bad
        else:
            cur.value(kind)
    offsets: list[int] = []
    for _ in range(tensors):
        cur.string(1 << 16)
        dims = cur.u32()
        if dims > MAX_DIMS:
            raise _Bad
        cur.take(8 * dims)
        cur.u32()  # ggml type
        offsets.append(cur.u64())
    data_start = -(-cur.pos // alignment) * alignment
    if data_start > size or any(data_start + o > size for o in offsets):
        raise _Bad
    return data_start, offsets


def gguf_layout(fetch: Fetch, size: int) -> TensorLayout | None:
    """The layout of a GGUF file of `size` bytes: [0, data start) is the header region (the
    key/values and tensor infos, padded to the alignment), then each tensor from its offset
    to the next tensor's (its padding included). Reads the header through `fetch`, asking
    for more as it goes (about as much as it needs), up to MAX_HEADER_BYTES."""
    try:
        data_start, offsets = _gguf_parse(fetch, size)
    except (_Bad, struct.error, ValueError, OverflowError, MemoryError):
        return None
    extents = [(data_start + o, data_start + o) for o in offsets]
    return TensorLayout("gguf", data_start, _starts(data_start, extents, size))


def tensor_layout(name: bytes, fetch: Fetch, size: int) -> TensorLayout | None:
    """The layout of a model file named `name` (by its suffix), or None when it is not a
    safetensors or GGUF file or its header does not parse."""
    kind = model_format(name)
    if kind == "safetensors":
        return safetensors_layout(fetch, size)
    if kind == "gguf":
        return gguf_layout(fetch, size)
    return None


def gguf_segments(prefix: bytes, size: int) -> list[int] | None:
    """Segment starts of a GGUF file of `size` bytes from its first bytes `prefix`; None if
    malformed or if `prefix` ends before the header does."""
    layout = gguf_layout(lambda n: prefix, size)
    return None if layout is None else list(layout.starts)
