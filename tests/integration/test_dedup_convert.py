"""Converting against earlier images: `--dedup-with` (a layout or a registry image) and the
persistent `--chunk-index`. A rebuilt v2 (every layer digest new, most files identical)
stores little more than its changed files; the blobs it reuses are listed in its manifest
and present wherever it is stored; reads of the result are correct."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, Env, Mounter
from tests.integration.registry_fixture import RunningRegistry, matching, run_registry
from tests.support.layers import LayerBuilder
from tests.support.oci import LayerBlob, write_oci_layout

rng = random.Random(7)
V1 = {f"usr/lib/f{i:02}.bin": rng.randbytes(rng.randrange(60_000, 300_000)) for i in range(20)}
CHANGED = {
    "usr/lib/f03.bin": rng.randbytes(200_000),
    "usr/lib/f11.bin": rng.randbytes(150_000),
    "etc/new.conf": rng.randbytes(40_000),
}
V2 = {**V1, **CHANGED}
CHANGED_BYTES = sum(len(d) for d in CHANGED.values())


def _layout(root: Path, files: dict[str, bytes], tag: str, mtime: int) -> str:
    layer = LayerBuilder()
    for path, data in sorted(files.items()):
        layer.file(path, data, mtime=mtime)  # a rebuild: new mtimes, so new layer digests
    write_oci_layout(root, [LayerBlob.from_tar(layer.tar())], tag=tag)
    return f"oci:{root}:{tag}"


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("dedup-src")
    return {
        "v1": _layout(root / "v1", V1, "v1", 1_700_000_000),
        "v2": _layout(root / "v2", V2, "v2", 1_700_086_400),
    }


@pytest.fixture(scope="module")
def registry() -> Iterator[RunningRegistry]:
    with run_registry() as reg:
        yield reg


def _read_all(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_v2_against_v1_in_a_layout_stores_only_what_changed(
    sources: dict[str, str], imagefs_env: Env, mount_image: Mounter, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = imagefs_env.json("convert", sources["v1"], f"oci:{out}:v1")
    second = imagefs_env.json(
        "convert", sources["v2"], f"oci:{out}:v2", "--dedup-with", f"oci:{out}:v1"
    )
    assert first["bytes_stored"] >= sum(len(d) for d in V1.values())
    # random data is stored raw: what v2 stores is its changed files plus the blob table
    assert CHANGED_BYTES <= second["bytes_stored"] <= 1.1 * CHANGED_BYTES
    unchanged = sum(len(d) for p, d in V1.items() if p not in CHANGED)
    assert second["bytes_reused"] == unchanged
    assert second["external_blobs"] == 1
    assert imagefs_env.json("check", f"oci:{out}:v2")["ok"] is True
    m = mount_image(f"oci:{out}:v2")
    assert _read_all(m.path) == V2


def test_dedup_with_a_registry_image_mounts_its_blobs(
    sources: dict[str, str], registry: RunningRegistry, imagefs_env: Env, mount_image: Mounter
) -> None:
    v1 = f"{registry.host}/apps/base:v1"
    v2 = f"{registry.host}/apps/rebuilt:v2"
    imagefs_env.json("convert", sources["v1"], v1)
    seen = len(registry.log.splitlines())
    second = imagefs_env.json("convert", sources["v2"], v2, "--dedup-with", v1)
    assert CHANGED_BYTES <= second["bytes_stored"] <= 1.1 * CHANGED_BYTES
    log = registry.completed(seen)
    # v1's data blob joined apps/rebuilt by a cross-repository mount, not an upload
    mounts = matching(log, "POST", "/v2/apps/rebuilt/blobs/uploads/?mount=", 201)
    assert len(mounts) == 1 and "from=apps%2Fbase" in mounts[0]
    data_blob = imagefs_env.json("inspect", v1)["blobs"][0]["digest"]
    assert matching(log, "GET", f"/v2/apps/base/blobs/{data_blob}") == []  # never downloaded
    m = mount_image(v2)
    assert _read_all(m.path) == V2


def test_chunk_index_carries_chunks_between_runs(
    sources: dict[str, str], imagefs_env: Env, mount_image: Mounter, tmp_path: Path
) -> None:
    index = tmp_path / "index"
    a, b = tmp_path / "a", tmp_path / "b"
    first = imagefs_env.json("convert", sources["v1"], f"oci:{a}:v1", "--chunk-index", str(index))
    assert first["chunks_reused"] == 0
    second = imagefs_env.json("convert", sources["v2"], f"oci:{b}:v2", "--chunk-index", str(index))
    assert CHANGED_BYTES <= second["bytes_stored"] <= 1.1 * CHANGED_BYTES
    # the reused blob was copied from where the index says it lives into the new layout
    assert imagefs_env.json("check", f"oci:{b}:v2")["ok"] is True
    m = mount_image(f"oci:{b}:v2")
    assert _read_all(m.path) == V2
    third = imagefs_env.json("convert", sources["v2"], f"oci:{b}:v2b", "--chunk-index", str(index))
    assert third["bytes_stored"] < 4096  # everything was known: only the (empty) table


def test_concurrent_conversions_share_one_chunk_index(
    sources: dict[str, str], imagefs_env: Env, tmp_path: Path
) -> None:
    index = tmp_path / "index"
    procs = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "cli.main", "convert", sources[v]),
                *(f"oci:{tmp_path / v}:x", "--chunk-index", str(index), "--json"),
            ],
            cwd=REPO,
            env=imagefs_env.vars,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for v in ("v1", "v2")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    for v in ("v1", "v2"):
        assert imagefs_env.json("check", f"oci:{tmp_path / v}:x")["ok"] is True


def test_a_few_chunks_of_a_big_blob_are_stored_again_not_referenced(
    imagefs_env: Env, mount_image: Mounter, tmp_path: Path
) -> None:
    big = {f"data/b{i}.bin": random.Random(100 + i).randbytes(400_000) for i in range(10)}
    small_share = {"data/b0.bin": big["data/b0.bin"]}  # 400 KB of a 4 MB blob: under 10%
    fresh = {f"app/n{i}.bin": random.Random(200 + i).randbytes(300_000) for i in range(4)}
    out = tmp_path / "out"
    imagefs_env.json("convert", _layout(tmp_path / "a", big, "a", 1), f"oci:{out}:a")
    second = imagefs_env.json(
        "convert",
        _layout(tmp_path / "b", {**fresh, **small_share}, "b", 2),
        f"oci:{out}:b",
        "--dedup-with",
        f"oci:{out}:a",
    )
    assert second["external_blobs"] == 0 and second["chunks_reused"] == 0
    stored = sum(len(d) for d in fresh.values()) + len(big["data/b0.bin"])
    assert stored <= second["bytes_stored"] <= 1.02 * stored
    manifest_blobs = imagefs_env.json("inspect", f"oci:{out}:b")["blobs"]
    assert len(manifest_blobs) == 2  # its own blob and the re-stored chunks, not a's blob
    m = mount_image(f"oci:{out}:b")
    assert _read_all(m.path) == {**fresh, **small_share}
