"""The pure parts of the client: retry timing, Range headers, stream slicing."""

from __future__ import annotations

import email.utils

from registry.client import (
    MAX_RETRY_AFTER_S,
    byte_range,
    parse_retry_after,
    retry_delay,
    slice_chunks,
)


def test_parse_retry_after() -> None:
    assert parse_retry_after("5", 0.0) == 5.0
    assert parse_retry_after(None, 0.0) is None
    assert parse_retry_after("soon", 0.0) is None
    date = email.utils.formatdate(1_000_030.0, usegmt=True)
    assert parse_retry_after(date, 1_000_000.0) == 30.0
    assert parse_retry_after(date, 2_000_000.0) == 0.0


def test_retry_delay_backoff_with_full_jitter_and_cap() -> None:
    assert retry_delay(0, None, 0.5, 8.0, rand=lambda: 1.0) == 0.5
    assert retry_delay(3, None, 0.5, 8.0, rand=lambda: 1.0) == 4.0
    assert retry_delay(10, None, 0.5, 8.0, rand=lambda: 1.0) == 8.0
    assert retry_delay(3, None, 0.5, 8.0, rand=lambda: 0.25) == 1.0
    assert retry_delay(0, 7.0, 0.5, 8.0) == 7.0  # the server's Retry-After wins
    assert retry_delay(0, 3600.0, 0.5, 8.0) == MAX_RETRY_AFTER_S


def test_byte_range() -> None:
    assert byte_range(0, 1) == "bytes=0-0"
    assert byte_range(100, 50) == "bytes=100-149"


def test_slice_chunks() -> None:
    data = bytes(range(256)) * 40
    for size in (1, 7, 100, 4096, 20000):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        for offset, length in [(0, 10), (5, 1000), (len(data) - 3, 3), (99, 4097)]:
            got, consumed = slice_chunks(iter(chunks), offset, length)
            assert got == data[offset : offset + length]
            assert consumed >= offset + length and consumed - size < offset + length
    assert slice_chunks(iter([b"abc"]), 2, 5) == (b"c", 3)  # short stream: short result
