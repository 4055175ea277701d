"""The snapshotter's operations over a root dir: directories, removal, usage, cleanup, and
the remote-layer hook."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from fuse_mount.snapshotter.snapshotter import Snapshotter, disk_usage
from fuse_mount.snapshotter.state import (
    Kind,
    MetadataStore,
    Snapshot,
    SnapshotExists,
    SnapshotInvalid,
)


def _pull(sn: Snapshotter) -> tuple[Snapshot, Snapshot]:
    sn.prepare("x1", "", {})
    l1 = sn.commit("L1", "x1", {})
    sn.prepare("x2", "L1", {})
    l2 = sn.commit("L2", "x2", {})
    return l1, l2


def test_prepare_makes_dirs_and_mounts(tmp_path: Path) -> None:
    sn = Snapshotter(tmp_path)
    (m,) = sn.prepare("a", "", {})
    snap = sn.stat("a")
    assert (tmp_path / "snapshots" / snap.id / "fs").is_dir()
    assert (tmp_path / "snapshots" / snap.id / "work").is_dir()
    assert m.source == str(tmp_path / "snapshots" / snap.id / "fs")
    assert sn.mounts("a") == [m]


def test_stacked_mounts_point_at_parent_fs_dirs(tmp_path: Path) -> None:
    sn = Snapshotter(tmp_path)
    l1, l2 = _pull(sn)
    assert not (tmp_path / "snapshots" / l1.id / "work").exists()  # dropped at commit
    (m,) = sn.prepare("ctr", "L2", {})
    c = sn.stat("ctr")
    base = tmp_path / "snapshots"
    assert m.options == (
        "index=off",
        f"workdir={base / c.id / 'work'}",
        f"upperdir={base / c.id / 'fs'}",
        f"lowerdir={base / l2.id / 'fs'}:{base / l1.id / 'fs'}",
    )
    (v,) = sn.view("v", "L1", {})
    assert (v.type, v.source, v.options) == ("bind", str(base / l1.id / "fs"), ("ro", "rbind"))
    assert not (base / sn.stat("v").id / "work").exists()
    with pytest.raises(SnapshotInvalid):
        sn.mounts("L1")


def test_remove_deletes_dirs_and_cleanup_deletes_orphans(tmp_path: Path) -> None:
    sn = Snapshotter(tmp_path)
    l1, l2 = _pull(sn)
    sn.remove("L2")
    assert not (tmp_path / "snapshots" / l2.id).exists()
    (tmp_path / "snapshots" / "77" / "fs").mkdir(parents=True)  # left by a crash
    assert sn.cleanup() == ["77"]
    assert sorted(os.listdir(tmp_path / "snapshots")) == [l1.id]


def test_restart_sees_the_same_snapshots(tmp_path: Path) -> None:
    sn = Snapshotter(tmp_path)
    _pull(sn)
    sn.prepare("ctr", "L2", {"k": "v"})
    again = Snapshotter(tmp_path)
    assert again.snapshots() == sn.snapshots()
    assert again.mounts("ctr") == sn.mounts("ctr")


def test_usage_counts_blocks_and_inodes_once(tmp_path: Path) -> None:
    sn = Snapshotter(tmp_path)
    sn.prepare("a", "", {})
    fs = tmp_path / "snapshots" / sn.stat("a").id / "fs"
    (fs / "d").mkdir()
    (fs / "d" / "f").write_bytes(b"x" * 100_000)
    os.link(fs / "d" / "f", fs / "hard")
    (fs / "sym").symlink_to("/etc")  # not followed
    usage = sn.usage("a")
    assert usage.inodes == 4  # fs, d, f (= hard), sym
    assert 100_000 <= usage.size_bytes < 100_000 + 4 * 4096 + 65536
    assert disk_usage(tmp_path / "missing").inodes == 0


class FakeRemote:
    """A remote-layer hook: provides any layer whose Prepare carries a target ref."""

    def __init__(self, lower: Path) -> None:
        self.lower = lower
        self.released: list[str] = []

    def prepare(
        self, store: MetadataStore, key: str, parent: str, labels: Mapping[str, str]
    ) -> Snapshot | None:
        ref = labels.get("containerd.io/snapshot.ref")
        if ref is None:
            return None
        return store.add_committed(ref, parent, {"containerd.io/snapshot.ref": ref, "remote": "1"})

    def lower_dir(self, snap: Snapshot) -> Path | None:
        return self.lower / snap.key if snap.labels.get("remote") else None

    def removed(self, snap: Snapshot) -> None:
        self.released.append(snap.key)


def test_remote_layer_hook(tmp_path: Path) -> None:
    remote = FakeRemote(Path("/mnt/imagefs"))
    sn = Snapshotter(tmp_path / "root", remote)
    with pytest.raises(SnapshotExists):
        sn.prepare("ns/1/extract", "", {"containerd.io/snapshot.ref": "c1"})
    made = sn.stat("c1")
    assert made.kind is Kind.COMMITTED
    made_fs = tmp_path / "root" / "snapshots" / made.id / "fs"
    assert made_fs.is_dir() and not any(made_fs.iterdir())  # nothing local, a valid lower
    sn.prepare("plain", "", {})  # no target label: the ordinary path
    (m,) = sn.prepare("ctr", "c1", {})
    assert m.options[-1] == "lowerdir=/mnt/imagefs/c1"
    assert sn.usage("c1").size_bytes == 0
    sn.remove("ctr")
    sn.remove("c1")
    assert remote.released == ["ctr", "c1"]
