"""The imagefs snapshotter as containerd's `imagefs` proxy plugin, with plain OCI images:
containerd applies the layer tars into the mounts we return, runs a container on them,
garbage-collects through us, and keeps working across a snapshotter restart."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from fuse_mount.snapshotter.state import Kind, Snapshot
from tests.integration.containerd_fixture import (
    HELLO,
    ContainerdLab,
    chain_ids,
    push,
    wait_until,
)

pytestmark = [pytest.mark.integration]


def _committed(lab: ContainerdLab) -> list[Snapshot]:
    return [s for s in lab.snapshotter.snapshots() if s.kind is Kind.COMMITTED]


def _pull(lab: ContainerdLab, layout: Path) -> tuple[str, list[str]]:
    ref = push(layout, "busybox", lab.registry, "imagefs/busybox")
    lab.ctr("image", "pull", "--plain-http", "--snapshotter", "imagefs", ref)
    return ref, chain_ids(layout, "busybox")


def _check_layers(lab: ContainerdLab, chains: list[str]) -> list[Snapshot]:
    """The snapshotter holds one committed snapshot per layer, named `<ns>/<n>/<chainID>`,
    stacked in order, with containerd's layer tars applied into their fs dirs."""
    committed = _committed(lab)
    by_chain = {s.key.rsplit("/", 1)[-1]: s for s in committed}
    assert sorted(by_chain) == sorted(chains), [s.key for s in committed]
    bottom, top = by_chain[chains[0]], by_chain[chains[1]]
    assert all(re.fullmatch(r"default/\d+/sha256:[0-9a-f]{64}", s.key) for s in committed)
    assert bottom.parent == ""
    assert top.parent == bottom.key
    root = lab.snapshotter.root / "snapshots"
    assert (root / bottom.id / "fs" / "bin" / "busybox").is_file()
    assert os.readlink(root / bottom.id / "fs" / "bin" / "cat") == "busybox"
    assert not (root / bottom.id / "fs" / "etc" / "hello.txt").exists()
    assert (root / top.id / "fs" / "etc" / "hello.txt").read_text() == HELLO
    assert not (root / top.id / "fs" / "bin" / "busybox").exists()  # only the diff
    # containerd sees the same, through the proxy
    listed = lab.ctr("snapshots", "--snapshotter", "imagefs", "ls").stdout
    for chain in chains:
        assert re.search(rf"^{re.escape(chain)}\s+\S*\s+Committed", listed, re.M), listed
    return [bottom, top]


def _no_active(lab: ContainerdLab) -> bool:
    return not any(s.kind is not Kind.COMMITTED for s in lab.snapshotter.snapshots())


def test_pull_run_and_garbage_collect(lab: ContainerdLab, busybox_layout: Path) -> None:
    plugins = lab.ctr("plugins", "ls").stdout
    assert re.search(r"io\.containerd\.snapshotter\.v1\s+imagefs\s+-\s+ok", plugins), plugins

    ref, chains = _pull(lab, busybox_layout)
    layers = _check_layers(lab, chains)

    # Update through containerd: it forwards `containerd.io/snapshot/` labels as `labels.K`
    snaps = ("snapshots", "--snapshotter", "imagefs")
    lab.ctr(*snaps, "label", chains[1], "containerd.io/snapshot/imagefs.test=1", "other=2")
    (top,) = [s for s in lab.snapshotter.snapshots() if s.key == layers[1].key]
    assert top.labels.get("containerd.io/snapshot/imagefs.test") == "1"
    assert "other" not in top.labels
    # Usage through containerd: our walk of layer 1 (busybox and its applet links)
    usage = lab.ctr(*snaps, "usage", chains[0]).stdout.splitlines()
    assert len(usage) == 2, usage
    inodes = int(usage[1].split()[-1])
    assert inodes > 100, usage

    res = lab.run(ref, "hello1", "cat", "/etc/hello.txt")
    assert res.stdout == HELLO
    log = lab.snapshotter.log_text()
    # the container's rw snapshot was prepared by us on the top layer, as an overlay
    assert re.search(rf"Prepare key='default/\d+/hello1' parent='{layers[1].key}'", log), log
    assert "Mounts key='default/" in log

    # `--rm` deletes the container; its rw snapshot goes at the next (asynchronous) GC
    wait_until("the container's snapshot to be removed", lambda: _no_active(lab), 30)
    assert sorted(s.key for s in _committed(lab)) == sorted(s.key for s in layers)

    lab.ctr("image", "rm", "--sync", ref)
    assert lab.ctr("image", "ls", "-q").stdout.strip() == ""
    wait_until("the layers to be removed", lambda: not lab.snapshotter.snapshots(), 30)
    assert list((lab.snapshotter.root / "snapshots").iterdir()) == []
    log = lab.snapshotter.log_text()
    for layer in layers:
        assert f"Remove key='{layer.key}' ok" in log
    assert "Cleanup" in log
    assert lab.ctr("snapshots", "--snapshotter", "imagefs", "ls").stdout.count("\n") <= 1


def test_restart_keeps_snapshots(lab: ContainerdLab, busybox_layout: Path) -> None:
    ref, chains = _pull(lab, busybox_layout)
    assert lab.run(ref, "first", "cat", "/etc/hello.txt").stdout == HELLO
    wait_until("the first container's snapshot to be removed", lambda: _no_active(lab), 30)
    before = lab.snapshotter.snapshots()
    first_pid = lab.snapshotter.pid

    assert lab.snapshotter.stop() == 0  # SIGTERM: a clean exit
    assert not lab.snapshotter.socket.exists()
    lab.snapshotter.start()
    assert lab.snapshotter.pid != first_pid
    assert lab.snapshotter.snapshots() == before
    _check_layers(lab, chains)

    # containerd reconnects by itself (gRPC backoff: a call in the first moments after the
    # restart may still fail, so wait until a backend call - Usage - gets through)
    usage = ("snapshots", "--snapshotter", "imagefs", "usage", chains[0])
    wait_until(
        "containerd to reach the restarted snapshotter",
        lambda: lab.ctr(*usage, check=False, timeout=20).returncode == 0,
        30,
    )
    # the same image runs on the persisted layers
    mark = len(lab.snapshotter.log_text())
    res = lab.run(ref, "second", "sh", "-c", "cat /etc/hello.txt; ls /bin/busybox")
    assert res.stdout == HELLO + "/bin/busybox\n"
    after_restart = lab.snapshotter.log_text()[mark:]
    assert re.search(r"Prepare key='default/\d+/second'", after_restart), after_restart
    # no layer was pulled again: the committed layers are the ones from before the restart
    assert sorted(s.key for s in _committed(lab)) == sorted(
        s.key for s in before if s.kind is Kind.COMMITTED
    )
