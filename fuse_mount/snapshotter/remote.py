"""Remote (imagefs) layers for the snapshotter: recognising the layers of an imagefs image
in the labels containerd passes to Prepare, and the one lazy FUSE mount per image that the
overlays of its containers use as their lower directory.

Mounts run in their own detached processes (`imagefs mount`), so they outlive a restart or
a crash of the snapshotter; a mount whose process died is detected (ENOTCONN) and mounted
again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fuse_mount.mount import is_mounted
from fuse_mount.snapshotter.state import MetadataStore, Snapshot, SnapshotExists
from imagefs.digest import Digest
from imagefs.errors import FormatError, MountError
from imagefs.format import ANNOTATION_LAYER_BLOB, ANNOTATION_LAYER_BOOTSTRAP

LABEL_TARGET = "containerd.io/snapshot.ref"
LABEL_CRI_REF = "containerd.io/snapshot/cri.image-ref"
LABEL_CRI_MANIFEST = "containerd.io/snapshot/cri.manifest-digest"
LABEL_IMAGEFS_REF = "containerd.io/snapshot/imagefs.ref"  # set by `imagefs pull`
LABEL_IMAGEFS_MANIFEST = "containerd.io/snapshot/imagefs.manifest"
# on the committed snapshots the snapshotter creates for remote layers
LABEL_REMOTE_IMAGE = "containerd.io/snapshot/imagefs.image"  # REPO@DIGEST of the image
LABEL_REMOTE_KIND = "containerd.io/snapshot/imagefs.layer"  # "blob" or "bootstrap"


@dataclass(frozen=True, slots=True)
class RemoteLayer:
    """A layer of an imagefs image that containerd asks the snapshotter to provide."""

    chain_id: str  # the target snapshot name containerd will look for
    image: str  # the image by digest: HOST/REPO@sha256:...
    bootstrap: bool  # the image's last layer: its snapshot is the merged tree

    def labels(self) -> dict[str, str]:
        """Labels of the committed snapshot that stands for this layer."""
        return {
            LABEL_TARGET: self.chain_id,
            LABEL_REMOTE_IMAGE: self.image,
            LABEL_REMOTE_KIND: "bootstrap" if self.bootstrap else "blob",
        }


def _name(reference: str) -> str:
    """`HOST/REPO` of a reference (tag and digest dropped)."""
    name = reference.removeprefix("docker://").split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def classify(labels: Mapping[str, str]) -> RemoteLayer | None:
    """The remote layer a Prepare's labels describe, or None for an ordinary layer (which
    containerd then applies itself). Needs the target chain ID, one of imagefs's layer
    annotations (forwarded as labels), and the image reference and manifest digest (from
    CRI's labels or those `imagefs pull` sets)."""
    target = labels.get(LABEL_TARGET)
    if not target:
        return None
    bootstrap = labels.get(ANNOTATION_LAYER_BOOTSTRAP) == "true"
    if not bootstrap and labels.get(ANNOTATION_LAYER_BLOB) != "true":
        return None
    reference = labels.get(LABEL_IMAGEFS_REF) or labels.get(LABEL_CRI_REF)
    manifest = labels.get(LABEL_IMAGEFS_MANIFEST) or labels.get(LABEL_CRI_MANIFEST)
    if not reference or not manifest:
        return None
    try:
        digest = Digest.parse(manifest)
    except FormatError:
        return None
    return RemoteLayer(target, f"{_name(reference)}@{digest}", bootstrap)


def remote_image(labels: Mapping[str, str]) -> str | None:
    """The image a committed snapshot stands for, when it is an imagefs image's top layer."""
    if labels.get(LABEL_REMOTE_KIND) != "bootstrap":
        return None
    return labels.get(LABEL_REMOTE_IMAGE)


def mount_healthy(path: Path) -> bool:
    """Mounted and answering (a FUSE mount whose process died fails with ENOTCONN). statfs,
    unlike stat, always reaches the serving process: attributes may be cached for a day."""
    if not is_mounted(path):
        return False
    try:
        os.statvfs(path)
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO):
            return False
        raise
    return True


Spawner = Callable[[str, Path], None]
# what the snapshotter asks of its mounts (a developer's `imagefs mount` gets none of it)
SNAPSHOTTER_MOUNT_ARGS = ("--allow-other", "--suid", "--dev")


def spawn_mount(
    argv_prefix: list[str],
    env: Mapping[str, str] | None = None,
    timeout_s: float = 120,
    mount_args: tuple[str, ...] = (),
) -> Spawner:
    """A spawner running `imagefs mount [MOUNT_ARGS] IMAGE PATH` (which detaches the serving
    process and returns once the mount is up)."""

    def spawn(image: str, path: Path) -> None:
        res = subprocess.run(
            [*argv_prefix, "mount", *mount_args, image, str(path)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, **(env or {})},
            check=False,
        )
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or ["mount failed"])[-1]
            raise MountError(f"cannot mount {image}: {last.removeprefix('imagefs: ')}")

    return spawn


def default_spawner(
    env: Mapping[str, str] | None = None, config_file: Path | None = None
) -> Spawner:
    """`imagefs mount --allow-other --suid --dev` (container processes may run as any user
    and need their image's set-user-ID programs and device files) with this interpreter,
    the snapshotter's config file and environment."""
    prefix = [sys.executable, "-m", "cli.main"]
    if config_file is not None:
        prefix += ["--config", str(config_file)]
    return spawn_mount(prefix, env, mount_args=SNAPSHOTTER_MOUNT_ARGS)


class ImageMounts:
    """One lazy mount per image under `root`, shared by every container of that image."""

    def __init__(
        self,
        root: Path,
        spawn: Spawner,
        healthy: Callable[[Path], bool] = mount_healthy,
        unmount: Callable[[Path], None] | None = None,
    ) -> None:
        self.root = root
        self._spawn = spawn
        self._healthy = healthy
        self._unmount = unmount or _lazy_unmount
        self._lock = threading.Lock()

    def path_for(self, image: str) -> Path:
        digest = Digest.parse(image.rsplit("@", 1)[1])
        return self.root / digest.hex[:32]

    def ensure(self, image: str) -> Path:
        """The mount of `image`, mounting it (again) when it is absent or dead."""
        path = self.path_for(image)
        with self._lock:
            if self._healthy(path):
                return path
            if is_mounted(path):  # its process died: detach the corpse, mount anew
                self._unmount(path)
            path.mkdir(parents=True, exist_ok=True)
            self._spawn(image, path)
            if not self._healthy(path):
                raise MountError(f"the mount of {image} at {path} did not come up")
            return path

    def release(self, image: str) -> None:
        """Unmount `image` (its last container is gone)."""
        path = self.path_for(image)
        with self._lock:
            if is_mounted(path):
                self._unmount(path)
            with contextlib.suppress(OSError):
                path.rmdir()


def _lazy_unmount(path: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, check=False)


class ImagefsRemoteLayers:
    """The snapshotter's `RemoteLayers` for imagefs images: every layer of an imagefs image
    becomes a committed snapshot at once (containerd fetches and applies nothing), and the
    image's top layer reads through the image's lazy mount."""

    def __init__(self, mounts: ImageMounts) -> None:
        self.mounts = mounts

    def prepare(
        self, store: MetadataStore, key: str, parent: str, labels: Mapping[str, str]
    ) -> Snapshot | None:
        layer = classify(labels)
        if layer is None:
            return None
        # named by chain ID, like stargz: one snapshot per layer, shared by namespaces
        try:
            return store.add_committed(layer.chain_id, parent, layer.labels())
        except SnapshotExists:
            existing = store.get(layer.chain_id)
            return existing if existing.parent == parent else None

    def lower_dir(self, snap: Snapshot) -> Path | None:
        image = remote_image(snap.labels)
        return None if image is None else self.mounts.ensure(image)

    def removed(self, snap: Snapshot) -> None:
        image = remote_image(snap.labels)
        if image is not None:
            self.mounts.release(image)
