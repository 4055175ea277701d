"""OCI objects and the on-disk layout: references, parse errors, tags, atomic blob writes;
and the imagefs image manifest built on them (media types, annotations, config, subject)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagefs.digest import Digest
from imagefs.errors import FormatError, NotFoundError, UnsupportedVersionError
from imagefs.format import (
    ANNOTATION_FORMAT,
    ANNOTATION_LAYER_BLOB,
    ANNOTATION_LAYER_BOOTSTRAP,
    MEDIA_TYPE_BLOB,
    MEDIA_TYPE_BOOTSTRAP,
    MEDIA_TYPE_OCI_CONFIG,
    blob_descriptor,
    bootstrap_descriptor,
    build_config,
    build_manifest,
    is_imagefs_manifest,
    parse_imagefs_manifest,
)
from imagefs.oci import (
    MEDIA_TYPE_OCI_MANIFEST,
    REF_NAME,
    Descriptor,
    Index,
    LayoutRef,
    Manifest,
    OciLayout,
)

# --------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("text", "path", "tag"),
    [
        ("oci:/a/b:tag", "/a/b", "tag"),
        ("oci:/a/b", "/a/b", None),
        ("oci:rel:tag", "rel", "tag"),
        ("oci:/a:b/c", "/a:b/c", None),  # the last colon is inside the path: no tag
        ("oci:/a/b:", "/a/b", None),
        ("oci:/x:y:v1.2", "/x:y", "v1.2"),
    ],
)
def test_layout_ref_parse(text: str, path: str, tag: str | None) -> None:
    ref = LayoutRef.parse(text)
    assert ref.path == Path(path)
    assert ref.tag == tag


@pytest.mark.parametrize("text", ["oci:", "docker://x", "/a/b:tag", ""])
def test_layout_ref_parse_errors(text: str) -> None:
    with pytest.raises(FormatError):
        LayoutRef.parse(text)


def test_layout_ref_str_round_trips() -> None:
    for text in ("oci:/a/b:tag", "oci:/a/b", "oci:rel:tag"):
        assert str(LayoutRef.parse(text)) == text


# --------------------------------------------------------------------------- parsing

DIGEST = "sha256:" + "ab" * 32
DESC = {"mediaType": "application/x", "digest": DIGEST, "size": 3}


def manifest_doc(**changes: object) -> bytes:
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": DESC,
        "layers": [DESC],
    }
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


def test_manifest_parse_and_encode_round_trip() -> None:
    m = Manifest.parse(manifest_doc(annotations={"a": "b"}, subject=DESC))
    assert m.layers[0].digest == Digest.parse(DIGEST)
    assert m.subject is not None and m.subject.size == 3
    assert Manifest.parse(m.encode()) == m


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"[1, 2]",
        b"{not json",
        manifest_doc(schemaVersion=1),
        manifest_doc(mediaType="application/vnd.oci.image.index.v1+json"),
        manifest_doc(layers=None),
        manifest_doc(layers={"a": 1}),
        manifest_doc(config=None),
        manifest_doc(config={**DESC, "digest": "sha256:short"}),
        manifest_doc(config={**DESC, "digest": "md5:" + "ab" * 16}),
        manifest_doc(config={**DESC, "size": -1}),
        manifest_doc(config={**DESC, "size": True}),
        manifest_doc(config={**DESC, "size": "3"}),
        manifest_doc(layers=[{**DESC, "mediaType": 5}]),
        manifest_doc(layers=[{**DESC, "annotations": {"a": 1}}]),
        manifest_doc(layers=[{**DESC, "platform": "linux"}]),
        manifest_doc(layers=["x"]),
        manifest_doc(annotations=["x"]),
        manifest_doc(subject="x"),
    ],
)
def test_manifest_parse_errors_are_format_errors(data: bytes) -> None:
    with pytest.raises(FormatError):
        Manifest.parse(data)


@pytest.mark.parametrize(
    "data",
    [
        b"{}",
        b'{"schemaVersion": 2}',
        b'{"schemaVersion": 2, "manifests": {}}',
        b'{"schemaVersion": 1, "manifests": []}',
        b'{"schemaVersion": 2, "manifests": [{"digest": 1}]}',
        b"null",
    ],
)
def test_index_parse_errors_are_format_errors(data: bytes) -> None:
    with pytest.raises(FormatError):
        Index.parse(data)


# --------------------------------------------------------------------------- layout


def test_set_tag_keeps_other_tags_and_replaces_its_own(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path / "layout")
    one = Descriptor.of(MEDIA_TYPE_OCI_MANIFEST, layout_manifest(layout, b"one"))
    two = Descriptor.of(MEDIA_TYPE_OCI_MANIFEST, layout_manifest(layout, b"two"))
    layout.set_tag(one, "a")
    layout.set_tag(two, "b")
    layout.set_tag(two, "a")  # retag
    tags = {m.annotations[REF_NAME]: m.digest for m in layout.index().manifests}
    assert tags == {"a": two.digest, "b": two.digest}
    assert OciLayout.open(tmp_path / "layout").resolve("b").digest == two.digest
    with pytest.raises(NotFoundError, match="name one with :TAG"):
        layout.resolve(None)
    with pytest.raises(NotFoundError):
        layout.resolve("c")
    desc, manifest = layout.resolve_manifest("a")
    assert desc.digest == two.digest and manifest.config.size == 3


def layout_manifest(layout: OciLayout, config: bytes) -> bytes:
    cfg = Descriptor(MEDIA_TYPE_OCI_CONFIG, layout.write_blob(config), len(config))
    data = Manifest(MEDIA_TYPE_OCI_MANIFEST, cfg, ()).encode()
    layout.write_blob(data)
    return data


def blob_dir_entries(layout: OciLayout) -> list[str]:
    return sorted(p.name for p in (layout.root / "blobs" / "sha256").iterdir())


def test_blob_writer_publishes_under_the_digest(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path)
    with layout.blob_writer() as w:
        w.write(b"hello ")
        w.write(memoryview(b"world"))
    assert w.digest == Digest.of(b"hello world") and w.size == 11
    assert layout.read_blob(w.digest) == b"hello world"
    assert blob_dir_entries(layout) == [w.digest.hex]


def test_blob_writer_is_atomic_on_error(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path)
    with pytest.raises(RuntimeError, match="boom"), layout.blob_writer() as w:
        w.write(b"partial")
        raise RuntimeError("boom")
    assert blob_dir_entries(layout) == []
    assert not layout.has_blob(Digest.of(b"partial"))


def test_read_blob_verifies_and_reports_missing(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path)
    digest = layout.write_blob(b"content")
    layout.blob_path(digest).write_bytes(b"tampered")
    with pytest.raises(FormatError, match="does not match"):
        layout.read_blob(digest)
    assert layout.read_blob(digest, verify=False) == b"tampered"
    with pytest.raises(NotFoundError):
        layout.read_blob(Digest.of(b"absent"))
    with pytest.raises(NotFoundError, match="not an OCI image layout"):
        OciLayout.open(tmp_path / "nowhere")


# --------------------------------------------------------------------------- imagefs image

SOURCE_CONFIG = json.dumps(
    {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "11" * 32, "sha256:" + "22" * 32]},
        "history": [{"created_by": "x"}],
    }
).encode()


def imagefs_manifest(subject: Descriptor | None) -> tuple[Manifest, list[Descriptor]]:
    blobs = [blob_descriptor(Digest.of(b"blob%d" % i), 100 + i) for i in range(2)]
    boot = bootstrap_descriptor(b"zstd bootstrap")
    config = build_config(SOURCE_CONFIG, [*blobs, boot])
    manifest = build_manifest(
        Descriptor.of(MEDIA_TYPE_OCI_CONFIG, config),
        blobs,
        boot,
        subject=subject,
        annotations={"dev.imagefs.source.config": "sha256:" + "33" * 32},
    )
    return manifest, [*blobs, boot]


def test_imagefs_config_replaces_only_the_diff_ids() -> None:
    _, layers = imagefs_manifest(None)
    config = json.loads(build_config(SOURCE_CONFIG, layers))
    source = json.loads(SOURCE_CONFIG)
    assert config["rootfs"] == {"type": "layers", "diff_ids": [str(d.digest) for d in layers]}
    assert {k: v for k, v in config.items() if k != "rootfs"} == {
        k: v for k, v in source.items() if k != "rootfs"
    }


def test_imagefs_manifest_layout() -> None:
    subject = Descriptor.of(MEDIA_TYPE_OCI_MANIFEST, b"source manifest")
    manifest, layers = imagefs_manifest(subject)
    doc = json.loads(manifest.encode())
    assert doc["annotations"][ANNOTATION_FORMAT] == "1.0"
    assert [x["mediaType"] for x in doc["layers"]] == [MEDIA_TYPE_BLOB] * 2 + [MEDIA_TYPE_BOOTSTRAP]
    assert doc["layers"][0]["annotations"] == {ANNOTATION_LAYER_BLOB: "true"}
    assert doc["layers"][-1]["annotations"] == {ANNOTATION_LAYER_BOOTSTRAP: "true"}
    assert all(
        k.startswith("containerd.io/snapshot/") for x in doc["layers"] for k in x["annotations"]
    )
    assert doc["subject"]["digest"] == str(subject.digest)
    assert "subject" not in json.loads(imagefs_manifest(None)[0].encode())
    parsed = parse_imagefs_manifest(Manifest.parse(manifest.encode()))
    assert parsed.blobs == tuple(layers[:2]) and parsed.bootstrap == layers[2]
    assert is_imagefs_manifest(manifest)


def test_imagefs_manifest_rejections() -> None:
    manifest, layers = imagefs_manifest(None)
    plain = Manifest(MEDIA_TYPE_OCI_MANIFEST, manifest.config, layers[:2])
    assert not is_imagefs_manifest(plain)
    with pytest.raises(FormatError, match="convert it first"):
        parse_imagefs_manifest(plain)
    misplaced = Manifest(MEDIA_TYPE_OCI_MANIFEST, manifest.config, (layers[2], *layers[:2]))
    with pytest.raises(FormatError, match="last layer"):
        parse_imagefs_manifest(misplaced)
    future = Manifest(
        MEDIA_TYPE_OCI_MANIFEST, manifest.config, tuple(layers), None, {ANNOTATION_FORMAT: "2.0"}
    )
    with pytest.raises(UnsupportedVersionError):
        parse_imagefs_manifest(future)
    newer_minor = Manifest(
        MEDIA_TYPE_OCI_MANIFEST, manifest.config, tuple(layers), None, {ANNOTATION_FORMAT: "1.9"}
    )
    assert parse_imagefs_manifest(newer_minor).bootstrap == layers[2]
