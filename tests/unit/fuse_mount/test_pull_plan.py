"""`imagefs pull`'s plan: chain IDs as the OCI spec defines them, and Prepare labels that the
snapshotter's `classify` recognises as remote imagefs layers."""

from __future__ import annotations

import hashlib
import json

import pytest

from fuse_mount.snapshotter.pull import chain_ids, pull_plan
from fuse_mount.snapshotter.remote import classify
from imagefs.digest import Digest
from imagefs.errors import FormatError
from imagefs.format import blob_descriptor, bootstrap_descriptor, build_manifest
from imagefs.oci import Descriptor


def test_chain_ids_follow_the_image_spec() -> None:
    a, b, c = ("sha256:" + ch * 64 for ch in "abc")
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == [a, ab, abc]
    assert chain_ids([]) == []


def test_plan_prepares_every_layer_as_a_remote_imagefs_layer() -> None:
    blobs = [blob_descriptor(Digest.of(b"blob %d" % i), 100 + i) for i in range(2)]
    boot = bootstrap_descriptor(b"bootstrap bytes")
    config = json.dumps(
        {"rootfs": {"type": "layers", "diff_ids": [str(d.digest) for d in (*blobs, boot)]}}
    ).encode()
    config_desc = Descriptor("application/vnd.oci.image.config.v1+json", Digest.of(config), 9)
    manifest = build_manifest(config_desc, blobs, boot, subject=None)
    digest = Digest.of(manifest.encode())
    plan = pull_plan("reg:5000/apps/web:v1", digest, manifest, config)
    chains = chain_ids([str(d.digest) for d in (*blobs, boot)])
    assert [p.chain_id for p in plan] == chains
    assert [p.parent for p in plan] == ["", chains[0], chains[1]]
    layers = [classify(p.labels) for p in plan]
    assert all(layer is not None for layer in layers)
    assert [layer.bootstrap for layer in layers if layer] == [False, False, True]
    assert {layer.image for layer in layers if layer} == {f"reg:5000/apps/web@{digest}"}


def test_a_config_that_does_not_match_is_a_format_error() -> None:
    boot = bootstrap_descriptor(b"b")
    config_desc = Descriptor("application/vnd.oci.image.config.v1+json", Digest.of(b"{}"), 2)
    manifest = build_manifest(config_desc, [], boot, subject=None)
    with pytest.raises(FormatError):
        pull_plan("r/x:1", Digest.of(b"m"), manifest, b'{"rootfs": {"diff_ids": []}}')
    with pytest.raises(FormatError):
        pull_plan("r/x:1", Digest.of(b"m"), manifest, b"not json")


def test_a_nonce_makes_the_active_keys_unique_to_one_pull() -> None:
    boot = bootstrap_descriptor(b"b")
    config = json.dumps({"rootfs": {"diff_ids": [str(boot.digest)]}}).encode()
    config_desc = Descriptor("application/vnd.oci.image.config.v1+json", Digest.of(config), 9)
    manifest = build_manifest(config_desc, [], boot, subject=None)
    (plain,) = pull_plan("r/x:1", Digest.of(b"m"), manifest, config)
    (salted,) = pull_plan("r/x:1", Digest.of(b"m"), manifest, config, nonce="42")
    assert plain.key == f"extract-0 {boot.digest}"
    assert salted.key == f"extract-42-0 {boot.digest}"
    assert salted.labels == plain.labels


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("127.0.0.1:5000/imagefs/busybox:pulled", "127.0.0.1:5000/imagefs/busybox:pulled"),
        ("docker://127.0.0.1:5000/a/b", "127.0.0.1:5000/a/b:latest"),
        ("busybox", "docker.io/library/busybox:latest"),
    ],
)
def test_containerd_image_names(text: str, name: str) -> None:
    from fuse_mount.snapshotter.pull import containerd_image_name
    from registry.reference import parse_reference

    assert containerd_image_name(parse_reference(text)) == name
