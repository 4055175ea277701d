"""The chunk dictionary: record round trips, first home wins, the LMDB index persists and
refuses malformed entries with a format error."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagefs.chunkdict import (
    ChainedChunkDictionary,
    KnownChunk,
    LmdbChunkDictionary,
    MemoryChunkDictionary,
    decode_known,
    encode_known,
)
from imagefs.digest import ChunkDigest, Digest
from imagefs.errors import FormatError
from imagefs.format import ChunkRef, Compression


def known(n: int, home: str = "oci:/x:v1") -> KnownChunk:
    ref = ChunkRef(
        ChunkDigest(bytes([n]) * 32),
        Digest.from_raw(bytes([n + 1]) * 32),
        n * 100,
        50 + n,
        70 + n,
        Compression.ZSTD if n % 2 else Compression.RAW,
    )
    return KnownChunk(ref, 10_000 + n, home)


@given(st.integers(0, 200), st.text(max_size=80))
def test_records_round_trip(n: int, home: str) -> None:
    chunk = known(n, home)
    assert decode_known(chunk.ref.digest, encode_known(chunk)) == chunk


def test_malformed_records_are_format_errors() -> None:
    with pytest.raises(FormatError):
        decode_known(ChunkDigest(bytes(32)), b"short")
    bad = bytearray(encode_known(known(1)))
    bad[8 * 4 + 32] = 9  # no such compression
    with pytest.raises(FormatError):
        decode_known(ChunkDigest(bytes(32)), bytes(bad))


def test_first_home_wins_and_chains_ask_in_order(tmp_path: Path) -> None:
    memory = MemoryChunkDictionary([known(1, "first"), known(1, "second"), known(2)])
    assert len(memory) == 2
    got = memory.get(known(1).ref.digest)
    assert got is not None and got.home == "first"
    with LmdbChunkDictionary(tmp_path / "idx") as index:
        assert index.add([known(3, "a"), known(1, "b")]) == 2
        assert index.add([known(3, "c")]) == 0  # already known: the first home stays
        chained = ChainedChunkDictionary(memory, index)
        one, three = chained.get(known(1).ref.digest), chained.get(known(3).ref.digest)
        assert one is not None and one.home == "first"
        assert three is not None and three.home == "a"
        assert chained.get(ChunkDigest(bytes([99]) * 32)) is None
    with LmdbChunkDictionary(tmp_path / "idx") as again:  # persisted
        assert again.get(known(3).ref.digest) == known(3, "a")
        assert again.stats()["chunks"] == 2
