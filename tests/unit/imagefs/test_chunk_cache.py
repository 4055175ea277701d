"""The node-wide LMDB chunk cache: the size cap with LRU eviction, persistence, sharing
between objects and processes, verification on read, gc and clear."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from imagefs.chunks import LmdbChunkCache
from imagefs.digest import ChunkDigest

REPO = Path(__file__).resolve().parents[3]


def chunk(seed: int, size: int = 1000) -> tuple[ChunkDigest, bytes]:
    data = random.Random(seed).randbytes(size)
    return ChunkDigest.of(data), data


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[LmdbChunkCache]:
    c = LmdbChunkCache(tmp_path / "cache", 10_000, touch_batch=1)
    yield c
    c.close()


def test_lru_eviction_keeps_the_total_under_the_cap(cache: LmdbChunkCache) -> None:
    chunks = [chunk(i) for i in range(30)]
    for digest, data in chunks:
        cache.put(digest, data)
        assert cache.stats()["bytes"] <= cache.max_bytes
    st = cache.stats()
    assert st["entries"] == 10 and st["bytes"] == 10_000
    assert all(cache.get(d) is None for d, _ in chunks[:20])
    assert all(cache.get(d) == data for d, data in chunks[20:])


def test_a_chunk_read_recently_survives_eviction(cache: LmdbChunkCache) -> None:
    chunks = [chunk(i) for i in range(10)]
    for digest, data in chunks:
        cache.put(digest, data)
    first_digest, first_data = chunks[0]
    assert cache.get(first_digest) == first_data  # now the most recently used
    for digest, data in (chunk(i) for i in range(100, 105)):
        cache.put(digest, data)
    assert cache.get(first_digest) == first_data
    assert all(cache.get(d) is None for d, _ in chunks[1:6])  # the five oldest went
    assert all(cache.get(d) == data for d, data in chunks[6:])


def test_batched_hits_are_written_on_close(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    chunks = [chunk(i) for i in range(10)]
    with LmdbChunkCache(path, 10_000, touch_batch=1000, touch_interval_s=3600) as c:
        for digest, data in chunks:
            c.put(digest, data)
        assert c.get(chunks[0][0]) == chunks[0][1]  # remembered in memory only
    with LmdbChunkCache(path, 10_000) as c:
        c.put(*chunk(100))
        assert c.get(chunks[0][0]) == chunks[0][1]
        assert c.get(chunks[1][0]) is None


def test_entries_survive_reopening(tmp_path: Path) -> None:
    digest, data = chunk(1)
    with LmdbChunkCache(tmp_path / "cache", 1 << 20) as c:
        c.put(digest, data)
    with LmdbChunkCache(tmp_path / "cache", 1 << 20) as c:
        assert c.get(digest) == data
        assert c.stats()["entries"] == 1 and c.stats()["bytes"] == len(data)


def test_two_objects_on_one_directory_share_entries(tmp_path: Path) -> None:
    a = LmdbChunkCache(tmp_path / "cache", 1 << 20)
    b = LmdbChunkCache(tmp_path / "cache", 1 << 20)
    try:
        d1, v1 = chunk(1)
        d2, v2 = chunk(2)
        a.put(d1, v1)
        b.put(d2, v2)
        assert b.get(d1) == v1 and a.get(d2) == v2
        a.close()
        assert b.get(d1) == v1  # closing one object leaves the other working
    finally:
        a.close()
        b.close()


def test_another_process_sees_our_entries_and_we_see_its(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    ours_digest, ours = chunk(1)
    theirs_digest, theirs = chunk(2)
    with LmdbChunkCache(path, 1 << 20) as c:
        c.put(ours_digest, ours)
        script = textwrap.dedent(
            f"""
            import random, sys
            from pathlib import Path
            from imagefs.chunks import LmdbChunkCache
            from imagefs.digest import ChunkDigest
            with LmdbChunkCache(Path({str(path)!r}), 1 << 20) as c:
                ours = random.Random(1).randbytes(1000)
                assert c.get(ChunkDigest.of(ours)) == ours, "parent entry not seen"
                theirs = random.Random(2).randbytes(1000)
                c.put(ChunkDigest.of(theirs), theirs)
            """
        )
        res = subprocess.run(
            [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert res.returncode == 0, res.stderr
        assert c.get(theirs_digest) == theirs  # while our environment stayed open
        assert c.stats()["entries"] == 2


def test_a_corrupted_value_is_dropped_on_read(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    digest, data = chunk(1)
    with LmdbChunkCache(path, 1 << 20) as c:
        c.put(digest, data)
    env = lmdb.open(str(path), max_dbs=4)
    with env.begin(write=True) as txn:
        txn.put(digest.raw, data[:-1] + b"\0", db=env.open_db(b"chunks", txn=txn))
    env.close()
    with LmdbChunkCache(path, 1 << 20) as c:
        assert c.get(digest) is None
        st = c.stats()
        assert st["entries"] == 0 and st["bytes"] == 0  # dropped with its accounting
        c.put(digest, data)
        assert c.get(digest) == data


def test_gc_evicts_down_to_a_size(cache: LmdbChunkCache) -> None:
    chunks = [chunk(i) for i in range(8)]
    for digest, data in chunks:
        cache.put(digest, data)
    assert cache.get(chunks[0][0]) is not None
    assert cache.gc() == {"evicted_entries": 0, "freed_bytes": 0}  # already under the cap
    assert cache.gc(3000) == {"evicted_entries": 5, "freed_bytes": 5000}
    st = cache.stats()
    assert st["entries"] == 3 and st["bytes"] == 3000
    assert cache.get(chunks[0][0]) is not None  # recently read, kept


def test_clear_removes_everything(cache: LmdbChunkCache) -> None:
    chunks = [chunk(i) for i in range(5)]
    for digest, data in chunks:
        cache.put(digest, data)
    assert cache.clear() == {"evicted_entries": 5, "freed_bytes": 5000}
    assert cache.stats()["entries"] == 0 and cache.stats()["bytes"] == 0
    assert all(cache.get(d) is None for d, _ in chunks)
    cache.put(*chunks[0])
    assert cache.get(chunks[0][0]) == chunks[0][1]


def test_a_put_larger_than_the_cap_is_declined(cache: LmdbChunkCache) -> None:
    small_digest, small = chunk(1)
    cache.put(small_digest, small)
    big_digest, big = chunk(2, 10_001)
    cache.put(big_digest, big)
    assert cache.get(big_digest) is None
    assert cache.get(small_digest) == small  # nothing was evicted for it
    exact_digest, exact = chunk(3, 10_000)
    cache.put(exact_digest, exact)  # exactly the cap fits, evicting the rest
    assert cache.get(exact_digest) == exact and cache.stats()["entries"] == 1


def test_a_second_put_of_an_entry_changes_nothing(cache: LmdbChunkCache) -> None:
    digest, data = chunk(1)
    cache.put(digest, data)
    cache.put(digest, data)
    assert cache.stats()["entries"] == 1 and cache.stats()["bytes"] == len(data)
