"""`kill -9` in the middle of `imagefs convert`, then the same command again.

Defined outcomes:

- a new OCI layout target: the target path does not exist after the kill (the build goes
  to a sibling `.NAME.imagefs-*` temp dir, renamed into place only at the end); the stray
  temp dir is left behind and the rerun ignores it (it builds in a fresh one);
- an existing OCI layout: `index.json` is byte-for-byte unchanged (the old tag still
  resolves and checks), every pre-existing blob is unchanged, every other file in
  `blobs/sha256` is either a complete blob whose bytes match its name or a `.tmp-*` file;
  the rerun ignores those and succeeds;
- a registry: the tag still names the old manifest; the rerun HEADs the blobs uploaded
  before the kill and does not upload them again.

The source is 48 MB of random bytes in three uncompressed layers, so the kill lands while
blobs are being written; the moment is taken from the target directory or the registry's
log, never from a sleep."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, Env, Reliability
from tests.integration.registry_fixture import RunningRegistry, matching, run_registry
from tests.support.layers import LayerBuilder
from tests.support.oci import LayerBlob, write_oci_layout

LAYERS = 3
FILES_PER_LAYER = 4
FILE_BYTES = 4 << 20  # 3 x 4 x 4 MiB = 48 MiB
KILL_WITHIN_S = 60.0


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """`big`: 48 MB of random data in three layers; `small`: one small layer."""
    root = tmp_path_factory.mktemp("crash-src")
    rng = random.Random(5)
    blobs = []
    for n in range(LAYERS):
        layer = LayerBuilder()
        for i in range(FILES_PER_LAYER):
            layer.file(f"layer{n}/f{i}.bin", rng.randbytes(FILE_BYTES))
        blobs.append(LayerBlob.from_tar(layer.tar(), "none"))
    write_oci_layout(root / "big", blobs, tag="v1")
    small = LayerBuilder()
    small.file("etc/hello.txt", b"hello, crash\n")
    write_oci_layout(root / "small", [LayerBlob.from_tar(small.tar(), "none")], tag="v0")
    return {"big": f"oci:{root / 'big'}:v1", "small": f"oci:{root / 'small'}:v0"}


@contextlib.contextmanager
def started(env: Env, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`imagefs ARGS` running in the background; always stopped (by its PID)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        env=env.vars,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool]) -> float:
    """SIGKILL `proc` as soon as `ready()`; returns the seconds it ran. Fails if it ended
    first (the moment was missed)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < KILL_WITHIN_S:
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=10) == -signal.SIGKILL
            return time.monotonic() - t0
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            pytest.fail(f"convert ended ({proc.returncode}) before the kill point\n{err}")
        time.sleep(0.002)
    pytest.fail("the kill point never came")


def _files(directory: Path) -> list[Path]:
    with contextlib.suppress(FileNotFoundError):
        return [p for p in directory.iterdir() if p.is_file()]
    return []


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while piece := f.read(1 << 20):
            h.update(piece)
    return h.hexdigest()


@pytest.mark.reliability(
    "crash",
    "kill -9 during convert to a new OCI layout",
    "no target dir; a stray sibling temp dir the rerun ignores; the rerun succeeds",
)
def test_kill_during_convert_to_new_layout(
    imagefs_env: Env, sources: dict[str, str], tmp_path: Path, reliability: Reliability
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = out / "img"

    def writing() -> bool:  # blob bytes are landing in the temp build dir
        return any(
            f.stat().st_size > (1 << 20)
            for tmp in out.glob(".img.imagefs-*")
            for f in _files(tmp / "blobs/sha256")
        )

    with started(imagefs_env, "convert", sources["big"], f"oci:{target}:v1") as proc:
        ran = kill_when(proc, writing)
    reliability.record(faults=1)
    assert not target.exists()
    strays = sorted(p.name for p in out.iterdir())
    assert strays and all(re.fullmatch(r"\.img\.imagefs-\w+", n) for n in strays), strays

    imagefs_env.run("convert", sources["big"], f"oci:{target}:v1")
    imagefs_env.run("check", f"oci:{target}:v1")
    assert sorted(p.name for p in out.iterdir()) == sorted([*strays, "img"])  # ignored
    print(f"killed after {ran:.2f}s; stray {strays}")


@pytest.mark.reliability(
    "crash",
    "kill -9 during convert into an existing OCI layout",
    "index.json and old blobs unchanged; only complete blobs or .tmp-* files added; "
    "the rerun succeeds",
)
def test_kill_during_convert_into_existing_layout(
    imagefs_env: Env, sources: dict[str, str], tmp_path: Path, reliability: Reliability
) -> None:
    target = tmp_path / "img"
    imagefs_env.run("convert", sources["small"], f"oci:{target}:v0")
    blob_dir = target / "blobs/sha256"
    index = (target / "index.json").read_bytes()
    before = {p.name: p.read_bytes() for p in _files(blob_dir)}

    def writing() -> bool:  # a first new blob is complete (installed by rename)
        return any(
            p.name not in before and not p.name.startswith(".tmp-") for p in _files(blob_dir)
        )

    with started(imagefs_env, "convert", sources["big"], f"oci:{target}:v1") as proc:
        ran = kill_when(proc, writing)
    reliability.record(faults=1)
    assert (target / "index.json").read_bytes() == index
    after = _files(blob_dir)
    for p in after:
        if p.name in before:
            assert p.read_bytes() == before[p.name]
        elif not p.name.startswith(".tmp-"):
            assert _sha256(p) == p.name  # a complete blob, installed by rename
    added = sorted(p.name[:12] for p in after if p.name not in before)
    assert any(not n.startswith(".tmp-") for n in added), added
    imagefs_env.run("check", f"oci:{target}:v0")
    assert imagefs_env.run("inspect", f"oci:{target}:v1", check=False).returncode != 0

    imagefs_env.run("convert", sources["big"], f"oci:{target}:v1")
    imagefs_env.run("check", f"oci:{target}:v1")
    imagefs_env.run("check", f"oci:{target}:v0")
    print(f"killed after {ran:.2f}s; left {added}")


@pytest.fixture
def registry() -> Iterator[RunningRegistry]:
    with run_registry() as reg:
        yield reg


_PUT_DIGEST = re.compile(r"digest=sha256(?::|%3A)([0-9a-f]{64})")


@pytest.mark.reliability(
    "crash",
    "kill -9 while convert pushes blobs to a registry",
    "the tag still names the old manifest; the rerun HEADs the blobs already pushed and "
    "does not upload them again",
)
def test_kill_during_push_to_registry(
    imagefs_env: Env,
    sources: dict[str, str],
    registry: RunningRegistry,
    reliability: Reliability,
) -> None:
    ref = f"{registry.host}/crash/img:v1"
    imagefs_env.run("convert", sources["small"], ref)
    old = imagefs_env.json("inspect", ref)["manifest_digest"]
    seen = len(registry.log.splitlines())

    def pushed() -> list[str]:  # blobs whose upload completed (201) since `seen`
        lines = matching(registry.completed(seen), "PUT", "/v2/crash/img/blobs/uploads/", 201)
        return [m.group(1) for ln in lines if (m := _PUT_DIGEST.search(ln))]

    with started(imagefs_env, "convert", sources["big"], ref) as proc:
        ran = kill_when(proc, lambda: bool(pushed()))
    reliability.record(faults=1)
    early = pushed()
    assert early
    assert imagefs_env.json("inspect", ref)["manifest_digest"] == old

    rerun_from = len(registry.log.splitlines())
    result = imagefs_env.json("convert", sources["big"], ref)
    assert result["manifest_digest"] != old
    assert imagefs_env.json("inspect", ref)["manifest_digest"] == result["manifest_digest"]
    imagefs_env.run("check", ref)
    rerun = registry.completed(rerun_from)
    uploads = matching(rerun, "PUT", "/v2/crash/img/blobs/uploads/", 201)
    for hexd in early:
        heads = matching(rerun, "HEAD", f"/v2/crash/img/blobs/sha256:{hexd}", 200)
        assert heads, f"the rerun did not HEAD {hexd[:12]}"
        assert not [ln for ln in uploads if hexd in ln], f"{hexd[:12]} uploaded again"
    assert uploads  # the blobs the killed run had not pushed yet were pushed now
    print(f"killed after {ran:.2f}s; {len(early)} blob(s) pushed before; {len(uploads)} after")
