"""`copy_image` from an OCI layout into layout targets: byte-identical, skips what the target
holds, and leaves nothing behind when it fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagefs.copy import copy_image
from imagefs.errors import NotFoundError
from imagefs.image import LayoutImageStore
from imagefs.oci import LayoutRef, OciLayout
from imagefs.target import layout_target
from tests.support.layers import LayerBuilder
from tests.support.oci import LayerBlob, write_oci_layout


def _source(tmp_path: Path) -> LayoutImageStore:
    layers = [
        LayerBlob.from_tar(LayerBuilder().file("a", b"alpha" * 100).tar()),
        LayerBlob.from_tar(LayerBuilder().file("b", b"beta" * 100).tar()),
    ]
    write_oci_layout(tmp_path / "src", layers, tag="v1")
    return LayoutImageStore(LayoutRef(tmp_path / "src", "v1"))


def test_copy_is_byte_identical_and_skips_present_blobs(tmp_path: Path) -> None:
    store = _source(tmp_path)
    src_desc, manifest = store.resolve_manifest()
    with layout_target(tmp_path / "dst", "copied") as target:
        first = copy_image(store, target)
    assert first.manifest_digest == src_desc.digest
    assert first.blobs_copied == 1 + len(manifest.layers) and first.blobs_skipped == 0
    out = OciLayout.open(tmp_path / "dst")
    desc, _ = out.resolve_manifest("copied")
    assert desc.digest == src_desc.digest
    for blob in (manifest.config, *manifest.layers):
        assert out.read_blob(blob.digest) == store.read_blob(blob.digest)
    with layout_target(tmp_path / "dst", "again") as target:
        second = copy_image(store, target)
    assert second.blobs_copied == 0 and second.blobs_skipped == 1 + len(manifest.layers)


def test_a_failed_copy_leaves_no_target(tmp_path: Path) -> None:
    store = _source(tmp_path)
    _, manifest = store.resolve_manifest()
    store.layout.blob_path(manifest.layers[-1].digest).unlink()  # the source is broken
    with pytest.raises(NotFoundError), layout_target(tmp_path / "dst", "x") as target:
        copy_image(store, target)
    assert not (tmp_path / "dst").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no temp dir left either
