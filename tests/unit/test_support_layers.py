"""Tests of the test-support helpers: layer builder, OCI/docker writers, tree snapshots."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import zstandard

from tests.support import samples
from tests.support.layers import (
    LayerBuilder,
    xattr_from_pax,
    xattr_to_pax,
)
from tests.support.oci import (
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_LAYER_ZSTD,
    REF_NAME_ANNOTATION,
    LayerBlob,
    read_layers,
    read_manifest,
    recompress_layout,
    sha256_digest,
    write_docker_archive,
    write_oci_layout,
)
from tests.support.trees import (
    EntryMeta,
    diff_hardlink_groups,
    diff_snapshots,
    hardlink_groups,
    snapshot_tree,
)

CAP = samples.CAP_NET_BIND_SERVICE


def _members(tar: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    out: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        for member in tf:
            f = tf.extractfile(member) if member.isreg() else None
            out[member.name] = (member, f.read() if f else None)
    return out


def _xattrs(info: tarfile.TarInfo) -> dict[str, bytes]:
    return {
        key.removeprefix("SCHILY.xattr."): xattr_from_pax(value)
        for key, value in info.pax_headers.items()
        if key.startswith("SCHILY.xattr.")
    }


def _every_type_builder(fmt: str) -> LayerBuilder:
    b = LayerBuilder("gnu" if fmt == "gnu" else "pax")
    b.dir("d", mode=0o1777, uid=7, gid=8, mtime=1234)
    b.file("d/f", b"content", mode=0o4755, uid=1000, gid=1000, mtime=5678)
    b.file("d/empty", b"")
    b.symlink("d/s", "../target/that/does/not/exist")
    b.hardlink("d/h", "d/f")
    b.chardev("d/c", 1, 3, mode=0o666)
    b.blockdev("d/b", 7, 0)
    b.fifo("d/p", mode=0o640)
    b.whiteout("d/gone")
    b.whiteout("top")
    b.opaque("d")
    return b


@pytest.mark.parametrize("fmt", ["pax", "gnu"])
def test_round_trip_every_entry_type(fmt: str) -> None:
    m = _members(_every_type_builder(fmt).tar())
    assert set(m) == {
        "d", "d/f", "d/empty", "d/s", "d/h", "d/c", "d/b", "d/p",
        "d/.wh.gone", ".wh.top", "d/.wh..wh..opq",
    }  # fmt: skip
    d, _ = m["d"]
    assert (d.isdir(), d.mode, d.uid, d.gid, d.mtime) == (True, 0o1777, 7, 8, 1234)
    f, data = m["d/f"]
    assert (f.isreg(), f.mode, f.uid, f.gid, f.mtime, data) == (
        True, 0o4755, 1000, 1000, 5678, b"content",
    )  # fmt: skip
    assert (f.uname, f.gname) == ("", "")
    assert m["d/empty"][1] == b""
    assert m["d/s"][0].issym() and m["d/s"][0].linkname == "../target/that/does/not/exist"
    assert m["d/h"][0].islnk() and m["d/h"][0].linkname == "d/f"
    c = m["d/c"][0]
    assert c.ischr() and (c.devmajor, c.devminor, c.mode) == (1, 3, 0o666)
    blk = m["d/b"][0]
    assert blk.isblk() and (blk.devmajor, blk.devminor, blk.mode) == (7, 0, 0o600)
    assert m["d/p"][0].isfifo() and m["d/p"][0].mode == 0o640
    for marker in ("d/.wh.gone", ".wh.top", "d/.wh..wh..opq"):
        assert m[marker][0].isreg() and m[marker][1] == b""
    if fmt == "gnu":
        assert all(info.pax_headers == {} for info, _ in m.values())


def test_binary_xattrs_round_trip_byte_exact() -> None:
    values = {
        "security.capability": CAP,
        "trusted.foo": b"bar\x00\xffbaz",
        "user.comment": "ünïcode text".encode(),
        "user.high": bytes(range(256)),
    }
    b = LayerBuilder()
    b.file("f", b"x", xattrs=values)
    b.file("only-utf8", b"y", xattrs={"user.a": b"plain", "security.capability": CAP})
    tar = b.tar()
    m = _members(tar)
    assert _xattrs(m["f"][0]) == values
    assert _xattrs(m["only-utf8"][0]) == {"user.a": b"plain", "security.capability": CAP}
    # The raw pax records carry the exact bytes (readers other than tarfile see the same).
    assert b" SCHILY.xattr.security.capability=" + CAP + b"\n" in tar
    assert b" SCHILY.xattr.trusted.foo=bar\x00\xffbaz\n" in tar
    assert b"hdrcharset=BINARY" in tar  # non-UTF-8 values force it, for "f" only
    assert tar.count(b"hdrcharset=BINARY") == 1


@pytest.mark.parametrize("value", [b"", b"\x00", b"\xff\xfe", CAP, "é".encode()])
def test_xattr_pax_codec_is_lossless(value: bytes) -> None:
    assert xattr_from_pax(xattr_to_pax(value)) == value


def test_gnu_format_uses_longname_and_longlink_headers() -> None:
    long_name = "dir/" + "n" * 150
    long_target = "t" * 150
    b = LayerBuilder("gnu")
    b.file(long_name, b"data")
    b.symlink("s", long_target)
    b.hardlink("h" * 120, long_name)
    tar = b.tar()
    m = _members(tar)
    assert m[long_name][1] == b"data"
    assert m["s"][0].linkname == long_target
    assert m["h" * 120][0].linkname == long_name
    # GNU ././@LongLink headers: type 'L' for names, 'K' for link names.
    headers = [tar[i : i + 512] for i in range(0, len(tar), 512)]
    long_headers = [h[156:157] for h in headers if h.startswith(b"././@LongLink")]
    assert sorted(long_headers) == [b"K", b"K", b"L", b"L"]
    assert b"ustar  \x00" in tar  # GNU magic
    # PAX format stores the same names in pax records instead.
    pax = b.tar("pax")
    assert b"././@LongLink" not in pax
    assert b" path=" + long_name.encode() + b"\n" in pax
    assert b" linkpath=" + long_target.encode() + b"\n" in pax


def test_gnu_format_refuses_xattrs() -> None:
    b = LayerBuilder("gnu")
    b.file("f", b"", xattrs={"user.a": b"1"})
    with pytest.raises(ValueError, match="xattrs"):
        b.tar()
    assert _xattrs(_members(b.tar("pax"))["f"][0]) == {"user.a": b"1"}


def test_build_is_deterministic_and_compressions_share_diff_id() -> None:
    tar = _every_type_builder("pax").tar()
    assert tar == _every_type_builder("pax").tar()
    gz = _every_type_builder("pax").build(compression="gzip")
    assert gz == _every_type_builder("pax").build()
    assert gz[:2] == b"\x1f\x8b" and gz[4:8] == b"\x00\x00\x00\x00"  # gzip mtime 0
    assert gzip.decompress(gz) == tar
    zst = _every_type_builder("pax").build(compression="zstd")
    assert zstandard.ZstdDecompressor().decompress(zst) == tar
    assert _every_type_builder("pax").build(compression="none") == tar
    blobs = [_every_type_builder("pax").blob(compression=c) for c in ("gzip", "zstd", "none")]
    assert {blob.diff_id for blob in blobs} == {"sha256:" + hashlib.sha256(tar).hexdigest()}
    assert [blob.media_type for blob in blobs] == [
        MEDIA_TYPE_LAYER_GZIP,
        MEDIA_TYPE_LAYER_ZSTD,
        MEDIA_TYPE_LAYER_TAR,
    ]
    assert [blob.compression for blob in blobs] == ["gzip", "zstd", "none"]
    assert all(blob.tar() == tar for blob in blobs)


def test_entry_order_sorted_with_hardlinks_after_targets() -> None:
    b = LayerBuilder()
    b.file("z/target", b"t")
    b.hardlink("a/link", "z/target")
    b.dir("z")
    b.dir("a")
    b.file("a/b", b"")
    b.opaque("a")
    b.hardlink("lower-link", "in/lower/layer")
    b.hardlink("b-link", "a/b")
    assert b.paths == [
        "a", "a/.wh..wh..opq", "a/b", "b-link", "lower-link", "z", "z/target", "a/link",
    ]  # fmt: skip
    unsorted = LayerBuilder(sort_entries=False)
    unsorted.file("b", b"").file("a", b"")
    assert unsorted.paths == ["b", "a"]
    assert list(_members(unsorted.tar())) == ["b", "a"]


def test_paths_are_normalized() -> None:
    b = LayerBuilder()
    b.file("/abs/file", b"").dir("./rel/dir/").whiteout("/x/y").opaque("./o/")
    assert b.paths == ["abs/file", "o/.wh..wh..opq", "rel/dir", "x/.wh.y"]
    with pytest.raises(ValueError):
        b.file("/", b"")


def test_raw_entry_is_kept_as_given() -> None:
    info = tarfile.TarInfo("./odd/./name")
    info.type = tarfile.REGTYPE
    info.mtime = 42
    b = LayerBuilder()
    b.raw(info, b"12345")
    (member, data) = _members(b.tar())["./odd/./name"]
    assert (member.size, member.mtime, data) == (5, 42, b"12345")


# ---------------------------------------------------------------------------- oci


def _small_blobs() -> list[LayerBlob]:
    one = LayerBuilder().dir("etc").file("etc/a", b"a")
    two = LayerBuilder().whiteout("etc/a").file("etc/b", b"b")
    return [one.blob(compression="gzip"), two.blob(compression="zstd")]


def test_write_oci_layout_structure(tmp_path: Path) -> None:
    blobs = _small_blobs()
    ref = write_oci_layout(
        tmp_path, blobs, tag="v1", config_extra={"config": {"Cmd": ["/x"]}, "author": "me"}
    )
    assert json.loads((tmp_path / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    for path in (tmp_path / "blobs" / "sha256").iterdir():
        assert sha256_digest(path.read_bytes()) == "sha256:" + path.name
    index = json.loads((tmp_path / "index.json").read_text())
    [desc] = index["manifests"]
    assert desc["digest"] == ref.manifest_digest == sha256_digest(ref.manifest)
    assert desc["annotations"] == {REF_NAME_ANNOTATION: "v1"}
    manifest, config = read_manifest(tmp_path, "v1")
    assert manifest["config"]["digest"] == ref.config_digest == sha256_digest(ref.config)
    assert [layer["digest"] for layer in manifest["layers"]] == [b.digest for b in blobs]
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        MEDIA_TYPE_LAYER_GZIP,
        MEDIA_TYPE_LAYER_ZSTD,
    ]
    assert config["rootfs"] == {"type": "layers", "diff_ids": [b.diff_id for b in blobs]}
    assert len(config["history"]) == 2
    assert config["config"]["Cmd"] == ["/x"] and "Env" in config["config"]
    assert (config["author"], config["architecture"], config["os"]) == ("me", "amd64", "linux")
    assert read_layers(tmp_path, "v1") == blobs
    assert ref.umoci_image == f"{tmp_path}:v1"


def test_second_tag_keeps_first_and_same_tag_replaces(tmp_path: Path) -> None:
    blobs = _small_blobs()
    first = write_oci_layout(tmp_path, blobs[:1], tag="one")
    second = write_oci_layout(tmp_path, blobs, tag="two", architecture="arm64")
    index = json.loads((tmp_path / "index.json").read_text())
    assert [d["annotations"][REF_NAME_ANNOTATION] for d in index["manifests"]] == ["one", "two"]
    assert read_manifest(tmp_path, "one")[0]["layers"][0]["digest"] == blobs[0].digest
    assert read_manifest(tmp_path, "two")[1]["architecture"] == "arm64"
    assert first.manifest_digest != second.manifest_digest
    replaced = write_oci_layout(tmp_path, blobs[1:], tag="one")
    index = json.loads((tmp_path / "index.json").read_text())
    assert [d["digest"] for d in index["manifests"]] == [
        second.manifest_digest,
        replaced.manifest_digest,
    ]
    with pytest.raises(KeyError):
        read_manifest(tmp_path, "missing")


def test_recompress_layout_keeps_diff_ids(tmp_path: Path) -> None:
    blobs = _small_blobs()
    write_oci_layout(tmp_path / "src", blobs, tag="t", config_extra={"author": "x"})
    ref = recompress_layout(tmp_path / "src", "t", tmp_path / "dst", "gzip")
    out = read_layers(tmp_path / "dst", "t")
    assert [b.media_type for b in out] == [MEDIA_TYPE_LAYER_GZIP] * 2
    assert [b.diff_id for b in out] == [b.diff_id for b in blobs]
    assert [b.tar() for b in out] == [b.tar() for b in blobs]
    assert read_manifest(tmp_path / "src", "t")[1] == json.loads(ref.config)


def test_layer_blob_tar_checks_diff_id() -> None:
    blob = LayerBuilder().file("a", b"a").blob()
    bad = LayerBlob(blob.data, blob.media_type, "sha256:" + "0" * 64)
    with pytest.raises(ValueError, match="diff_id"):
        bad.tar()


def test_write_docker_archive(tmp_path: Path) -> None:
    blobs = _small_blobs()
    path = write_docker_archive(tmp_path / "img.tar", blobs, repo_tag="repo/name:v2")
    m = _members(path.read_bytes())
    [entry] = json.loads(m["manifest.json"][1] or b"")
    assert entry["RepoTags"] == ["repo/name:v2"]
    config = json.loads(m[entry["Config"]][1] or b"")
    assert sha256_digest(m[entry["Config"]][1] or b"") == "sha256:" + entry["Config"][:-5]
    layer_tars = [m[p][1] or b"" for p in entry["Layers"]]
    assert all(p.endswith("/layer.tar") for p in entry["Layers"])
    assert [sha256_digest(t) for t in layer_tars] == config["rootfs"]["diff_ids"]
    assert layer_tars == [b.tar() for b in blobs]  # uncompressed, as docker save stores them
    top = entry["Layers"][-1].split("/")[0]
    assert json.loads(m["repositories"][1] or b"") == {"repo/name": {"v2": top}}
    assert (
        path.read_bytes()
        == write_docker_archive(tmp_path / "again.tar", blobs, repo_tag="repo/name:v2").read_bytes()
    )


# ---------------------------------------------------------------------------- trees


def _user_xattrs_supported(path: Path) -> bool:
    try:
        os.setxattr(path, "user.probe", b"1")
        os.removexattr(path, "user.probe")
    except OSError:
        return False
    return True


def _make_tree(root: Path) -> None:
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"hello")
    os.chmod(root / "d" / "f", 0o644)
    os.link(root / "d" / "f", root / "g")
    (root / "empty").write_bytes(b"")
    os.symlink("d/f", root / "s")
    os.symlink("/nowhere", root / "dangling")
    os.mkfifo(root / "d" / "p")
    os.chmod(root / "d", 0o1750)
    os.utime(root / "d" / "f", (1, 1700000000))
    if _user_xattrs_supported(root / "empty"):
        os.setxattr(root / "empty", "user.bin", b"\x00\xff")


def test_snapshot_tree(tmp_path: Path) -> None:
    _make_tree(tmp_path)
    snap = snapshot_tree(tmp_path)
    assert list(snap) == ["d", "d/f", "d/p", "dangling", "empty", "g", "s"]
    assert "." not in snap and "." in snapshot_tree(tmp_path, include_root=True)
    f = snap["d/f"]
    assert (f.kind, f.size, f.nlink, f.mtime) == ("reg", 5, 2, 1700000000)
    assert f.sha256 == hashlib.sha256(b"hello").hexdigest()
    assert (snap["d"].kind, snap["d"].mode, snap["d"].size, snap["d"].nlink) == (
        "dir", 0o1750, 0, 0,
    )  # fmt: skip
    assert snap["s"] == EntryMeta(
        kind="symlink",
        mode=0o777,
        uid=snap["s"].uid,
        gid=snap["s"].gid,
        mtime=snap["s"].mtime,
        link_target="d/f",
    )
    assert snap["dangling"].link_target == "/nowhere"
    assert snap["d/p"].kind == "fifo" and snap["d/p"].rdev is None
    if _user_xattrs_supported(tmp_path / "d" / "f"):
        assert snap["empty"].xattrs == {"user.bin": b"\x00\xff"}
    assert hardlink_groups(tmp_path) == {frozenset({"d/f", "g"})}


def test_diff_snapshots_reports_and_ignores(tmp_path: Path) -> None:
    a_root, b_root = tmp_path / "a", tmp_path / "b"
    for root in (a_root, b_root):
        root.mkdir()
        _make_tree(root)
        os.utime(root / "d", (1, 1000))
    assert diff_snapshots(snapshot_tree(a_root), snapshot_tree(b_root)) == []

    (b_root / "empty").write_bytes(b"now with content")
    os.chmod(b_root / "d" / "f", 0o4755)
    os.utime(b_root / "d", (1, 2000))
    (b_root / "s").unlink()
    os.symlink("elsewhere", b_root / "s")
    (b_root / "g").unlink()
    (b_root / "g").mkdir()
    (b_root / "extra").write_bytes(b"")
    os.utime(b_root / "empty", (1, 1))
    os.utime(a_root / "empty", (1, 1))
    a, b = snapshot_tree(a_root), snapshot_tree(b_root)
    diff = diff_snapshots(a, b, labels=("want", "got"))
    text = "\n".join(diff)
    assert "only in got: extra (reg)" in diff
    assert "g: kind want=reg got=dir" in diff
    assert "d/f: mode want=0o644 got=0o4755" in diff
    assert "d: mtime want=1000 got=2000" in diff
    assert "s: link_target want='d/f' got='elsewhere'" in diff
    assert "empty: size" in text and "empty: sha256" in text
    assert "d/f: nlink want=2 got=1" in diff
    relaxed = diff_snapshots(a, b, ignore={"dir_mtime", "nlink"})
    assert not any(line.startswith("d: mtime") or "nlink" in line for line in relaxed)
    assert "d/f: mode a=0o644 b=0o4755" in relaxed
    with pytest.raises(ValueError, match="unknown ignore"):
        diff_snapshots(a, b, ignore={"mtimes"})
    assert diff_hardlink_groups(hardlink_groups(a_root), hardlink_groups(b_root)) == [
        "hard-link group only in a: ['d/f', 'g']"
    ]


def test_diff_snapshots_xattrs() -> None:
    base = EntryMeta("reg", 0o644, 0, 0, 1, xattrs={"user.a": b"1", "security.selinux": b"x"})
    other = EntryMeta("reg", 0o644, 0, 0, 1, xattrs={"user.a": b"\x01"})
    assert diff_snapshots({"f": base}, {"f": other}) == [
        "f: xattr security.selinux a=b'x' b=absent",
        "f: xattr user.a a=b'1' b=b'\\x01'",
    ]
    assert diff_snapshots({"f": base}, {"f": other}, ignore={"xattr:security.selinux"}) != []
    fixed = EntryMeta("reg", 0o644, 0, 0, 1, xattrs={"user.a": b"1"})
    assert diff_snapshots({"f": base}, {"f": fixed}, ignore={"xattr:security.selinux"}) == []
    assert diff_snapshots({"f": base}, {"f": other}, ignore={"xattrs"}) == []


# ---------------------------------------------------------------------------- samples


def test_sample_layers_cover_the_brief() -> None:
    l1, l2, l3 = samples.every_entry_type_layers()
    assert (l1.fmt, l2.fmt, l3.fmt) == ("pax", "gnu", "pax")
    m1, m2, m3 = (_members(layer.tar()) for layer in (l1, l2, l3))
    kinds = {info.type for m in (m1, m2) for info, _ in m.values()}
    assert {
        tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
        tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE,
    } <= kinds  # fmt: skip
    for long_path in (samples.PAX_LONG_FILE, samples.GNU_LONG_FILE):
        assert len(long_path) > 150
    assert len(samples.PAX_LONG_SYMLINK_TARGET) > 150
    assert len(samples.GNU_LONG_SYMLINK_TARGET) > 150
    assert m1[samples.PAX_LONG_SYMLINK][0].linkname == samples.PAX_LONG_SYMLINK_TARGET
    assert m2[samples.GNU_LONG_SYMLINK][0].linkname == samples.GNU_LONG_SYMLINK_TARGET
    assert b"././@LongLink" in l2.tar() and b"././@LongLink" not in l1.tar()
    assert _xattrs(m1["bin/ping"][0]) == {"security.capability": CAP}
    assert len(CAP) == 20
    assert _xattrs(m1["etc/xattrs.txt"][0]) == samples.EXPECTED_XATTRS["etc/xattrs.txt"]
    assert m3["opaque/.wh..wh..opq"][1] == b""
    assert {".wh.olddir", "etc/.wh.remove-me"} <= set(m3)
    assert "recreate/.wh.phoenix" in m2 and "recreate/phoenix" in m3
    assert m3["data/dedup.bin"][1] == samples.DEDUP_V2


def test_sample_contents_have_the_promised_block_structure() -> None:
    block = samples.BLOCK
    rep = samples.REPEATED_BLOCKS
    assert len(rep) > 256 * 1024
    chunks = [rep[i : i + block] for i in range(0, len(rep), block)]
    assert len(set(chunks)) == 3 and len(chunks) == 7
    assert len(samples.RANDOM_1MIB) == 1024 * 1024
    v1 = [samples.DEDUP_V1[i : i + block] for i in range(0, len(samples.DEDUP_V1), block)]
    v2 = [samples.DEDUP_V2[i : i + block] for i in range(0, len(samples.DEDUP_V2), block)]
    assert len(v1) == 16 and len(v2) == 17
    assert sum(1 for c in v2 if c in v1) == 15
    assert samples.DEDUP_V1 != samples.DEDUP_V2


def test_sample_blobs_mixed_and_deterministic() -> None:
    mixed = samples.every_entry_type_blobs("mixed")
    assert [b.compression for b in mixed] == ["gzip", "zstd", "none"]
    gz = samples.every_entry_type_blobs("gzip")
    assert [b.diff_id for b in mixed] == [b.diff_id for b in gz]
    assert gz == samples.every_entry_type_blobs("gzip")


def test_sample_writers(tmp_path: Path) -> None:
    layout, tag = samples.write_every_entry_type_image(tmp_path / "oci", compression="mixed")
    assert tag == samples.EVERY_ENTRY_TAG
    assert [b.compression for b in read_layers(layout, tag)] == ["gzip", "zstd", "none"]
    samples.write_every_entry_type_image(tmp_path / "oci", tag="gz")
    assert read_manifest(layout, tag) and read_manifest(layout, "gz")
    archive = samples.write_every_entry_type_docker_archive(tmp_path / "img.tar")
    assert "manifest.json" in _members(archive.read_bytes())
