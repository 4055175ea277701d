"""The CRI v1 client (tests/support/cri.py) against the lab's containerd 1.6, whose CRI plugin
pulls through the imagefs snapshotter: Version, Status, PullImage, a host-network pod, a
container that cats the busybox image's layer-2 file, its exit code and its CRI log."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fuse_mount.snapshotter.state import Kind
from tests.integration.containerd_fixture import (
    HELLO,
    ContainerdLab,
    build_busybox_layout,
    chain_ids,
    push,
    run_containerd,
)
from tests.integration.registry_fixture import RunningRegistry, run_registry
from tests.support.cri import CriClient

pytestmark = [pytest.mark.integration]

SANDBOX_REPO, SANDBOX_TAG = "imagefs/pause", "1"  # the fixture's CRI sandbox_image
REF_NAME = "org.opencontainers.image.ref.name"


@pytest.fixture(scope="module")
def busybox_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_busybox_layout(tmp_path_factory.mktemp("busybox"))


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
