"""Concurrency and resource limits: parallel readers across mounts sharing one cache, eviction
under pressure while reading, a chunk cache on a tmpfs that fills up, and the memory of a
mount for an image of 100k files and for a multi-GiB file."""

from __future__ import annotations

import os
import random
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import Env, Mounter, Reliability
from tests.support.layers import LayerBuilder
from tests.support.oci import LayerBlob, write_oci_layout

SHARED = {f"lib/s{i}.bin": random.Random(i).randbytes(200_000) for i in range(12)}


def _image(env: Env, root: Path, files: dict[str, bytes], tag: str) -> str:
    layer = LayerBuilder()
    for path, data in files.items():
        layer.file(path, data)
    write_oci_layout(root / tag, [LayerBlob.from_tar(layer.tar())], tag=tag)
    env.run("convert", f"oci:{root / tag}:{tag}", f"oci:{root / 'out'}:{tag}")
    return f"oci:{root / 'out'}:{tag}"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _parallel_reads(
    mounts: list[tuple[Path, dict[str, bytes]]], readers: int, rounds: int
) -> tuple[int, int]:
    """`readers` threads each read `rounds` random files of random mounts; returns (reads,
    bytes that came back wrong)."""
    lost = [0]
    count = [0]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(rounds):
                root, files = rng.choice(mounts)
                path = rng.choice(sorted(files))
                got = (root / path).read_bytes()
                with lock:
                    count[0] += 1
                    if got != files[path]:
                        lost[0] += sum(1 for a, b in zip(got, files[path], strict=False) if a != b)
                        lost[0] += abs(len(got) - len(files[path]))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[:3]
    return count[0], lost[0]


@pytest.mark.reliability(
    "concurrency",
    "16 parallel readers across 3 mounts sharing one chunk cache",
    "every read returns the right bytes",
)
def test_sixteen_readers_three_mounts_one_cache(
    imagefs_env: Env, mount_image: Mounter, tmp_path: Path, reliability: Reliability
) -> None:
    images = []
    for i in range(3):
        own = {f"app/{i}-{j}.bin": random.Random(100 * i + j).randbytes(150_000) for j in range(6)}
        files = {**SHARED, **own}
        images.append((_image(imagefs_env, tmp_path, files, f"v{i}"), files))
    mounts = [(mount_image(ref, f"m{i}").path, files) for i, (ref, files) in enumerate(images)]
    reads, lost = _parallel_reads(mounts, readers=16, rounds=25)
    reliability.record(inputs=reads, bytes_lost=lost)
    assert reads == 16 * 25 and lost == 0


@pytest.mark.reliability(
    "concurrency",
    "eviction under pressure: a 1 MiB chunk cache while 8 readers read 4 MB",
    "right bytes; the cache stays under its cap",
)
def test_eviction_under_pressure_while_reading(
    imagefs_env: Env, mount_image: Mounter, tmp_path: Path, reliability: Reliability
) -> None:
    imagefs_env.extra["IMAGEFS_CACHE_MAX_BYTES"] = "1MiB"
    imagefs_env.extra["IMAGEFS_MEMORY_CACHE_BYTES"] = "256KiB"
    ref = _image(imagefs_env, tmp_path, SHARED, "small-cache")
    m = mount_image(ref)
    reads, lost = _parallel_reads([(m.path, SHARED)], readers=8, rounds=20)
    subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=True)
    reads2, lost2 = _parallel_reads([(m.path, SHARED)], readers=8, rounds=20)
    stats = imagefs_env.json("cache", "stats")
    reliability.record(inputs=reads + reads2, bytes_lost=lost + lost2)
    assert lost == lost2 == 0
    assert stats["bytes"] <= 1 << 20, stats
    assert m.stats()["chunks_fetched"] > len(SHARED)  # evicted chunks were fetched again


@pytest.mark.reliability(
    "concurrency",
    "the chunk cache on a 1 MiB tmpfs that fills up",
    "reads still served with the right bytes (not cached); the cache is not corrupted",
)
def test_cache_on_a_full_tmpfs(
    imagefs_env: Env, mount_image: Mounter, tmp_path: Path, reliability: Reliability
) -> None:
    cache = tmp_path / "tmpfs-cache"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(cache)], check=True)
    try:
        imagefs_env.extra["IMAGEFS_CACHE_DIR"] = str(cache / "c")
        ref = _image(imagefs_env, tmp_path, SHARED, "full")
        m = mount_image(ref)
        reads, lost = _parallel_reads([(m.path, SHARED)], readers=4, rounds=15)
        reliability.record(inputs=reads, bytes_lost=lost)
        assert lost == 0
        assert (m.path / "lib/s3.bin").read_bytes() == SHARED["lib/s3.bin"]
        stats = imagefs_env.json("cache", "stats")  # opens and reads the cache: not corrupt
        assert stats["bytes"] < 1 << 20 and stats["bytes"] < sum(map(len, SHARED.values()))
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(tmp_path / "mounts" / "mnt")], check=False)
        subprocess.run(["umount", "-l", str(cache)], check=False)


@pytest.mark.reliability(
    "concurrency",
    "memory of a mount for an image of 100,000 files, all listed and stat'ed",
    "mount process RSS stays under 300 MiB",
)
def test_memory_of_a_mount_with_100k_files(
    imagefs_env: Env, mount_image: Mounter, tmp_path: Path, reliability: Reliability
) -> None:
    layer = LayerBuilder(sort_entries=False)
    for d in range(100):
        for f in range(1000):
            layer.file(f"d{d:03}/f{f:04}", b"%d/%d\n" % (d, f))
    write_oci_layout(tmp_path / "many", [LayerBlob.from_tar(layer.tar())], tag="m")
    imagefs_env.run("convert", f"oci:{tmp_path / 'many'}:m", f"oci:{tmp_path / 'out'}:m")
    m = mount_image(f"oci:{tmp_path / 'out'}:m")
    seen = 0
    for _dirpath, _dirs, names in os.walk(m.path):
        seen += len(names)
    assert seen == 100_000
    assert (m.path / "d042" / "f0777").read_bytes() == b"42/777\n"
    rss = _rss_kib(m.pid)
    reliability.record(inputs=seen)
    assert rss < 300 * 1024, f"mount RSS {rss} KiB"


@pytest.mark.reliability(
    "concurrency",
    "memory of a mount reading one 2 GiB file end to end (IMAGEFS_BIG_FILE_GIB for more)",
    "mount process RSS stays under 300 MiB; the bytes are right",
)
def test_memory_of_a_mount_reading_a_big_file(
    imagefs_env: Env, mount_image: Mounter, tmp_path: Path, reliability: Reliability
) -> None:
    gib = int(os.environ.get("IMAGEFS_BIG_FILE_GIB", "2"))
    size = gib << 30
    src = tmp_path / "big"
    src.mkdir()
    with open(src / "zeros.bin", "wb") as f:  # sparse on disk, all zeros
        f.truncate(size)
    imagefs_env.run("convert", f"dir:{src}", f"oci:{tmp_path / 'out'}:big", timeout=900)
    m = mount_image(f"oci:{tmp_path / 'out'}:big")
    total = 0
    nonzero = 0
    with open(m.path / "zeros.bin", "rb", buffering=0) as f:
        while block := f.read(1 << 20):
            total += len(block)
            if block.count(0) != len(block):
                nonzero += 1
    rss = _rss_kib(m.pid)
    reliability.record(inputs=1, bytes_lost=nonzero)
    assert total == size and nonzero == 0
    assert rss < 300 * 1024, f"mount RSS {rss} KiB"
