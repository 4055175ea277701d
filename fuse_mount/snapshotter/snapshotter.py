"""The snapshotter's operations: the metadata store plus the snapshot directories
(ROOT/snapshots/<id>/{fs,work}), behaving like containerd's overlayfs snapshotter.

Remote layers plug in through `RemoteLayers`: before a normal Prepare the hook may create a
committed snapshot itself (a lazily mounted imagefs layer) and the Prepare then answers
ALREADY_EXISTS, which tells containerd the layer is there; and when mounts are computed the
hook may name another lower directory for a committed snapshot (its FUSE mount point).
Without a hook (`NoRemoteLayers`) every image takes the ordinary overlay path.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fuse_mount.snapshotter.mounts import Mount, compute_mounts
from fuse_mount.snapshotter.state import (
    Kind,
    MetadataStore,
    Snapshot,
    SnapshotExists,
    SnapshotInvalid,
    StoreError,
)

log = logging.getLogger(__name__)

SNAPSHOTS_DIR = "snapshots"


class RemoteLayers(Protocol):
    """Where remote (lazily fetched) layers hook into the snapshotter."""

    def prepare(
        self, store: MetadataStore, key: str, parent: str, labels: Mapping[str, str]
    ) -> Snapshot | None:
        """Called first by every Prepare. Return None for the ordinary path. To provide the
        layer remotely, create a committed snapshot (`store.add_committed`, any name, on
        `parent`, labels including `containerd.io/snapshot.ref` = the target chain ID) and
        return it: Prepare then fails with ALREADY_EXISTS and containerd adopts it. Only do
        so when the target label is present (`ctr image pull` sends none and would loop)."""
        ...

    def lower_dir(self, snap: Snapshot) -> Path | None:
        """The lower directory of committed `snap` if it is a remote layer whose content
        lives elsewhere (the image's lazy FUSE mount, mounted again if it died), else None
        (its own, possibly empty, fs dir). Called for every Mounts/Prepare/View."""
        ...

    def removed(self, snap: Snapshot) -> None:
        """`snap` was removed: release what `prepare` set up for it (unmount, ...)."""
        ...


class NoRemoteLayers:
    """Every layer is applied by containerd into the mounts we return."""

    def prepare(
        self, store: MetadataStore, key: str, parent: str, labels: Mapping[str, str]
    ) -> Snapshot | None:
        return None

    def lower_dir(self, snap: Snapshot) -> Path | None:
        return None

    def removed(self, snap: Snapshot) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Usage:
    size_bytes: int
    inodes: int


def disk_usage(path: Path) -> Usage:
    """Like containerd's fs.DiskUsage: allocated bytes (st_blocks * 512) and inodes, each
    inode counted once however many links it has; the tree is not left (no symlinks)."""
    seen: set[tuple[int, int]] = set()
    size = 0
    stack = [str(path)]
    try:
        root = os.lstat(path)
    except FileNotFoundError:
        return Usage(0, 0)
    seen.add((root.st_dev, root.st_ino))
    size += root.st_blocks * 512
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            ino = (st.st_dev, st.st_ino)
            if ino not in seen:
                seen.add(ino)
                size += st.st_blocks * 512
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
    return Usage(size, len(seen))


class Snapshotter:
    """containerd's snapshotter operations over one root directory."""

    def __init__(self, root: Path, remote: RemoteLayers | None = None) -> None:
        self.root = root
        self.remote: RemoteLayers = remote or NoRemoteLayers()
        try:
            (root / SNAPSHOTS_DIR).mkdir(parents=True, exist_ok=True)
            os.chmod(root, 0o700)
        except OSError as exc:
            raise StoreError(f"cannot create snapshotter root {root}: {exc}") from exc
        self.store = MetadataStore(root)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ layout

    def snapshot_dir(self, snap: Snapshot) -> Path:
        return self.root / SNAPSHOTS_DIR / snap.id

    def fs_dir(self, snap: Snapshot) -> Path:
        return self.snapshot_dir(snap) / "fs"

    def work_dir(self, snap: Snapshot) -> Path:
        return self.snapshot_dir(snap) / "work"

    def lower_dir(self, snap: Snapshot) -> Path:
        return self.remote.lower_dir(snap) or self.fs_dir(snap)

    # ------------------------------------------------------------------ operations

    def _create(self, kind: Kind, key: str, parent: str, labels: Mapping[str, str]) -> list[Mount]:
        with self._lock:
            if kind is Kind.ACTIVE:
                made = self.remote.prepare(self.store, key, parent, labels)
                if made is not None:
                    # an empty fs dir: the lower dir of a remote layer the hook does not
                    # redirect (e.g. a data-only layer under the image's merged tree)
                    self.fs_dir(made).mkdir(parents=True, exist_ok=True, mode=0o755)
                    raise SnapshotExists(
                        f"target snapshot {made.key!r} already exists (remote layer)"
                    )
            snap = self.store.create(key, parent, kind, labels)
            try:
                self.fs_dir(snap).mkdir(parents=True, mode=0o755)
                if kind is Kind.ACTIVE:
                    self.work_dir(snap).mkdir(mode=0o711)
            except OSError as exc:
                self.store.remove(key)
                shutil.rmtree(self.snapshot_dir(snap), ignore_errors=True)
                raise StoreError(f"cannot create the directories of {key!r}: {exc}") from exc
            return self._mounts(snap)

    def prepare(self, key: str, parent: str, labels: Mapping[str, str]) -> list[Mount]:
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(self, key: str, parent: str, labels: Mapping[str, str]) -> list[Mount]:
        return self._create(Kind.VIEW, key, parent, labels)

    def _mounts(self, snap: Snapshot) -> list[Mount]:
        if snap.kind is Kind.COMMITTED:
            raise SnapshotInvalid(f"snapshot {snap.key!r} is committed and has no mounts")
        lowers = [self.lower_dir(p) for p in self.store.chain(snap.key)]
        return compute_mounts(snap.kind, self.fs_dir(snap), self.work_dir(snap), lowers)

    def mounts(self, key: str) -> list[Mount]:
        return self._mounts(self.store.get(key))

    def commit(self, name: str, key: str, labels: Mapping[str, str]) -> Snapshot:
        with self._lock:
            snap = self.store.commit(name, key, labels)
            # the work dir of a committed snapshot is never used again
            shutil.rmtree(self.work_dir(snap), ignore_errors=True)
            return snap

    def remove(self, key: str) -> Snapshot:
        with self._lock:
            snap = self.store.remove(key)
            try:
                self.remote.removed(snap)
            finally:
                shutil.rmtree(self.snapshot_dir(snap), ignore_errors=True)
            return snap

    def stat(self, key: str) -> Snapshot:
        return self.store.get(key)

    def update(self, key: str, labels: Mapping[str, str], paths: Iterable[str]) -> Snapshot:
        with self._lock:
            return self.store.update(key, labels, paths)

    def snapshots(self) -> list[Snapshot]:
        return self.store.snapshots()

    def usage(self, key: str) -> Usage:
        snap = self.store.get(key)
        if self.remote.lower_dir(snap) is not None:
            return Usage(0, 0)  # a remote layer holds nothing on the local disk
        return disk_usage(self.fs_dir(snap))

    def cleanup(self) -> list[str]:
        """Delete snapshot directories the store no longer knows (left by a crash between
        a removal and its rmtree). Returns the ids removed."""
        with self._lock:
            known = self.store.ids()
            removed = []
            for entry in sorted(os.scandir(self.root / SNAPSHOTS_DIR), key=lambda e: e.name):
                if entry.name not in known:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed.append(entry.name)
            if removed:
                log.info("cleanup removed orphan snapshot dirs %s", removed)
            return removed
