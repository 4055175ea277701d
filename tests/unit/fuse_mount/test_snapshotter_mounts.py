"""Mount computation, as containerd's overlayfs snapshotter does it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuse_mount.snapshotter.mounts import Mount, compute_mounts
from fuse_mount.snapshotter.state import Kind

FS, WORK = Path("/r/snapshots/9/fs"), Path("/r/snapshots/9/work")
L1, L2, L3 = (Path(f"/r/snapshots/{i}/fs") for i in (1, 2, 3))


def test_active_without_parent_is_a_rw_bind() -> None:
    assert compute_mounts(Kind.ACTIVE, FS, WORK, []) == [Mount("bind", str(FS), ("rw", "rbind"))]


def test_active_with_parents_is_an_overlay_nearest_first() -> None:
    (m,) = compute_mounts(Kind.ACTIVE, FS, WORK, [L3, L2, L1])
    assert m.type == "overlay" and m.source == "overlay"
    assert m.options == (
        "index=off",
        f"workdir={WORK}",
        f"upperdir={FS}",
        f"lowerdir={L3}:{L2}:{L1}",
    )


def test_active_with_one_parent() -> None:
    (m,) = compute_mounts(Kind.ACTIVE, FS, WORK, [L1])
    assert m.options[-1] == f"lowerdir={L1}"


def test_view_of_one_parent_is_a_ro_bind_of_it() -> None:
    assert compute_mounts(Kind.VIEW, FS, WORK, [L1]) == [Mount("bind", str(L1), ("ro", "rbind"))]


def test_view_of_several_is_a_lowerdir_only_overlay() -> None:
    (m,) = compute_mounts(Kind.VIEW, FS, WORK, [L2, L1])
    assert m == Mount("overlay", "overlay", (f"lowerdir={L2}:{L1}",))
    assert not any(o.startswith(("upperdir", "workdir")) for o in m.options)


def test_view_without_parent_is_an_empty_ro_bind() -> None:
    assert compute_mounts(Kind.VIEW, FS, WORK, []) == [Mount("bind", str(FS), ("ro", "rbind"))]


def test_committed_has_no_mounts() -> None:
    with pytest.raises(ValueError):
        compute_mounts(Kind.COMMITTED, FS, WORK, [])


def test_remote_lower_dirs_are_used_as_given() -> None:
    fuse = Path("/var/lib/imagefs/mnt/abc")
    (m,) = compute_mounts(Kind.ACTIVE, FS, WORK, [fuse, L1])
    assert m.options[-1] == f"lowerdir={fuse}:{L1}"
