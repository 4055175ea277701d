"""Blob tail (chunk table + footer) codec and ChunkCodec: round trips, versions, and
damaged input that must raise only FormatError (IntegrityError for chunk bytes)."""

from __future__ import annotations

import random
import struct

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from imagefs.digest import ChunkDigest
from imagefs.errors import FormatError, IntegrityError, UnsupportedVersionError
from imagefs.format import (
    BLOB_ENTRY_SIZE,
    BLOB_FOOTER_SIZE,
    BLOB_MAGIC,
    FORMAT_MAJOR,
    MAX_CHUNK_SIZE,
    BlobChunk,
    ChunkCodec,
    Compression,
    decode_blob_footer,
    decode_blob_table,
    encode_blob_tail,
)

PROPS = settings(max_examples=200, deadline=None)


@st.composite
def blob_tables(draw: st.DrawFn) -> tuple[list[BlobChunk], int]:
    """A chunk table whose entries lie in a data area of `table_offset` bytes."""
    chunks, at = [], 0
    for _ in range(draw(st.integers(0, 8))):
        at += draw(st.integers(0, 100))
        stored = draw(st.integers(0, 2**20))
        chunks.append(
            BlobChunk(
                ChunkDigest(draw(st.binary(min_size=32, max_size=32))),
                at,
                stored,
                draw(st.integers(0, MAX_CHUNK_SIZE)),
                draw(st.sampled_from(Compression)),
            )
        )
        at += stored
    return chunks, at + draw(st.integers(0, 100))


def decode_tail(tail: bytes, blob_size: int) -> list[BlobChunk]:
    footer = decode_blob_footer(tail[-BLOB_FOOTER_SIZE:], blob_size)
    start = footer.table_offset - (blob_size - len(tail))
    if start < 0:
        raise FormatError("test: table starts before the tail we hold")
    return decode_blob_table(tail[start : start + footer.table_size], footer)


@PROPS
@given(blob_tables())
def test_blob_tail_round_trips(table: tuple[list[BlobChunk], int]) -> None:
    chunks, table_offset = table
    tail = encode_blob_tail(chunks, table_offset)
    assert len(tail) == len(chunks) * BLOB_ENTRY_SIZE + BLOB_FOOTER_SIZE
    assert encode_blob_tail(chunks, table_offset) == tail
    blob_size = table_offset + len(tail)
    footer = decode_blob_footer(tail[-BLOB_FOOTER_SIZE:], blob_size)
    assert (footer.table_offset, footer.chunk_count) == (table_offset, len(chunks))
    assert decode_tail(tail, blob_size) == chunks


@PROPS
@given(blob_tables(), st.data())
def test_damaged_blob_tails_raise_only_format_errors(
    table: tuple[list[BlobChunk], int], data: st.DataObject
) -> None:
    chunks, table_offset = table
    tail = bytearray(encode_blob_tail(chunks, table_offset))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(tail) - 1))
        tail[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, 40))
    damaged = bytes(tail[cut:])
    size = table_offset + len(tail) + data.draw(st.sampled_from([0, 0, -cut, 1, -1]))
    try:
        decoded = decode_tail(damaged, size)
    except FormatError:
        return
    for c in decoded:  # whatever decodes is within the limits the reader promises
        assert c.offset + c.stored_size <= size - BLOB_ENTRY_SIZE * len(decoded) - BLOB_FOOTER_SIZE
        assert c.size <= MAX_CHUNK_SIZE


@PROPS
@given(st.binary(min_size=BLOB_FOOTER_SIZE, max_size=BLOB_FOOTER_SIZE), st.integers(0, 2**64))
def test_garbage_footers_raise_only_format_errors(footer: bytes, size: int) -> None:
    if not footer.startswith(BLOB_MAGIC):
        with pytest.raises(FormatError, match="magic"):
            decode_blob_footer(footer, size)
    with pytest.raises(FormatError):
        decode_blob_footer(footer[:-1], size)
    try:
        decoded = decode_blob_footer(BLOB_MAGIC + footer[8:], size)
    except FormatError:
        return
    assert decoded.table_offset + decoded.table_size + BLOB_FOOTER_SIZE == size


@pytest.mark.parametrize("major", [0, FORMAT_MAJOR + 1, 0xFFFF])
def test_unknown_major_blob_is_a_clear_error(major: int) -> None:
    tail = bytearray(encode_blob_tail([], 0))
    struct.pack_into("<H", tail, 8, major)
    with pytest.raises(UnsupportedVersionError, match=f"blob format {major}.x"):
        decode_blob_footer(bytes(tail), len(tail))


def test_newer_minor_and_flags_are_accepted() -> None:
    tail = bytearray(encode_blob_tail([], 10))
    struct.pack_into("<HI", tail, 10, 9, 0xFFFF)
    assert decode_blob_footer(bytes(tail), 10 + len(tail)).table_offset == 10


def test_blob_footer_errors() -> None:
    tail = encode_blob_tail([], 0)
    with pytest.raises(FormatError, match="too short"):
        decode_blob_footer(tail[1:], len(tail))
    with pytest.raises(FormatError, match="magic"):
        decode_blob_footer(b"X" + tail[1:], len(tail))
    with pytest.raises(FormatError, match="does not fit"):
        decode_blob_footer(tail, len(tail) + 1)


def test_blob_table_errors() -> None:
    c = BlobChunk(ChunkDigest.of(b"x"), 0, 10, 1, Compression.RAW)
    tail = bytearray(encode_blob_tail([c], 10))
    struct.pack_into("<Q", tail, BLOB_ENTRY_SIZE + 16, 9)  # the chunk ends after the data
    footer = decode_blob_footer(bytes(tail[-BLOB_FOOTER_SIZE:]), 9 + len(tail))
    with pytest.raises(FormatError, match="outside"):
        decode_blob_table(bytes(tail[:BLOB_ENTRY_SIZE]), footer)
    with pytest.raises(FormatError, match="wrong size"):
        decode_blob_table(tail[: BLOB_ENTRY_SIZE - 1], footer)
    big = bytearray(encode_blob_tail([c], 10))
    struct.pack_into("<I", big, 44, MAX_CHUNK_SIZE + 1)
    footer = decode_blob_footer(bytes(big[-BLOB_FOOTER_SIZE:]), 10 + len(big))
    with pytest.raises(FormatError, match="outside"):
        decode_blob_table(bytes(big[:BLOB_ENTRY_SIZE]), footer)
    weird = bytearray(encode_blob_tail([c], 10))
    struct.pack_into("<I", weird, 48, 7)  # compression 7
    footer = decode_blob_footer(bytes(weird[-BLOB_FOOTER_SIZE:]), 10 + len(weird))
    with pytest.raises(FormatError, match="compression 7"):
        decode_blob_table(bytes(weird[:BLOB_ENTRY_SIZE]), footer)


def test_encode_blob_tail_rejects_what_readers_would_reject() -> None:
    c = BlobChunk(ChunkDigest.of(b"x"), 0, 2**32, 1, Compression.RAW)
    with pytest.raises(FormatError, match="out of range"):
        encode_blob_tail([c], 2**32)
    with pytest.raises(FormatError, match="outside the chunk data"):
        encode_blob_tail([c], 2**32 - 1)
    big = BlobChunk(ChunkDigest.of(b"x"), 0, 10, MAX_CHUNK_SIZE + 1, Compression.ZSTD)
    with pytest.raises(FormatError, match="too large"):
        encode_blob_tail([big], 10)


# --------------------------------------------------------------------------- ChunkCodec

TEXT = b"a line of text that repeats, as config files and scripts do\n" * 200
NOISE = random.Random(7).randbytes(4096)


def chunk_of(data: bytes, compression: Compression, stored: bytes) -> BlobChunk:
    return BlobChunk(ChunkDigest.of(data), 0, len(stored), len(data), compression)


def test_incompressible_chunks_are_stored_raw() -> None:
    compression, stored = ChunkCodec().encode(NOISE)
    assert compression is Compression.RAW
    assert stored == NOISE
    assert ChunkCodec().decode(stored, chunk_of(NOISE, compression, stored)) == NOISE


def test_compressible_chunks_are_zstd_frames_with_their_size() -> None:
    compression, stored = ChunkCodec().encode(TEXT)
    assert compression is Compression.ZSTD
    assert len(stored) < len(TEXT) * 0.95
    assert zstandard.get_frame_parameters(stored).content_size == len(TEXT)
    assert ChunkCodec().decode(memoryview(stored), chunk_of(TEXT, compression, stored)) == TEXT


def test_compression_must_save_the_minimum() -> None:
    half = NOISE[:2048] + bytes(2048)  # zstd saves about half
    assert ChunkCodec().encode(half)[0] is Compression.ZSTD
    assert ChunkCodec(min_saving=0.6).encode(half) == (Compression.RAW, half)
    assert ChunkCodec().encode(b"") == (Compression.RAW, b"")


@pytest.mark.parametrize("data", [TEXT, NOISE])
def test_a_flipped_byte_is_an_integrity_error(data: bytes) -> None:
    compression, stored = ChunkCodec().encode(data)
    ref = chunk_of(data, compression, stored)
    for at in (0, 5, len(stored) // 2, len(stored) - 1):
        bad = bytearray(stored)
        bad[at] ^= 0x01
        with pytest.raises(IntegrityError):
            ChunkCodec().decode(bytes(bad), ref)


def test_wrong_stored_length_or_digest_is_an_integrity_error() -> None:
    compression, stored = ChunkCodec().encode(TEXT)
    ref = chunk_of(TEXT, compression, stored)
    with pytest.raises(IntegrityError, match="stored bytes"):
        ChunkCodec().decode(stored + b"\0", ref)
    other = BlobChunk(ChunkDigest.of(b"other"), 0, len(stored), len(TEXT), compression)
    with pytest.raises(IntegrityError, match="does not match its digest"):
        ChunkCodec().decode(stored, other)


def frame_claiming(size: int, payload: bytes = b"hello") -> bytes:
    """A zstd frame (single segment, 8-byte content size) with one raw block."""
    header = struct.pack("<I", 0xFD2FB528) + bytes([0xE0]) + struct.pack("<Q", size)
    return header + (1 | (len(payload) << 3)).to_bytes(3, "little") + payload


@pytest.mark.parametrize("claimed", [2**40, 2**62, 2**31, 6])
def test_a_frame_claiming_a_huge_size_is_an_integrity_error(claimed: int) -> None:
    stored = frame_claiming(claimed)
    ref = BlobChunk(ChunkDigest.of(b"hello"), 0, len(stored), 5, Compression.ZSTD)
    with pytest.raises(IntegrityError, match="claims"):
        ChunkCodec().decode(stored, ref)


def test_a_frame_without_content_size_is_an_integrity_error() -> None:
    stored = zstandard.ZstdCompressor(write_content_size=False).compress(TEXT)
    with pytest.raises(IntegrityError):
        ChunkCodec().decode(stored, chunk_of(TEXT, Compression.ZSTD, stored))


@PROPS
@given(st.binary(max_size=64), st.integers(0, MAX_CHUNK_SIZE), st.booleans())
def test_random_stored_bytes_raise_only_integrity_errors(
    junk: bytes, size: int, magic: bool
) -> None:
    stored = (struct.pack("<I", 0xFD2FB528) + junk) if magic else junk
    ref = BlobChunk(ChunkDigest.of(b"x" * 3), 0, len(stored), size, Compression.ZSTD)
    with pytest.raises(IntegrityError):
        ChunkCodec().decode(stored, ref)
