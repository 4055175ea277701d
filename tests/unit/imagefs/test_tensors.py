"""safetensors and GGUF header parsing (imagefs.tensors): segment starts against what the
formats' own libraries say, refusals of malformed headers, and no exception on any input."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st

from imagefs.tensors import (
    GGUF_DEFAULT_ALIGNMENT,
    TensorLayout,
    gguf_layout,
    gguf_segments,
    model_format,
    safetensors_header_length,
    safetensors_layout,
    safetensors_segments,
    tensor_layout,
)
from tests.support.models import gguf_extents, gguf_file, model, safetensors_bytes

KIB = 1024
SIZES = [4 * KIB, 100 * KIB, 4 * KIB, 300 * KIB, 12]


def st_segments(data: bytes) -> list[int] | None:
    n = safetensors_header_length(data[:8], len(data))
    assert n is not None
    return safetensors_segments(data[8 : 8 + n], len(data))


def test_model_format_by_suffix() -> None:
    assert model_format(b"model-00001-of-00002.safetensors") == "safetensors"
    assert model_format(b"dir/Model.GGUF") == "gguf"
    assert model_format(b"model.safetensors.index.json") is None
    assert model_format(b"gguf") is None


def test_safetensors_segments_are_header_then_tensors() -> None:
    tensors = model(SIZES)
    data, extents = safetensors_bytes(tensors, {"format": "pt"})
    loaded = safetensors.numpy.load(data)
    for name, array in tensors:
        assert np.array_equal(loaded[name], array)
    n = int.from_bytes(data[:8], "little")
    assert st_segments(data) == [0, 8 + n, *[b for b, _ in extents[1:]]]
    assert extents[0][0] == 8 + n
    for (begin, end), (_, array) in zip(extents, tensors, strict=True):
        assert data[begin:end] == array.tobytes()
    layout = safetensors_layout(lambda k: data[:k], len(data))
    assert layout == TensorLayout("safetensors", 8 + n, (0, *[b for b, _ in extents]))
    assert layout.header_whole


def test_safetensors_written_by_the_library() -> None:
    tensors = dict(model(SIZES, seed=3))
    data = safetensors.numpy.save(tensors, metadata={"a": "b"})
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    begins = sorted(8 + n + header[k]["data_offsets"][0] for k in tensors)
    assert st_segments(data) == sorted({0, *begins})
    for name, array in tensors.items():
        begin, end = header[name]["data_offsets"]
        assert data[8 + n + begin : 8 + n + end] == array.tobytes()


def test_gaps_and_trailing_bytes_are_their_own_segments() -> None:
    tensors = model([4 * KIB, 8 * KIB])
    data, extents = safetensors_bytes(tensors, gap=100)
    n = int.from_bytes(data[:8], "little")
    (_, e0), (b1, e1) = extents
    assert st_segments(data) == [0, 8 + n, e0, b1, e1]
    assert e1 < len(data)
    # a tensor-less file: the header, then the rest
    empty, _ = safetensors_bytes([])
    assert st_segments(empty) == [0]
    assert st_segments(empty + b"tail") == [0, len(empty)]


def _header(doc: object) -> bytes:
    raw = json.dumps(doc).encode()
    return len(raw).to_bytes(8, "little") + raw


@pytest.mark.parametrize(
    "doc",
    [
        [1, 2],  # not an object
        {"t": {"data_offsets": [0, 10**6]}},  # beyond the file
        {"t": {"data_offsets": [8, 4]}},  # end before begin
        {"t": {"data_offsets": [0, 8]}, "u": {"data_offsets": [4, 12]}},  # overlap
        {"t": {"data_offsets": [0, 8.0]}},  # not integers
        {"t": {"data_offsets": [True, 8]}},
        {"t": {"data_offsets": [0]}},
        {"t": [0, 8]},
        {"t": {"dtype": "F32"}},  # no offsets
    ],
)
def test_malformed_safetensors_headers(doc: object) -> None:
    data = _header(doc) + bytes(64)
    assert st_segments(data) is None
    assert safetensors_layout(lambda k: data[:k], len(data)) is None


def test_safetensors_header_length_bounds() -> None:
    assert safetensors_header_length(b"\x10" + bytes(7), 100) == 16
    assert safetensors_header_length(b"\x10" + bytes(7), 23) is None  # header past the end
    assert safetensors_header_length(b"\xff" * 8, 1 << 62) is None
    assert safetensors_header_length(b"\x10", 100) is None
    assert safetensors_segments(b"not json", 100) is None
    assert safetensors_segments(b"{bad json", 100) is None
    assert safetensors_segments(b"[" * 100_000, 200_000) is None


@pytest.mark.parametrize("alignment", [0, 64, 4096])
def test_gguf_segments_match_gguf_reader(tmp_path: Path, alignment: int) -> None:
    tensors = model([4 * KIB, 100 * KIB, 12, 300 * KIB, 4 * KIB], seed=1)
    path = tmp_path / "m.gguf"
    data = gguf_file(path, tensors, vocab=5000, alignment=alignment)
    data_start, extents = gguf_extents(path)
    assert data_start % (alignment or GGUF_DEFAULT_ALIGNMENT) == 0
    assert data_start > 5000 * 8  # the vocabulary is in the header region
    assert gguf_segments(data, len(data)) == [0, *[b for _, b, _ in extents]]
    assert extents[0][1] == data_start
    for (_, begin, end), (_, array) in zip(extents, tensors, strict=True):
        assert data[begin:end] == array.tobytes()
    calls: list[int] = []

    def fetch(n: int) -> bytes:
        calls.append(n)
        return data[:n]

    layout = gguf_layout(fetch, len(data))
    assert layout is not None and layout.header_end == data_start and not layout.header_whole
    assert tensor_layout(b"x/m.gguf", fetch, len(data)) == layout
    assert max(calls) <= max(data_start, 1 << 20)


def test_gguf_header_larger_than_the_first_fetch(tmp_path: Path) -> None:
    path = tmp_path / "big.gguf"
    data = gguf_file(path, model([4 * KIB]), vocab=150_000)
    data_start, _ = gguf_extents(path)
    assert data_start > 2 << 20
    calls: list[int] = []

    def fetch(n: int) -> bytes:
        calls.append(n)
        return data[:n]

    layout = gguf_layout(fetch, len(data))
    assert layout is not None and layout.starts == (0, data_start)
    assert 1 < len(calls) <= 8, calls  # grows by estimates, not a chunk at a time
    assert max(calls) < data_start * 1.2, calls  # and little beyond the header
    # a prefix that ends inside the header: None, not an endless wait for more
    assert gguf_segments(data[: data_start // 2], len(data)) is None


def _gguf(*parts: bytes) -> bytes:
    return b"".join(parts)


def _str(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def test_gguf_hand_written() -> None:
    def info(offset: int) -> bytes:
        return _str(b"t") + struct.pack("<IQIQ", 1, 4, 0, offset)

    kv = _str(b"general.alignment") + struct.pack("<II", 4, 16)
    nested = _str(b"nested") + struct.pack("<IIQ", 9, 9, 2)
    nested += struct.pack("<IQ", 4, 1) + b"\x01\x00\x00\x00"  # [[1], ["ab"]]
    nested += struct.pack("<IQ", 8, 1) + _str(b"ab")
    head = _gguf(b"GGUF", struct.pack("<IQQ", 3, 1, 2), kv, nested, info(0))
    start = -(-len(head) // 16) * 16
    data = head + bytes(start - len(head)) + bytes(16)
    assert gguf_segments(data, len(data)) == [0, start]
    # version 1, a big-endian file, a bad alignment, an unknown value type: refused
    assert gguf_segments(data[:4] + struct.pack("<I", 1) + data[8:], len(data)) is None
    assert gguf_segments(data[:4] + struct.pack(">I", 3) + data[8:], len(data)) is None
    bad_align = data.replace(struct.pack("<II", 4, 16), struct.pack("<II", 4, 24))
    assert gguf_segments(bad_align, len(data)) is None
    bad_type = data.replace(struct.pack("<II", 4, 16), struct.pack("<II", 13, 16))
    assert gguf_segments(bad_type, len(data)) is None
    # a tensor offset past the end of the file
    far = _gguf(b"GGUF", struct.pack("<IQQ", 3, 1, 2), kv, nested, info(1 << 40)) + bytes(64)
    assert gguf_segments(far, len(far)) is None
    assert gguf_segments(far, 1 << 41) == [0, start, start + (1 << 40)]


def test_gguf_huge_counts_are_refused_quickly() -> None:
    data = b"GGUF" + struct.pack("<IQQ", 3, 1 << 62, 1 << 62) + bytes(64)
    assert gguf_segments(data, len(data)) is None
    arr = _str(b"k") + struct.pack("<IIQ", 9, 8, 1 << 60)
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + arr + bytes(64)
    assert gguf_segments(data, len(data)) is None
    arr = _str(b"k") + struct.pack("<IIQ", 9, 0, 1 << 40)  # 1 TiB of u8
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + arr + bytes(64)
    assert gguf_segments(data, 1 << 50) is None


SAMPLE_ST, _ = safetensors_bytes(model([64, 128, 12], seed=9), {"k": "v"})


@settings(max_examples=300)
@given(st.binary(max_size=300), st.integers(0, 1 << 40))
def test_parsers_never_raise_on_random_bytes(data: bytes, size: int) -> None:
    size = max(size, len(data)) if size % 2 else len(data)
    n = safetensors_header_length(data[:8], size)
    if n is not None:
        assert 8 + n <= size
    safetensors_segments(data, size)
    safetensors_segments(data[8:], size)
    gguf_segments(b"GGUF" + data, size)
    gguf_segments(data, size)
    tensor_layout(b"m.safetensors", lambda k: data[:k], size)
    tensor_layout(b"m.gguf", lambda k: (b"GGUF\x03\x00\x00\x00" + data)[:k], size)


@pytest.fixture(scope="module")
def gguf_sample(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("gguf") / "s.gguf"
    return gguf_file(path, model([64, 128, 12], seed=9), vocab=20)


@settings(max_examples=300)
@given(data=st.data())
def test_parsers_never_raise_on_damaged_headers(gguf_sample: bytes, data: st.DataObject) -> None:
    for sample in (SAMPLE_ST, gguf_sample):
        cut = data.draw(st.integers(0, len(sample)))
        flips = data.draw(st.lists(st.tuples(st.integers(0, len(sample) - 1), st.integers(0, 255))))
        damaged = bytearray(sample[:cut])
        for at, value in flips:
            if at < len(damaged):
                damaged[at] = value
        raw = bytes(damaged)
        size = data.draw(st.sampled_from([len(raw), len(sample), len(sample) * 3]))
        for name in (b"m.safetensors", b"m.gguf"):
            layout = tensor_layout(name, lambda k, raw=raw: raw[:k], size)
            if layout is not None:
                assert layout.starts[0] == 0
                assert list(layout.starts) == sorted(set(layout.starts))
                assert all(s < size for s in layout.starts)
                assert layout.header_end <= size
