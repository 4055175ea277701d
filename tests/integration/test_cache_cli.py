"""`imagefs cache stats|gc|clear` on a real LMDB cache, run as the CLI subprocess."""

from __future__ import annotations

import random
from pathlib import Path

from imagefs.chunks import LmdbChunkCache
from imagefs.digest import ChunkDigest
from tests.conftest import Env


def fill(path: Path, count: int, size: int = 4096) -> list[ChunkDigest]:
    digests = []
    with LmdbChunkCache(path, 1 << 30) as cache:
        for i in range(count):
            data = random.Random(i).randbytes(size)
            cache.put(ChunkDigest.of(data), data)
            digests.append(ChunkDigest.of(data))
    return digests


def test_cache_stats_gc_and_clear(imagefs_env: Env) -> None:
    path = imagefs_env.root / "cache"
    empty = imagefs_env.json("cache", "stats")
    assert empty["entries"] == 0 and empty["bytes"] == 0
    assert empty["path"] == str(path)
    assert empty["max_bytes"] == 10 << 30  # the default cap
    assert empty["map_bytes"] >= empty["max_bytes"]

    fill(path, 10)
    st = imagefs_env.json("cache", "stats")
    assert st["entries"] == 10 and st["bytes"] == 10 * 4096

    text = imagefs_env.run("cache", "stats").stdout
    assert str(path) in text and "entries    10" in text

    gc = imagefs_env.json("cache", "gc")  # under the cap: nothing to do
    assert gc["evicted_entries"] == 0 and gc["entries"] == 10

    gc = imagefs_env.json("cache", "gc", "--max-bytes", "16KiB")
    assert gc["evicted_entries"] == 6 and gc["freed_bytes"] == 6 * 4096
    assert gc["entries"] == 4 and gc["bytes"] == 4 * 4096

    cleared = imagefs_env.json("cache", "clear")
    assert cleared["evicted_entries"] == 4 and cleared["freed_bytes"] == 4 * 4096
    assert imagefs_env.json("cache", "stats")["entries"] == 0


def test_cache_commands_work_while_another_process_holds_the_cache(imagefs_env: Env) -> None:
    path = imagefs_env.root / "cache"
    digests = fill(path, 5)
    with LmdbChunkCache(path, 1 << 30) as held:
        assert imagefs_env.json("cache", "stats")["entries"] == 5
        assert imagefs_env.json("cache", "clear")["evicted_entries"] == 5
        assert all(held.get(d) is None for d in digests)
        data = b"written after the clear"
        held.put(ChunkDigest.of(data), data)
    assert imagefs_env.json("cache", "stats")["entries"] == 1


def test_cache_dir_flag_overrides_the_environment(imagefs_env: Env, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    fill(other, 3)
    st = imagefs_env.json("cache", "stats", "--cache-dir", str(other))
    assert st["path"] == str(other) and st["entries"] == 3


def test_cache_gc_rejects_a_bad_size(imagefs_env: Env) -> None:
    res = imagefs_env.run("cache", "gc", "--max-bytes", "lots", check=False)
    assert res.returncode == 2 and "imagefs: " in res.stderr
