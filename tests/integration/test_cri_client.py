"""The CRI v1 client (tests/support/cri.py) against the lab's containerd 1.6, whose CRI plugin
pulls through the imagefs snapshotter: Version, Status, PullImage, a host-network pod, a
container that cats the busybox image's layer-2 file, its exit code and its CRI log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fuse_mount.snapshotter.state import Kind
from tests.integration.containerd_fixture import (
    HELLO,
    REPO,
    ContainerdLab,
    chain_ids,
    push,
    run_containerd,
)
from tests.integration.registry_fixture import RunningRegistry, run_registry
from tests.support.cri import CriClient

pytestmark = [pytest.mark.integration]

SANDBOX_REPO, SANDBOX_TAG = "imagefs/pause", "1"  # the fixture's CRI sandbox_image
REF_NAME = "org.opencontainers.image.ref.name"


def _push_sandbox_image(layout: Path, registry: RunningRegistry) -> str:
    """The offline pause image the fixture's config names (`<registry>/imagefs/pause:1`):
    the busybox image running `sleep`, tagged in the layout and pushed."""
    image = f"{layout}:pause"
    index = json.loads((layout / "index.json").read_text())
    tags = {m.get("annotations", {}).get(REF_NAME) for m in index["manifests"]}
    if "pause" not in tags:
        subprocess.run(
            [
                *("umoci", "config", "--image", f"{layout}:busybox", "--tag", "pause"),
                *("--config.cmd", "/bin/sleep", "--config.cmd", "2147483647"),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    ref = f"{registry.host}/{SANDBOX_REPO}:{SANDBOX_TAG}"
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{image}", f"docker://{ref}"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return ref


@pytest.fixture
def lab(busybox_layout: Path) -> Iterator[ContainerdLab]:
    with run_registry() as registry, run_containerd(registry) as lab:
        _push_sandbox_image(busybox_layout, registry)
        yield lab


def _diagnose(lab: ContainerdLab) -> str:
    return (
        f"\n--- containerd log (tail):\n{lab.containerd_log()[-4000:]}"
        f"\n--- snapshotter log (tail):\n{lab.snapshotter.log_text()[-4000:]}"
    )


def test_cri_runs_container_from_pulled_image(
    lab: ContainerdLab, busybox_layout: Path, tmp_path: Path
) -> None:
    ref = push(busybox_layout, "busybox", lab.registry, "imagefs/busybox")
    log_dir = tmp_path / "pod-logs"
    with CriClient(lab.address) as cri:
        version = cri.version()
        assert version.runtime_name == "containerd"
        assert version.runtime_api_version == "v1"
        conditions = cri.status()
        assert conditions["RuntimeReady"].status, conditions  # NetworkReady: no CNI, fine

        try:
            image_ref = cri.pull(ref)
        except Exception as exc:
            exc.add_note(_diagnose(lab))
            raise
        assert image_ref.startswith("sha256:")
        assert cri.image_id(ref) == image_ref
        # CRI pulled through the imagefs snapshotter (a plain image: its overlay fallback),
        # with the cri.* labels (the fixture sets disable_snapshot_annotations = false)
        committed = {
            s.key.rsplit("/", 1)[-1]: s
            for s in lab.snapshotter.snapshots()
            if s.kind is Kind.COMMITTED and s.key.startswith("k8s.io/")
        }
        for chain in chain_ids(busybox_layout, "busybox"):
            assert committed[chain].labels["containerd.io/snapshot/cri.image-ref"] == ref

        try:
            with cri.pod("imagefs-cri", log_dir) as pod_id:
                ctr = cri.create(pod_id, None, "hello", ref, ["cat", "/etc/hello.txt"], "hello.log")
                cri.start(ctr)
                exit_code = cri.wait_exit(ctr, timeout_s=60)
                info = cri.container_status(ctr)
                text = cri.logs(log_dir / "hello.log")
                assert exit_code == 0, (info, text)
                assert info.state == "CONTAINER_EXITED"
                assert info.log_path == str(log_dir / "hello.log")
                assert text == HELLO
                assert cri.logs(log_dir / "hello.log", "stderr") == ""
                cri.stop_container(ctr)
                cri.remove_container(ctr)
        except Exception as exc:
            exc.add_note(_diagnose(lab))
            raise

        cri.remove_image(ref)
        assert cri.image_id(ref) is None


BIG = 24 << 20  # an unrelated big file in the imagefs test image


@pytest.fixture(scope="module")
def big_layout(busybox_layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox layout plus a tag `big`: one more layer holding /data/big.bin (random),
    which the containers below never read."""
    work = tmp_path_factory.mktemp("big")
    bundle = work / "bundle"
    unpack = ["umoci", "unpack", "--image", f"{busybox_layout}:busybox", str(bundle)]
    subprocess.run(unpack, check=True, capture_output=True, timeout=120)
    (bundle / "rootfs" / "data").mkdir()
    (bundle / "rootfs" / "data" / "big.bin").write_bytes(os.urandom(BIG))
    repack = ["umoci", "repack", "--image", f"{busybox_layout}:big", str(bundle)]
    subprocess.run(repack, check=True, capture_output=True, timeout=120)
    return busybox_layout


def _convert(layout: Path, tag: str, ref: str, tmp_path: Path) -> dict[str, Any]:
    env = {**os.environ, "IMAGEFS_RUN_DIR": str(tmp_path / "run")}
    env.pop("IMAGEFS_CONFIG", None)
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "convert", f"oci:{layout}:{tag}", ref, "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _image_mount_stats(lab: ContainerdLab) -> dict[str, Any]:
    """`imagefs stats` of the snapshotter's (only) image mount."""
    mounts = [p for p in (lab.snapshotter.root / "images").iterdir() if p.is_dir()]
    assert len(mounts) == 1, mounts
    env = {**os.environ, "IMAGEFS_RUN_DIR": str(lab.snapshotter.root / "run")}
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "stats", str(mounts[0]), "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    stats: dict[str, Any] = json.loads(out.stdout)
    return stats


def test_cri_runs_an_imagefs_image_lazily(
    lab: ContainerdLab, big_layout: Path, tmp_path: Path
) -> None:
    """An imagefs image through CRI: the snapshotter provides every layer at once (containerd
    fetches no layer blob), and the container reads its files through the lazy mount."""
    from fuse_mount.snapshotter.remote import LABEL_REMOTE_KIND
    from tests.integration.registry_fixture import matching

    ref = f"{lab.registry.host}/imagefs/busybox:lazy"
    converted = _convert(big_layout, "big", ref, tmp_path)
    manifest_digest = converted["manifest_digest"]
    seen = len(lab.registry.log.splitlines())
    log_dir = tmp_path / "pod-logs"
    with CriClient(lab.address) as cri:
        try:
            cri.pull(ref)
            remote = [s for s in lab.snapshotter.snapshots() if s.labels.get(LABEL_REMOTE_KIND)]
            kinds = sorted(s.labels[LABEL_REMOTE_KIND] for s in remote)
            assert kinds[-1] == "bootstrap" and set(kinds[:-1]) <= {"blob"}, kinds
            with cri.pod("imagefs-lazy", log_dir) as pod_id:
                ctr = cri.create(pod_id, None, "lazy", ref, ["cat", "/etc/hello.txt"], "lazy.log")
                cri.start(ctr)
                exit_code = cri.wait_exit(ctr, timeout_s=60)
                text = cri.logs(log_dir / "lazy.log")
                assert exit_code == 0, text
                assert text == HELLO
                stats = _image_mount_stats(lab)
                cri.stop_container(ctr)
                cri.remove_container(ctr)
        except Exception as exc:
            exc.add_note(_diagnose(lab))
            raise
    log = lab.registry.completed(seen)
    manifests = matching(log, "GET", f"/v2/imagefs/busybox/manifests/{manifest_digest}")
    manifests += matching(log, "GET", "/v2/imagefs/busybox/manifests/lazy")
    assert manifests  # containerd resolved the image
    blob_gets = matching(log, "GET", "/v2/imagefs/busybox/blobs/sha256:")
    by_containerd = [ln for ln in blob_gets if "useragent=imagefs/" not in ln]
    by_imagefs = [ln for ln in blob_gets if "useragent=imagefs/" in ln]
    # containerd fetched the config only; every layer byte came through imagefs's mount
    assert len(by_containerd) <= 1, by_containerd
    assert by_imagefs and any("status=206" in ln for ln in by_imagefs)
    # far less than the image: busybox and the file, not the 24 MiB nobody read
    assert 0 < stats["bytes_fetched"] < converted["bytes_stored"] / 8, stats

    # removing the image lets containerd's GC remove its snapshots: the mount goes too
    with CriClient(lab.address) as cri:
        cri.remove_image(ref)
    lab.ctr("-n", "k8s.io", "leases", "ls")  # (any call; GC runs asynchronously)
    images = lab.snapshotter.root / "images"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(p.is_mount() for p in images.iterdir()):
        time.sleep(0.2)
    assert not any(p.is_mount() for p in images.iterdir()), list(images.iterdir())
    assert not [s for s in lab.snapshotter.snapshots() if s.labels.get(LABEL_REMOTE_KIND)]


@pytest.mark.reliability(
    "crash",
    "kill -9 of the snapshotter while a container runs",
    "the container keeps reading; after a restart a new container starts",
)
def test_containers_survive_a_snapshotter_crash(
    lab: ContainerdLab, big_layout: Path, tmp_path: Path
) -> None:
    """kill -9 the snapshotter while a container runs, start it again: the container keeps
    reading files, and a new container of the same image starts."""
    ref = f"{lab.registry.host}/imagefs/busybox:crash"
    _convert(big_layout, "big", ref, tmp_path)
    log_dir = tmp_path / "pod-logs"
    script = "cat /etc/hello.txt; sleep 3; cat /etc/hello.txt; head -c 1000 /data/big.bin | wc -c"
    with CriClient(lab.address) as cri:
        try:
            cri.pull(ref)
            with cri.pod("imagefs-crash", log_dir) as pod_id:
                reader = cri.create(pod_id, None, "reader", ref, ["sh", "-c", script], "r.log")
                cri.start(reader)
                time.sleep(1)
                assert cri.container_status(reader).state == "CONTAINER_RUNNING"
                old = lab.snapshotter.pid
                assert lab.snapshotter.kill() == -signal.SIGKILL
                lab.snapshotter.start()
                assert lab.snapshotter.pid != old
                assert cri.wait_exit(reader, timeout_s=60) == 0
                assert cri.logs(log_dir / "r.log") == HELLO + HELLO + "1000\n"
                again = cri.create(pod_id, None, "again", ref, ["cat", "/etc/hello.txt"], "a.log")
                cri.start(again)
                assert cri.wait_exit(again, timeout_s=60) == 0
                assert cri.logs(log_dir / "a.log") == HELLO
                for ctr in (reader, again):
                    cri.stop_container(ctr)
                    cri.remove_container(ctr)
        except Exception as exc:
            exc.add_note(_diagnose(lab))
            raise


@pytest.mark.reliability(
    "crash", "kill -9 of an image's mount process", "the next container gets a fresh mount"
)
def test_a_crashed_image_mount_is_mounted_again(
    lab: ContainerdLab, big_layout: Path, tmp_path: Path
) -> None:
    """kill -9 the process serving an image's lazy mount: the next container of the image
    gets a fresh mount (the dead one is detected by ENOTCONN and detached)."""
    ref = f"{lab.registry.host}/imagefs/busybox:remount"
    _convert(big_layout, "big", ref, tmp_path)
    log_dir = tmp_path / "pod-logs"
    with CriClient(lab.address) as cri:
        try:
            cri.pull(ref)
            with cri.pod("imagefs-remount", log_dir) as pod_id:
                first = cri.create(pod_id, None, "first", ref, ["cat", "/etc/hello.txt"], "1.log")
                cri.start(first)
                assert cri.wait_exit(first, timeout_s=60) == 0
                dead = _image_mount_stats(lab)["pid"]
                os.kill(dead, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and Path(f"/proc/{dead}").exists():
                    time.sleep(0.05)
                second = cri.create(pod_id, None, "second", ref, ["cat", "/etc/hello.txt"], "2.log")
                cri.start(second)
                assert cri.wait_exit(second, timeout_s=60) == 0
                assert cri.logs(log_dir / "2.log") == HELLO
                assert _image_mount_stats(lab)["pid"] != dead  # a new mount process
                for ctr in (first, second):
                    cri.stop_container(ctr)
                    cri.remove_container(ctr)
        except Exception as exc:
            exc.add_note(_diagnose(lab))
            raise
