"""Remote layers: which Prepare labels describe an imagefs layer, and the one-mount-per-image
manager (with fake spawners; the real mount is exercised by the containerd tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuse_mount.snapshotter.remote import (
    LABEL_CRI_MANIFEST,
    LABEL_CRI_REF,
    LABEL_IMAGEFS_MANIFEST,
    LABEL_IMAGEFS_REF,
    LABEL_TARGET,
    ImageMounts,
    RemoteLayer,
    classify,
    remote_image,
)
from imagefs.errors import MountError
from imagefs.format import ANNOTATION_LAYER_BLOB, ANNOTATION_LAYER_BOOTSTRAP

DIGEST = "sha256:" + "ab" * 32


def cri(**extra: str) -> dict[str, str]:
    return {
        LABEL_TARGET: "sha256:" + "cd" * 32,
        LABEL_CRI_REF: "127.0.0.1:5000/apps/web:v1",
        LABEL_CRI_MANIFEST: DIGEST,
        **extra,
    }


def test_imagefs_layers_through_cri_labels() -> None:
    blob = classify(cri(**{ANNOTATION_LAYER_BLOB: "true"}))
    top = classify(cri(**{ANNOTATION_LAYER_BOOTSTRAP: "true"}))
    assert blob == RemoteLayer("sha256:" + "cd" * 32, f"127.0.0.1:5000/apps/web@{DIGEST}", False)
    assert top is not None and top.bootstrap and top.image == blob.image
    assert remote_image(top.labels()) == top.image
    assert remote_image(blob.labels()) is None  # only the top layer stands for the tree


def test_imagefs_pull_labels_win_over_cri_ones() -> None:
    labels = cri(
        **{
            ANNOTATION_LAYER_BOOTSTRAP: "true",
            LABEL_IMAGEFS_REF: "docker://reg:5000/x/y:tag",
            LABEL_IMAGEFS_MANIFEST: "sha256:" + "ef" * 32,
        }
    )
    layer = classify(labels)
    assert layer is not None and layer.image == "reg:5000/x/y@sha256:" + "ef" * 32


@pytest.mark.parametrize(
    "labels",
    [
        {},  # `ctr image pull`: no labels at all
        cri(),  # a plain image's layer under CRI
        {ANNOTATION_LAYER_BLOB: "true", LABEL_CRI_REF: "r/x:1", LABEL_CRI_MANIFEST: DIGEST},
        cri(**{ANNOTATION_LAYER_BLOB: "true", LABEL_CRI_MANIFEST: "not-a-digest"}),
        {LABEL_TARGET: "t", ANNOTATION_LAYER_BLOB: "true"},  # no image to mount
    ],
)
def test_ordinary_layers_are_not_remote(labels: dict[str, str]) -> None:
    assert classify(labels) is None


def test_one_mount_per_image_and_remount_when_dead(tmp_path: Path) -> None:
    alive: set[Path] = set()
    spawned: list[tuple[str, Path]] = []

    def spawn(image: str, path: Path) -> None:
        spawned.append((image, path))
        alive.add(path)

    mounts = ImageMounts(tmp_path, spawn, healthy=lambda p: p in alive)
    image = f"reg/x@{DIGEST}"
    first = mounts.ensure(image)
    assert mounts.ensure(image) == first and len(spawned) == 1  # shared
    alive.clear()  # its process died
    assert mounts.ensure(image) == first and len(spawned) == 2  # mounted again
    other = mounts.ensure("reg/y@sha256:" + "01" * 32)
    assert other != first and first.parent == other.parent == tmp_path


def test_a_mount_that_does_not_come_up_is_an_error(tmp_path: Path) -> None:
    mounts = ImageMounts(tmp_path, lambda image, path: None, healthy=lambda p: False)
    with pytest.raises(MountError, match="did not come up"):
        mounts.ensure(f"reg/x@{DIGEST}")
