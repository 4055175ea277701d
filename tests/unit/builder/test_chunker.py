"""FastCDC chunk planning: size bounds, per-file restart, block-wise cutting."""

from __future__ import annotations

import io
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.chunker import ChunkParams, cut_file, make_fastcdc, plan_chunks
from imagefs.config import Config
from imagefs.errors import ConfigError, SourceError

KIB = 1024
DEFAULT = ChunkParams.from_config(Config())
SMALL = ChunkParams(256, 1024, 4096)


def rand(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def cuts_streamed(data: bytes, params: ChunkParams) -> list[tuple[int, int]]:
    out = []
    offset = 0
    for block in cut_file(make_fastcdc(params), params, io.BytesIO(data), len(data), b"f"):
        for length in block.lengths:
            out.append((offset, length))
            offset += length
    return out


def test_bounds_respected() -> None:
    data = rand(1, 8 << 20)
    cuts = plan_chunks(data, DEFAULT)
    sizes = [length for _, length in cuts]
    assert sum(sizes) == len(data)
    assert all(16 * KIB <= s <= 256 * KIB for s in sizes[:-1])
    assert sizes[-1] <= 256 * KIB
    # The configured average is what FastCDC aims at (see make_fastcdc): within 25%.
    mean = len(data) / len(sizes)
    assert 48 * KIB <= mean <= 80 * KIB, mean


def test_small_and_empty_files() -> None:
    assert plan_chunks(b"", DEFAULT) == []
    assert cuts_streamed(b"", DEFAULT) == []
    assert plan_chunks(b"x" * 100, DEFAULT) == [(0, 100)]
    assert plan_chunks(b"x" * (16 * KIB), DEFAULT) == [(0, 16 * KIB)]
    assert cuts_streamed(b"y" * (16 * KIB), DEFAULT) == [(0, 16 * KIB)]


def test_streamed_equals_whole() -> None:
    # Larger than several blocks (block size 4 MiB), so carry-over between blocks is used.
    data = rand(2, 13 << 20)
    assert cuts_streamed(data, DEFAULT) == plan_chunks(data, DEFAULT)


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=0, max_size=40_000), st.integers(min_value=1, max_value=3))
def test_streamed_equals_whole_small_params(data: bytes, repeat: int) -> None:
    data = data * repeat
    small_block = ChunkParams(SMALL.min_size, SMALL.avg_size, SMALL.max_size)
    assert cuts_streamed(data, small_block) == plan_chunks(data, small_block)


def test_boundaries_restart_per_file_and_shift_resistance() -> None:
    body = rand(3, 2 << 20)
    a = plan_chunks(body, DEFAULT)
    b = plan_chunks(body, DEFAULT)
    assert a == b  # same content, same chunks
    # A prefix insert only disturbs the first chunks: most later chunk contents recur.
    shifted = rand(4, 1000) + body
    chunks_a = {body[o : o + n] for o, n in a}
    chunks_b = {shifted[o : o + n] for o, n in plan_chunks(shifted, DEFAULT)}
    assert len(chunks_a & chunks_b) >= len(chunks_a) - 2


def test_short_file_is_an_error() -> None:
    params = DEFAULT
    with pytest.raises(SourceError, match="shorter than its recorded size"):
        list(cut_file(make_fastcdc(params), params, io.BytesIO(b"abc"), 10, b"short"))


def test_fastcdc_limits() -> None:
    with pytest.raises(ConfigError):
        make_fastcdc(ChunkParams(64, 256, 512))
