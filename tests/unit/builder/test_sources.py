"""Sources: directory walk (every file type, hard links, xattrs), docker archives (classic
and with an OCI layout inside), OCI layouts (tags, platform indexes, missing blobs)."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from builder.entries import Entry, EntryKind
from builder.pipeline import read_file
from builder.refs import SourceRef
from builder.sources import (
    LayerSource,
    MemoryLayer,
    MemorySource,
    open_docker_archive,
    open_source,
    walk_directory,
)
from builder.tarlayer import ByteCounter
from imagefs.digest import Digest
from imagefs.errors import NotFoundError, SourceError
from imagefs.oci import (
    MEDIA_TYPE_OCI_INDEX,
    Descriptor,
    Index,
    OciLayout,
    current_platform,
)
from tests.support.layers import LayerBuilder
from tests.support.oci import LayerBlob, write_docker_archive, write_oci_layout

K = EntryKind


def layer_summary(source: LayerSource) -> list[list[tuple[str, bytes, bytes]]]:
    out = []
    for layer in source.layers:
        items = []
        for m in layer.members(ByteCounter()):
            data = b""
            if m.path is not None:
                data = bytes(read_file(m.path, m.entry.size))
            elif m.data is not None:
                buf = bytearray(m.entry.size)
                view = memoryview(buf)
                got = 0
                while got < len(buf):
                    got += m.data.readinto(view[got:]) or 0
                data = bytes(buf)
            items.append((m.entry.kind.value, m.entry.path, data))
        out.append(items)
    return out


def simple_blobs() -> list[LayerBlob]:
    return [
        LayerBuilder().file("a", b"layer one").blob(compression="gzip"),
        LayerBuilder().file("b", b"layer two").blob(compression="zstd"),
    ]


EXPECTED = [[("file", b"a", b"layer one")], [("file", b"b", b"layer two")]]


def test_walk_directory(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "b.txt").write_bytes(b"bee")
    (root / "sub" / "a.bin").write_bytes(b"\0" * 100)
    os.link(root / "b.txt", root / "sub" / "link-to-b")
    os.symlink("../b.txt", root / "sub" / "sym")
    os.mkfifo(root / "fifo")
    (root / "setuid").write_bytes(b"#!")
    os.chmod(root / "setuid", 0o4755)
    os.chmod(root / "sub", 0o750)
    os.setxattr(root / "b.txt", "user.note", b"\xffbinary\x00")
    os.utime(root / "b.txt", ns=(1, 1_600_000_000_123_456_789))
    is_root = os.geteuid() == 0
    if is_root:
        os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.chown(root / "sub" / "a.bin", 1000, 1001)
    items = [e for e, _ in walk_directory(root)]
    paths = [e.path for e in items]
    expected = [b"", b"b.txt", b"fifo"]
    expected += [b"null"] if is_root else []
    expected += [b"setuid", b"sub", b"sub/a.bin", b"sub/deeper", b"sub/link-to-b", b"sub/sym"]
    assert paths == expected
    by = {e.path: e for e in items}
    assert by[b"b.txt"].kind is K.FILE and by[b"b.txt"].size == 3
    assert by[b"b.txt"].xattrs == ((b"user.note", b"\xffbinary\x00"),)
    assert by[b"b.txt"].mtime_ns == 1_600_000_000_123_456_789
    assert (by[b"sub/link-to-b"].kind, by[b"sub/link-to-b"].link) == (K.HARDLINK, b"b.txt")
    assert (by[b"sub/sym"].kind, by[b"sub/sym"].link) == (K.SYMLINK, b"../b.txt")
    assert by[b"fifo"].kind is K.FIFO
    assert by[b"setuid"].mode == 0o4755
    assert by[b"sub"].mode == 0o750
    if is_root:
        assert (by[b"null"].kind, by[b"null"].rdev_major, by[b"null"].rdev_minor) == (K.CHAR, 1, 3)
        assert (by[b"sub/a.bin"].uid, by[b"sub/a.bin"].gid) == (1000, 1001)
    source = open_source(SourceRef("dir", root))
    assert json.loads(source.config)["rootfs"] == {"type": "layers", "diff_ids": []}
    assert json.loads(source.config)["architecture"] == current_platform()["architecture"]
    assert source.subject is None
    assert layer_summary(source)[0][1] == ("file", b"b.txt", b"bee")


def test_walk_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        list(walk_directory(tmp_path / "missing"))
    with pytest.raises(NotFoundError):
        open_source(SourceRef("dir", tmp_path / "missing"))
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(SourceError):
        list(walk_directory(tmp_path / "file"))


def test_oci_layout_source(tmp_path: Path) -> None:
    ref = write_oci_layout(tmp_path / "img", simple_blobs(), tag="v1")
    write_oci_layout(tmp_path / "img", [simple_blobs()[0]], tag="v2")
    source = open_source(SourceRef("oci", tmp_path / "img", "v1"))
    assert layer_summary(source) == EXPECTED
    assert source.config == ref.config
    assert source.subject is not None
    assert str(source.subject.digest) == ref.manifest_digest
    assert source.subject.size == len(ref.manifest)
    assert not source.subject.annotations and source.subject.platform is None
    with pytest.raises(NotFoundError, match="2 images"):
        open_source(SourceRef("oci", tmp_path / "img", None))
    with pytest.raises(NotFoundError, match="tag 'nope'"):
        open_source(SourceRef("oci", tmp_path / "img", "nope"))
    with pytest.raises(NotFoundError):
        open_source(SourceRef("oci", tmp_path / "missing", None))
    (tmp_path / "notalayout").mkdir()
    with pytest.raises(SourceError):
        open_source(SourceRef("oci", tmp_path / "notalayout", None))


def test_oci_index_picks_this_platform(tmp_path: Path) -> None:
    here = current_platform()
    arm = write_oci_layout(tmp_path / "img", [simple_blobs()[1]], tag="other", architecture="s390x")
    native = write_oci_layout(
        tmp_path / "img", simple_blobs(), tag="native", architecture=here["architecture"]
    )
    layout = OciLayout.open(tmp_path / "img")
    entries = [
        Descriptor(
            "application/vnd.oci.image.manifest.v1+json",
            Digest.parse(r.manifest_digest),
            len(r.manifest),
            platform={"os": "linux", "architecture": arch},
        )
        for r, arch in ((arm, "s390x"), (native, here["architecture"]))
    ]
    index = Index(tuple(entries)).encode()
    layout.write_blob(index)
    layout.set_tag(Descriptor(MEDIA_TYPE_OCI_INDEX, Digest.of(index), len(index)), "multi")
    source = open_source(SourceRef("oci", tmp_path / "img", "multi"))
    assert layer_summary(source) == EXPECTED
    assert source.subject is not None and str(source.subject.digest) == native.manifest_digest


def test_missing_blob_and_unknown_media_type(tmp_path: Path) -> None:
    blobs = simple_blobs()
    ref = write_oci_layout(tmp_path / "img", blobs)
    (tmp_path / "img" / "blobs" / "sha256" / blobs[1].digest.removeprefix("sha256:")).unlink()
    source = open_source(SourceRef("oci", tmp_path / "img", "latest"))
    with pytest.raises(NotFoundError, match="missing"):
        layer_summary(source)
    (tmp_path / "img" / "blobs" / "sha256" / ref.config_digest.removeprefix("sha256:")).unlink()
    with pytest.raises(NotFoundError, match="missing"):
        open_source(SourceRef("oci", tmp_path / "img", "latest"))

    odd = LayerBlob(blobs[0].data, "application/vnd.oci.image.layer.v1.tar+bzip2", blobs[0].diff_id)
    write_oci_layout(tmp_path / "odd", [odd])
    with pytest.raises(SourceError, match="unknown layer media type"):
        layer_summary(open_source(SourceRef("oci", tmp_path / "odd", None)))


def test_tampered_blobs_are_caught(tmp_path: Path) -> None:
    blobs = simple_blobs()
    ref = write_oci_layout(tmp_path / "img", blobs)
    path = tmp_path / "img" / "blobs" / "sha256" / ref.manifest_digest.removeprefix("sha256:")
    path.write_bytes(ref.manifest.replace(b"schemaVersion", b"schemaVersioN"))
    with pytest.raises(SourceError, match="does not match its digest"):
        open_source(SourceRef("oci", tmp_path / "img", None))


def test_classic_docker_archive(tmp_path: Path) -> None:
    path = write_docker_archive(tmp_path / "x.tar", simple_blobs())
    source = open_docker_archive(path)
    try:
        assert layer_summary(source) == EXPECTED
        assert source.subject is None
        assert json.loads(source.config)["rootfs"]["diff_ids"] == [
            b.diff_id for b in simple_blobs()
        ]
    finally:
        source.close()


def test_docker_archive_with_oci_layout_inside(tmp_path: Path) -> None:
    ref = write_oci_layout(tmp_path / "layout", simple_blobs())
    archive = tmp_path / "new-docker.tar"
    with tarfile.open(archive, "w") as tar:
        for p in sorted((tmp_path / "layout").rglob("*")):
            tar.add(p, arcname=str(p.relative_to(tmp_path / "layout")), recursive=False)
        manifest = json.dumps([{"Config": "blobs/sha256/x", "Layers": []}]).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    source = open_source(SourceRef("docker-archive", archive))
    try:
        assert layer_summary(source) == EXPECTED
        assert source.subject is not None and str(source.subject.digest) == ref.manifest_digest
    finally:
        source.close()


def test_bad_docker_archives(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        open_docker_archive(tmp_path / "missing.tar")
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar" * 100)
    with pytest.raises(SourceError):
        open_docker_archive(tmp_path / "junk.tar")
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    with pytest.raises(SourceError, match="not a docker archive"):
        open_docker_archive(empty)
    path = write_docker_archive(tmp_path / "x.tar", simple_blobs())
    broken = tmp_path / "broken.tar"
    with tarfile.open(path) as src, tarfile.open(broken, "w") as dst:
        for info in src.getmembers():
            if not info.name.endswith("layer.tar"):
                dst.addfile(info, src.extractfile(info) if info.isreg() else None)
    with pytest.raises(NotFoundError, match="layer"):
        open_docker_archive(broken)


def _tree_layer() -> LayerBuilder:
    b = LayerBuilder("pax")
    b.dir("d").file("d/f", b"file data\n").symlink("d/s", "f").file("e", b"")
    return b


@pytest.mark.parametrize("kind", ["memory", "oci", "docker-archive", "dir"])
def test_layer_source_conformance(kind: str, tmp_path: Path) -> None:
    """Every LayerSource gives the same members for the same one-layer tree."""
    source: LayerSource
    if kind == "memory":
        items = [
            (Entry(b"d", K.DIR), None),
            (Entry(b"d/f", K.FILE, size=10), b"file data\n"),
            (Entry(b"d/s", K.SYMLINK, link=b"f"), None),
            (Entry(b"e", K.FILE), None),
        ]
        source = MemorySource(b"{}", [MemoryLayer("l", items)])
    elif kind == "oci":
        write_oci_layout(tmp_path / "img", [_tree_layer().blob()])
        source = open_source(SourceRef("oci", tmp_path / "img"))
    elif kind == "docker-archive":
        write_docker_archive(tmp_path / "a.tar", [_tree_layer().blob()])
        source = open_source(SourceRef("docker-archive", tmp_path / "a.tar"))
    else:
        (tmp_path / "t" / "d").mkdir(parents=True)
        (tmp_path / "t" / "d" / "f").write_bytes(b"file data\n")
        os.symlink("f", tmp_path / "t" / "d" / "s")
        (tmp_path / "t" / "e").write_bytes(b"")
        source = open_source(SourceRef("dir", tmp_path / "t"))
    try:
        [layer] = layer_summary(source)
        assert isinstance(source.config, bytes)
    finally:
        source.close()
    layer = [item for item in layer if item[1]]  # the dir source also names the root
    assert layer == [
        ("dir", b"d", b""),
        ("file", b"d/f", b"file data\n"),
        ("symlink", b"d/s", b""),
        ("file", b"e", b""),
    ]
