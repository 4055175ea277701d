"""`imagefs pull` against the lab's containerd 1.6: an imagefs image becomes runnable with
`ctr run --snapshotter imagefs` although containerd never talks to the registry (the
manifest and config come from imagefs's client, the layers from the snapshotter's lazy
mount), survives a forced GC, and pulling again is a no-op. A plain image, or a snapshotter
that is not imagefs's, is refused with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.containerd_fixture import (
    HELLO,
    REPO,
    ContainerdLab,
    push,
)
from tests.integration.registry_fixture import matching

pytestmark = [pytest.mark.integration]


def _imagefs(
    *args: str, tmp_path: Path, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IMAGEFS_RUN_DIR": str(tmp_path / "run")}
    env.pop("IMAGEFS_CONFIG", None)
    res = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and res.returncode != 0:
        raise AssertionError(f"imagefs {' '.join(args)} exited {res.returncode}\n{res.stderr}")
    return res


def _diagnose(lab: ContainerdLab) -> str:
    return (
        f"\n--- containerd log (tail):\n{lab.containerd_log()[-4000:]}"
        f"\n--- snapshotter log (tail):\n{lab.snapshotter.log_text()[-4000:]}"
    )


def _convert(lab: ContainerdLab, layout: Path, tag: str, tmp_path: Path) -> tuple[str, str]:
    ref = f"{lab.registry.host}/imagefs/busybox:{tag}"
    out = _imagefs("convert", f"oci:{layout}:busybox", ref, "--json", tmp_path=tmp_path)
    return ref, json.loads(out.stdout)["manifest_digest"]


def test_imagefs_pull_then_ctr_run_fetches_no_layer_through_containerd(
    lab: ContainerdLab, busybox_layout: Path, tmp_path: Path
) -> None:
    ref, manifest_digest = _convert(lab, busybox_layout, "pulled", tmp_path)
    seen = len(lab.registry.log.splitlines())
    address = str(lab.address)

    pulled = _imagefs("pull", ref, "--address", address, "--json", tmp_path=tmp_path)
    result = json.loads(pulled.stdout)
    assert result["image"] == ref
    assert result["manifest_digest"] == manifest_digest
    assert result["created"] is True
    assert [layer["status"] for layer in result["layers"]] == ["remote"] * len(result["layers"])
    assert result["layers"][-1]["chain_id"] == result["chain_id"]

    images = lab.ctr("images", "ls").stdout
    assert ref in images and manifest_digest in images, images
    snapshots = lab.ctr("snapshots", "--snapshotter", "imagefs", "ls").stdout
    for layer in result["layers"]:
        assert layer["chain_id"] in snapshots, snapshots
    assert "imagefs-pull-" not in lab.ctr("leases", "ls").stdout  # the lease is gone

    # a forced GC keeps everything: the image's and config's gc.ref labels hold it
    lease = lab.ctr("leases", "create").stdout.split()[0]
    lab.ctr("leases", "delete", "--sync", lease)
    snapshots = lab.ctr("snapshots", "--snapshotter", "imagefs", "ls").stdout
    assert result["chain_id"] in snapshots, snapshots
    content = lab.ctr("content", "ls").stdout
    assert manifest_digest in content and result["config_digest"] in content, content

    try:
        run = lab.run(ref, "pulled-hello", "cat", "/etc/hello.txt")
    except AssertionError as exc:
        exc.add_note(_diagnose(lab))
        raise
    assert run.stdout == HELLO

    log = lab.registry.completed(seen)
    assert log, "the registry saw no request"
    # containerd never talked to the registry; imagefs fetched the manifest and config
    # (imagefs pull) and the bootstrap and chunks by Range (the snapshotter's mount)
    assert not [ln for ln in log if "useragent=imagefs/" not in ln], log
    assert matching(log, "GET", f"/v2/imagefs/busybox/manifests/{manifest_digest}") or matching(
        log, "GET", "/v2/imagefs/busybox/manifests/pulled"
    )
    blob_gets = matching(log, "GET", "/v2/imagefs/busybox/blobs/sha256:")
    assert any("status=206" in ln for ln in blob_gets), blob_gets

    # pulling again finds every layer in place and only updates the image record
    again = json.loads(
        _imagefs("pull", ref, "--address", address, "--json", tmp_path=tmp_path).stdout
    )
    assert again["created"] is False
    assert {layer["status"] for layer in again["layers"]} == {"present"}
    run = lab.run(ref, "pulled-again", "cat", "/etc/hello.txt")
    assert run.stdout == HELLO


def test_imagefs_pull_refuses_what_it_cannot_provide_lazily(
    lab: ContainerdLab, busybox_layout: Path, tmp_path: Path
) -> None:
    address = str(lab.address)
    plain = push(busybox_layout, "busybox", lab.registry, "imagefs/plain")
    res = _imagefs("pull", plain, "--address", address, tmp_path=tmp_path, check=False)
    assert res.returncode == 4, res.stderr  # FormatError: not an imagefs image
    assert res.stderr.count("\n") == 1 and "not an imagefs image" in res.stderr, res.stderr

    # a snapshotter that applies layers itself (containerd's overlayfs) prepares an empty
    # snapshot instead of answering ALREADY_EXISTS: refused, and the snapshot is removed
    ref, _ = _convert(lab, busybox_layout, "wrong-snapshotter", tmp_path)
    res = _imagefs(
        *("pull", ref, "--address", address, "--snapshotter", "overlayfs"),
        tmp_path=tmp_path,
        check=False,
    )
    assert res.returncode == 7, res.stderr  # MountError
    assert "did not provide layer" in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert "extract-" not in lab.ctr("snapshots", "--snapshotter", "overlayfs", "ls").stdout
    assert ref not in lab.ctr("images", "ls", "-q").stdout

    # no containerd at the address: one line, exit 7
    res = _imagefs(
        "pull", ref, "--address", str(tmp_path / "nothing.sock"), tmp_path=tmp_path, check=False
    )
    assert res.returncode == 7 and "cannot reach containerd" in res.stderr, res.stderr
