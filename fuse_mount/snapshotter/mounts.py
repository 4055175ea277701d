"""Mount computation: which mounts containerd gets for a snapshot. Pure functions, as
containerd's overlayfs snapshotter computes them (snapshots/overlay/overlay.go in 1.6):

- active, no parent: a read-write bind of its `fs` dir;
- active with parents: overlay `index=off,workdir=W,upperdir=U,lowerdir=L1:L2:...` with the
  parents' lower dirs nearest first;
- view with one parent: a read-only bind of the parent's lower dir;
- view with more ancestors: an overlay with only `lowerdir` (read-only by construction);
- view with no parent: a read-only bind of its own (empty) `fs` dir.

The lower dir of a committed snapshot is its `fs` dir, or, for a remote layer, whatever
directory the remote-layer hook says (a lazily mounted imagefs tree); callers pass the
resolved paths, so this module never looks at the disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fuse_mount.snapshotter.state import Kind


@dataclass(frozen=True, slots=True)
class Mount:
    """One mount as containerd's `types.Mount` carries it."""

    type: str
    source: str
    options: tuple[str, ...] = field(default_factory=tuple)


def compute_mounts(kind: Kind, fs_dir: Path, work_dir: Path, lowers: Sequence[Path]) -> list[Mount]:
    """The mounts for a snapshot of `kind` whose own dirs are `fs_dir`/`work_dir` and whose
    ancestors' lower dirs are `lowers`, nearest first."""
    if kind is Kind.COMMITTED:
        raise ValueError("a committed snapshot has no mounts")
    if not lowers:
        ro = "ro" if kind is Kind.VIEW else "rw"
        return [Mount("bind", str(fs_dir), (ro, "rbind"))]
    if kind is Kind.ACTIVE:
        options = (
            "index=off",
            f"workdir={work_dir}",
            f"upperdir={fs_dir}",
            "lowerdir=" + ":".join(str(p) for p in lowers),
        )
        return [Mount("overlay", "overlay", options)]
    if len(lowers) == 1:
        return [Mount("bind", str(lowers[0]), ("ro", "rbind"))]
    return [Mount("overlay", "overlay", ("lowerdir=" + ":".join(str(p) for p in lowers),))]
