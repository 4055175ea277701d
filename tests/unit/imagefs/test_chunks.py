"""Chunk sources and caches: range coalescing, verified fetching with one refetch, the
cache in front of it, the in-memory LRU and the LMDB node cache."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagefs.chunks import (
    CachedChunkSource,
    FetchingChunkSource,
    FileBlobReader,
    LmdbChunkCache,
    MemoryBlobReader,
    MemoryChunkCache,
    ReadStats,
    TieredChunkCache,
    build_chunk_source,
    iter_blob_chunks,
    plan_ranges,
)
from imagefs.digest import ChunkDigest, Digest
from imagefs.errors import FormatError, IntegrityError, NotFoundError
from imagefs.format import ChunkRef, Compression
from tests.unit.imagefs.trees import PackedBlobs, pack_blobs

# --------------------------------------------------------------------------- plan_ranges


@st.composite
def chunk_layouts(draw: st.DrawFn) -> tuple[list[ChunkRef], int, int]:
    """Non-overlapping chunks in 1-3 blobs, a random selection of them (with repeats),
    and coalescing limits."""
    every: list[ChunkRef] = []
    for b in range(draw(st.integers(1, 3))):
        blob = Digest.from_raw(bytes([b]) * 32)
        at = draw(st.integers(0, 100))
        for _ in range(draw(st.integers(0, 12))):
            stored = draw(st.integers(1, 5000))
            digest = ChunkDigest(len(every).to_bytes(32, "little"))
            every.append(ChunkRef(digest, blob, at, stored, stored, Compression.RAW))
            at += stored + draw(st.sampled_from([0, 0, 1, 100, 3000, 70_000]))
    refs = draw(st.lists(st.sampled_from(every), max_size=30)) if every else []
    return refs, draw(st.integers(1, 20_000)), draw(st.integers(0, 4000))


@settings(max_examples=200, deadline=None)
@given(chunk_layouts())
def test_plan_ranges_properties(layout: tuple[list[ChunkRef], int, int]) -> None:
    refs, max_bytes, max_gap = layout
    plans = plan_ranges(refs, max_bytes, max_gap)
    # Every distinct ref is read by exactly one plan, and plans read nothing else.
    planned = [r for p in plans for r in p.refs]
    assert sorted(planned, key=lambda r: r.digest) == sorted(set(refs), key=lambda r: r.digest)
    for p in plans:
        assert all(r.blob == p.blob for r in p.refs)
        assert p.offset == p.refs[0].offset
        assert p.offset + p.length == max(r.offset + r.stored_size for r in p.refs)
        assert p.length <= max_bytes or len(p.refs) == 1
        end = p.refs[0].offset + p.refs[0].stored_size
        for r in p.refs[1:]:
            assert 0 <= r.offset - end <= max_gap  # in order, no overlap, small gaps
            end = r.offset + r.stored_size
    for a, b in itertools.pairwise(plans):
        assert (a.blob, a.offset) < (b.blob, b.offset)
        if a.blob == b.blob:
            assert a.offset + a.length <= b.offset


def _refs_in_a_row(count: int, size: int, gap: int = 0) -> list[ChunkRef]:
    blob = Digest.of(b"blob")
    return [
        ChunkRef(ChunkDigest.of(bytes([i])), blob, i * (size + gap), size, size, Compression.RAW)
        for i in range(count)
    ]


def test_plan_ranges_coalesces_neighbours_up_to_the_limits() -> None:
    refs = _refs_in_a_row(10, 100)
    assert [len(p.refs) for p in plan_ranges(refs, 4 << 20, 0)] == [10]
    assert [p.length for p in plan_ranges(refs, 250, 0)] == [200] * 5
    gapped = _refs_in_a_row(4, 100, gap=10)
    assert len(plan_ranges(gapped, 4 << 20, 9)) == 4
    assert [p.length for p in plan_ranges(gapped, 4 << 20, 10)] == [430]
    assert plan_ranges(refs[:1], 10, 0)[0].length == 100  # a big chunk is still read whole
    assert plan_ranges([], 10, 0) == []


# --------------------------------------------------------------------------- fetching

PAYLOADS = [
    b"compressible text chunk %d\n" % i * 40 if i % 2 else random.Random(i).randbytes(700)
    for i in range(10)
]


@pytest.fixture
def packed() -> PackedBlobs:
    return pack_blobs([PAYLOADS[:6], PAYLOADS[6:]])


def test_fetch_coalesces_each_blob_into_one_read_and_verifies(packed: PackedBlobs) -> None:
    reader = MemoryBlobReader(packed.blobs)
    stats = ReadStats()
    source = FetchingChunkSource(reader, stats)
    assert source.get_chunks(packed.refs) == PAYLOADS
    assert len(reader.reads) == 2
    assert {r.compression for r in packed.refs} == {Compression.RAW, Compression.ZSTD}
    assert stats.requests == 2 and stats.chunks_fetched == 10
    assert stats.bytes_fetched == sum(r.stored_size for r in packed.refs)


def test_fetch_returns_refs_in_order_with_repeats(packed: PackedBlobs) -> None:
    source = FetchingChunkSource(MemoryBlobReader(packed.blobs), ReadStats())
    r = packed.refs
    assert source.get_chunks([r[7], r[1], r[7], r[0]]) == [
        PAYLOADS[7],
        PAYLOADS[1],
        PAYLOADS[7],
        PAYLOADS[0],
    ]


def test_fetch_splits_reads_at_the_size_and_gap_limits() -> None:
    packed = pack_blobs([PAYLOADS], gap=1000)
    reader = MemoryBlobReader(packed.blobs)
    source = FetchingChunkSource(reader, ReadStats(), coalesce_gap_bytes=999)
    assert source.get_chunks(packed.refs) == PAYLOADS
    assert len(reader.reads) == 10
    reader = MemoryBlobReader(packed.blobs)
    source = FetchingChunkSource(reader, ReadStats(), coalesce_max_bytes=3000)
    assert source.get_chunks(packed.refs) == PAYLOADS
    assert len(reader.reads) == len(plan_ranges(packed.refs, 3000, 64 << 10)) > 2


class CorruptingReader:
    """Flips one byte of `target`'s stored bytes in the first `times` reads covering it."""

    def __init__(self, inner: MemoryBlobReader, target: ChunkRef, times: int) -> None:
        self.inner = inner
        self.target = target
        self.times = times
        self.reads: list[tuple[Digest, int, int]] = []

    def read_range(self, blob: Digest, offset: int, length: int) -> bytes:
        self.reads.append((blob, offset, length))
        data = bytearray(self.inner.read_range(blob, offset, length))
        t = self.target
        if self.times and blob == t.blob and offset <= t.offset < offset + length:
            self.times -= 1
            data[t.offset - offset + t.stored_size // 2] ^= 0x40
        return bytes(data)


def test_a_corrupt_first_read_is_refetched_once(packed: PackedBlobs) -> None:
    target = packed.refs[3]
    reader = CorruptingReader(MemoryBlobReader(packed.blobs), target, times=1)
    stats = ReadStats()
    got = FetchingChunkSource(reader, stats).get_chunks(packed.refs[:6])
    assert got == PAYLOADS[:6]
    assert stats.integrity_errors == 1
    assert reader.reads[1:] == [(target.blob, target.offset, target.stored_size)]


def test_a_chunk_corrupt_on_every_read_is_an_integrity_error(packed: PackedBlobs) -> None:
    target = packed.refs[4]
    reader = CorruptingReader(MemoryBlobReader(packed.blobs), target, times=100)
    stats = ReadStats()
    with pytest.raises(IntegrityError, match=str(target.digest)):
        FetchingChunkSource(reader, stats).get_chunks(packed.refs[:6])
    assert len(reader.reads) == 2
    assert stats.integrity_errors == 1


def test_a_short_read_is_an_integrity_error(packed: PackedBlobs) -> None:
    blob = packed.refs[0].blob
    short = dict(packed.blobs)
    short[blob] = packed.blobs[blob][: packed.refs[2].offset]
    with pytest.raises(IntegrityError, match="short read"):
        FetchingChunkSource(MemoryBlobReader(short), ReadStats()).get_chunks(packed.refs[:6])


def test_a_missing_blob_is_not_found(packed: PackedBlobs) -> None:
    with pytest.raises(NotFoundError):
        FetchingChunkSource(MemoryBlobReader({}), ReadStats()).get_chunks(packed.refs[:1])


# --------------------------------------------------------------------------- cached source


class CountingSource:
    def __init__(self, inner: FetchingChunkSource) -> None:
        self.inner = inner
        self.calls: list[list[ChunkDigest]] = []

    def get_chunks(self, refs: Sequence[ChunkRef]) -> list[bytes]:
        self.calls.append([r.digest for r in refs])
        return self.inner.get_chunks(refs)


def test_cached_source_counts_hits_and_fetches_only_misses(packed: PackedBlobs) -> None:
    stats = ReadStats()
    inner = CountingSource(FetchingChunkSource(MemoryBlobReader(packed.blobs), stats))
    cache = MemoryChunkCache(1 << 20)
    source = CachedChunkSource(inner, cache, stats)
    r = packed.refs
    assert source.get_chunks(r[:3]) == PAYLOADS[:3]
    assert stats.cache_hits == 0 and len(cache) == 3
    assert source.get_chunks([r[0], r[0], r[5], r[1]]) == [
        PAYLOADS[0],
        PAYLOADS[0],
        PAYLOADS[5],
        PAYLOADS[1],
    ]
    assert stats.cache_hits == 3  # r0 twice and r1
    assert inner.calls == [[c.digest for c in r[:3]], [r[5].digest]]
    assert source.get_chunks(r[:6]) == PAYLOADS[:6]
    assert stats.cache_hits == 3 + 4
    assert len(inner.calls) == 3


def test_build_chunk_source_serves_repeats_from_memory(packed: PackedBlobs) -> None:
    reader = MemoryBlobReader(packed.blobs)
    stats = ReadStats()
    node_cache = MemoryChunkCache(1 << 20)
    source = build_chunk_source(reader, stats, cache=node_cache)
    assert source.get_chunks(packed.refs) == PAYLOADS
    assert source.get_chunks(packed.refs) == PAYLOADS
    assert len(reader.reads) == 2
    assert stats.cache_hits == 10
    assert len(node_cache) == 10
    snap = stats.snapshot()
    assert snap["requests"] == 2 and snap["chunks_fetched"] == 10
    assert sum(snap["bytes_fetched_by_blob"].values()) == snap["bytes_fetched"]


# --------------------------------------------------------------------------- memory cache


def d(n: int) -> ChunkDigest:
    return ChunkDigest(bytes([n]) * 32)


def test_memory_cache_evicts_least_recently_used_by_bytes() -> None:
    cache = MemoryChunkCache(100)
    cache.put(d(1), b"a" * 40)
    cache.put(d(2), b"b" * 40)
    assert cache.get(d(1)) == b"a" * 40  # d1 is now the most recent
    cache.put(d(3), b"c" * 40)
    assert cache.get(d(2)) is None
    assert cache.get(d(1)) == b"a" * 40 and cache.get(d(3)) == b"c" * 40
    assert cache.size == 80 and len(cache) == 2
    cache.put(d(3), b"c" * 10)  # replacing an entry accounts for its old size
    assert cache.size == 50
    cache.put(d(4), b"x" * 101)  # larger than the whole cache: declined
    assert cache.get(d(4)) is None and cache.size == 50
    cache.put(d(5), b"e" * 100)  # evicts everything else
    assert len(cache) == 1 and cache.size == 100


def test_tiered_cache_promotes_hits_from_the_second_tier() -> None:
    first, second = MemoryChunkCache(100), MemoryChunkCache(1000)
    tiered = TieredChunkCache(first, second)
    second.put(d(1), b"one")
    assert first.get(d(1)) is None
    assert tiered.get(d(1)) == b"one"
    assert first.get(d(1)) == b"one"
    tiered.put(d(2), b"two")
    assert first.get(d(2)) == second.get(d(2)) == b"two"
    assert tiered.get(d(3)) is None


# --------------------------------------------------------------------------- LMDB cache


@pytest.fixture
def lmdb_cache(tmp_path: Path) -> Iterator[LmdbChunkCache]:
    cache = LmdbChunkCache(tmp_path / "cache", 4 << 20)
    yield cache
    cache.close()


def test_lmdb_cache_round_trip(lmdb_cache: LmdbChunkCache) -> None:
    data = b"chunk bytes" * 100
    digest = ChunkDigest.of(data)
    assert lmdb_cache.get(digest) is None
    lmdb_cache.put(digest, data)
    lmdb_cache.put(digest, data)  # a second put is harmless
    assert lmdb_cache.get(digest) == data
    assert lmdb_cache.stats()["entries"] == 1


def test_lmdb_cache_drops_a_corrupted_entry(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    good = b"the real chunk"
    digest = ChunkDigest.of(good)
    LmdbChunkCache(path, 1 << 20).close()
    env = lmdb.open(str(path), max_dbs=4)
    chunks = env.open_db(b"chunks")
    with env.begin(write=True) as txn:
        txn.put(digest.raw, b"the real chunl", db=chunks)  # one byte of bit rot
    env.close()
    cache = LmdbChunkCache(path, 1 << 20)
    try:
        assert cache.get(digest) is None
        assert cache.stats()["entries"] == 0  # dropped, not kept around
        cache.put(digest, good)
        assert cache.get(digest) == good
    finally:
        cache.close()


def test_lmdb_cache_declines_when_the_map_is_full(tmp_path: Path) -> None:
    cache = LmdbChunkCache(tmp_path / "cache", 1 << 20)
    try:
        big = random.Random(1).randbytes(2 << 20)
        cache.put(ChunkDigest.of(big), big)  # no error
        assert cache.get(ChunkDigest.of(big)) is None
        small = b"still works"
        cache.put(ChunkDigest.of(small), small)
        assert cache.get(ChunkDigest.of(small)) == small
    finally:
        cache.close()


# --------------------------------------------------------------------------- blob readers


def test_file_blob_reader_reads_ranges(tmp_path: Path) -> None:
    data = b"0123456789"
    digest = Digest.of(data)
    (tmp_path / "sha256").mkdir()
    (tmp_path / "sha256" / digest.hex).write_bytes(data)
    reader = FileBlobReader(tmp_path)
    try:
        assert reader.read_range(digest, 3, 4) == b"3456"
        assert reader.read_range(digest, 8, 10) == b"89"
        with pytest.raises(NotFoundError):
            reader.read_range(Digest.of(b"other"), 0, 1)
    finally:
        reader.close()


def test_iter_blob_chunks_reads_the_blob_table(packed: PackedBlobs) -> None:
    blob, data = next(iter(packed.blobs.items()))
    reader = MemoryBlobReader(packed.blobs)
    table = list(iter_blob_chunks(reader, blob, len(data)))
    assert [c.digest for c in table] == [r.digest for r in packed.refs[:6]]
    assert [(c.offset, c.stored_size) for c in table] == [
        (r.offset, r.stored_size) for r in packed.refs[:6]
    ]
    with pytest.raises(FormatError, match="too short"):
        list(iter_blob_chunks(MemoryBlobReader({blob: b"x"}), blob, 1))


def test_independent_ranges_are_fetched_in_parallel_and_correctly() -> None:
    import threading

    packed = pack_blobs([[bytes([i]) * 5000 for i in range(8)], [b"x" * 9000, b"y" * 100]])
    seen_threads: set[str] = set()

    class Recording(MemoryBlobReader):
        def read_range(self, blob: Digest, offset: int, length: int) -> bytes:
            seen_threads.add(threading.current_thread().name)
            return super().read_range(blob, offset, length)

    reader = Recording(packed.blobs)
    stats = ReadStats()
    # every chunk its own range: no coalescing at all
    source = FetchingChunkSource(
        reader, stats, coalesce_max_bytes=1, coalesce_gap_bytes=0, fetch_threads=4
    )
    refs = list(packed.refs)
    expected = [bytes([i]) * 5000 for i in range(8)] + [b"x" * 9000, b"y" * 100]
    assert source.get_chunks(refs) == expected
    assert stats.requests == len(refs) and stats.chunks_fetched == len(refs)
    assert len(seen_threads) > 1 and all(n.startswith("imagefs-fetch") for n in seen_threads)
    source.close()
