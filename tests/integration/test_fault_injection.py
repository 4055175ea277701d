"""Network faults between a mount and a real registry, injected by a proxy on loopback
(`fault_proxy.py`) into the blob range GETs only, so the mount itself comes up.

For each fault, with a bounded registry timeout: every read of a mounted file ends within
`BOUND_S` with the right bytes or EIO, never wrong bytes (each read is compared with the
file's content); when the fault stops, the same mount reads everything correctly; the node
cache then holds only entries that match their digest (checked entry by entry in LMDB), and
a second mount on the same cache serves everything from it without a fetch."""

from __future__ import annotations

import errno
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagefs.digest import ChunkDigest
from tests.conftest import Env, Mounter, Reliability
from tests.integration.fault_proxy import FaultProxy, run_fault_proxy
from tests.integration.registry_fixture import RunningRegistry, run_registry
from tests.support.layers import LayerBuilder
from tests.support.oci import LayerBlob, write_oci_layout

FILES = {f"data/f{i}.bin": random.Random(1000 + i).randbytes(300_000) for i in range(4)}
FAULTY = ("data/f1.bin", "data/f2.bin")  # read while the fault is on
TIMEOUT_S = 3.0
RETRIES = 2
# a read may wait for a request that times out, its retry (started before the deadline) and
# a refetch after an integrity error: bounded by two timeouts plus slack
BOUND_S = 2 * TIMEOUT_S + 5


@pytest.fixture(scope="module")
def registry() -> Iterator[RunningRegistry]:
    with run_registry() as reg:
        yield reg


@pytest.fixture(scope="module")
def image(registry: RunningRegistry) -> str:
    with tempfile.TemporaryDirectory(prefix="ifs-faultsrc-") as tmp:
        layer = LayerBuilder()
        for path, data in FILES.items():
            layer.file(path, data)
        write_oci_layout(Path(tmp) / "src", [LayerBlob.from_tar(layer.tar())], tag="v1")
        ref = f"{registry.host}/faults/inject:v1"
        Env(Path(tmp)).run("convert", f"oci:{Path(tmp) / 'src'}:v1", ref)
    return ref


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    with run_fault_proxy() as p:
        yield p


def wrong_bytes(got: bytes, want: bytes) -> int:
    """Bytes of `got` that differ from `want`, counting missing or extra bytes."""
    n = min(len(got), len(want))
    return sum(a != b for a, b in zip(got[:n], want[:n], strict=True)) + abs(len(got) - len(want))


def audit_cache(cache_dir: Path) -> tuple[int, int]:
    """(entries, entries whose bytes do not match their key) in the node cache's LMDB."""
    import lmdb

    env = lmdb.open(str(cache_dir), readonly=True, lock=False, max_dbs=4, subdir=True)
    try:
        chunks = env.open_db(b"chunks", create=False)
        entries = bad = 0
        with env.begin(db=chunks) as txn:
            for key, value in txn.cursor():
                entries += 1
                bad += ChunkDigest.of(value).raw != bytes(key)
        return entries, bad
    finally:
        env.close()


def _read(path: Path, want: bytes) -> tuple[str, float, int]:
    """('ok'|'EIO', seconds, wrong bytes) for reading `path` whole."""
    started = time.monotonic()
    try:
        got = path.read_bytes()
    except OSError as exc:
        assert exc.errno == errno.EIO, exc
        return "EIO", time.monotonic() - started, 0
    return "ok", time.monotonic() - started, wrong_bytes(got, want)


def run_scenario(
    env: Env,
    mount_image: Mounter,
    image: str,
    proxy: FaultProxy,
    reliability: Reliability,
    kind: str,
    **options: Any,
) -> list[str]:
    """Mount through the proxy, read FAULTY under the fault, heal, check recovery and the
    cache. Returns the outcome ('ok' or 'EIO') of each faulty read."""
    env.extra["IMAGEFS_REGISTRY_PROXY"] = proxy.url
    env.extra["IMAGEFS_REGISTRY_TIMEOUT_S"] = str(TIMEOUT_S)
    env.extra["IMAGEFS_REGISTRY_RETRIES"] = str(RETRIES)
    m = mount_image(image)
    assert (m.path / "data/f0.bin").read_bytes() == FILES["data/f0.bin"]  # healthy first

    proxy.inject(kind, **options)
    outcomes, lost = [], 0
    for name in FAULTY:
        outcome, seconds, wrong = _read(m.path / name, FILES[name])
        outcomes.append(outcome)
        lost += wrong
        assert seconds < BOUND_S, f"{kind}: reading {name} took {seconds:.1f}s"
    faults = proxy.served
    proxy.heal()

    # the same mount recovers: every file reads correctly now
    for name, want in FILES.items():
        lost += wrong_bytes((m.path / name).read_bytes(), want)
    reliability.record(faults=faults, bytes_lost=lost)
    assert faults >= 1, proxy.requests  # the fault was really exercised
    assert lost == 0

    # the cache keeps nothing bad, and holds everything read
    stats = env.json("cache", "stats")
    entries, bad = audit_cache(Path(stats["path"]))
    assert bad == 0
    assert entries == stats["entries"] > 0
    again = mount_image(image, "again")  # a fresh process on the same node cache
    for name, want in FILES.items():
        assert (again.path / name).read_bytes() == want
    second = again.stats()
    assert second["bytes_fetched"] == 0 and second["integrity_errors"] == 0
    return outcomes


@pytest.mark.reliability(
    "fault", "connection reset in the middle of a blob range body", "EIO within the bound"
)
def test_dropped_connections(
    imagefs_env: Env,
    mount_image: Mounter,
    image: str,
    proxy: FaultProxy,
    reliability: Reliability,
) -> None:
    outcomes = run_scenario(imagefs_env, mount_image, image, proxy, reliability, "drop")
    assert outcomes == ["EIO", "EIO"]


@pytest.mark.reliability(
    "fault",
    "a response held longer than the registry timeout",
    "EIO within registry_timeout_s (+ one retry); recovers when answered again",
)
def test_stalled_responses(
    imagefs_env: Env,
    mount_image: Mounter,
    image: str,
    proxy: FaultProxy,
    reliability: Reliability,
) -> None:
    outcomes = run_scenario(imagefs_env, mount_image, image, proxy, reliability, "stall")
    assert outcomes == ["EIO", "EIO"]


@pytest.mark.reliability(
    "fault", "a body shorter than its Content-Length, then close", "EIO within the bound"
)
def test_truncated_bodies(
    imagefs_env: Env,
    mount_image: Mounter,
    image: str,
    proxy: FaultProxy,
    reliability: Reliability,
) -> None:
    outcomes = run_scenario(imagefs_env, mount_image, image, proxy, reliability, "truncate")
    assert outcomes == ["EIO", "EIO"]


@pytest.mark.reliability(
    "fault",
    "every blob range body has a flipped byte",
    "refetched once, then EIO; never wrong bytes; nothing bad cached",
)
def test_flipped_bytes_every_time(
    imagefs_env: Env,
    mount_image: Mounter,
    image: str,
    proxy: FaultProxy,
    reliability: Reliability,
) -> None:
    outcomes = run_scenario(imagefs_env, mount_image, image, proxy, reliability, "flip")
    assert outcomes == ["EIO", "EIO"]


@pytest.mark.reliability(
    "fault", "one blob range body with a flipped byte", "the refetch serves correct bytes"
)
def test_flipped_byte_once_is_refetched(
    imagefs_env: Env,
    mount_image: Mounter,
    image: str,
    proxy: FaultProxy,
    reliability: Reliability,
) -> None:
    outcomes = run_scenario(imagefs_env, mount_image, image, proxy, reliability, "flip", limit=1)
    assert outcomes == ["ok", "ok"]


@pytest.mark.parametrize(
    ("status", "retry_after"),
    [(500, None), (503, None), (429, None), (429, "3600")],
    ids=["500", "503", "429", "429-retry-after-1h"],
)
@pytest.mark.reliability(
    "fault",
    "the registry answers 500/503/429 (429 also with Retry-After: 3600)",
    "retried within the deadline, then EIO within the bound",
)
def test_error_statuses(
    imagefs_env: Env,
    mount_image: Mounter,
    image: str,
    proxy: FaultProxy,
    reliability: Reliability,
    status: int,
    retry_after: str | None,
) -> None:
    outcomes = run_scenario(
        imagefs_env,
        mount_image,
        image,
        proxy,
        reliability,
        "status",
        status=status,
        retry_after=retry_after,
    )
    assert outcomes == ["EIO", "EIO"]
    assert proxy.served >= 2 * 2  # at least one retry for each of the two reads


@pytest.mark.reliability("fault", "a transient 503 (twice)", "retried; correct bytes; no EIO")
def test_transient_errors_are_retried(
    imagefs_env: Env,
    mount_image: Mounter,
    image: str,
    proxy: FaultProxy,
    reliability: Reliability,
) -> None:
    outcomes = run_scenario(
        imagefs_env, mount_image, image, proxy, reliability, "status", status=503, limit=2
    )
    assert outcomes == ["ok", "ok"]


@pytest.mark.reliability(
    "fault",
    "bytes trickle (256 B every 0.2 s; never silent for a read timeout)",
    "EIO within the bound (a total deadline, not only a read timeout)",
)
def test_dripping_bodies(
    imagefs_env: Env,
    mount_image: Mounter,
    image: str,
    proxy: FaultProxy,
    reliability: Reliability,
) -> None:
    outcomes = run_scenario(imagefs_env, mount_image, image, proxy, reliability, "drip")
    assert outcomes == ["EIO", "EIO"]


@pytest.mark.reliability(
    "fault",
    "one connection reset in the middle of a blob range body",
    "that read is correct or EIO (a failed body is not retried today); the next read correct",
)
def test_one_dropped_connection(
    imagefs_env: Env,
    mount_image: Mounter,
    image: str,
    proxy: FaultProxy,
    reliability: Reliability,
) -> None:
    outcomes = run_scenario(imagefs_env, mount_image, image, proxy, reliability, "drop", limit=1)
    assert outcomes[0] in ("ok", "EIO") and outcomes[1] == "ok"
    print(f"one reset: {outcomes}")
