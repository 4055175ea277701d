"""Reading tar layers: every entry type in PAX and GNU form, binary xattrs, long names,
ns mtimes, whiteouts, compression by magic and media type, and every broken-input error."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.entries import Entry, EntryKind
from builder.tarlayer import (
    ByteCounter,
    detect_compression,
    entry_from_tarinfo,
    read_layer,
    read_tar,
)
from imagefs.digest import Digest
from imagefs.errors import SourceError, UnsafePathError
from tests.support.layers import LayerBuilder, xattr_to_pax
from tests.support.oci import LAYER_MEDIA_TYPES, compress

K = EntryKind
CAP = b"\x01\x00\x00\x02" + b"\x00\x04\x00\x00" + bytes(12)
BINARY = b"bar\x00\xffbaz"
LONG_DIR = "long/" + "/".join(f"segment{i:02d}-abcdef" for i in range(9))
LONG_FILE = LONG_DIR + "/file-with-a-long-path.txt"
GZ = LAYER_MEDIA_TYPES["gzip"]
TAR = LAYER_MEDIA_TYPES["none"]


def members(blob: bytes, media_type: str | None = None, **kw: object) -> list[tuple[Entry, bytes]]:
    out = []
    for m in read_layer(io.BytesIO(blob), "layer 1/1", media_type=media_type, **kw):  # type: ignore[arg-type]
        data = b""
        if m.data is not None:
            buf = bytearray(m.entry.size)
            view = memoryview(buf)
            got = 0
            while got < len(buf):
                n = m.data.readinto(view[got:])
                assert n
                got += n
            data = bytes(buf)
        out.append((m.entry, data))
    return out


def by_path(items: list[tuple[Entry, bytes]]) -> dict[bytes, tuple[Entry, bytes]]:
    return {e.path: (e, data) for e, data in items}


def every_type(fmt: str) -> LayerBuilder:
    b = LayerBuilder(fmt, sort_entries=False)  # type: ignore[arg-type]
    b.dir("dir", mode=0o1777, uid=5, gid=6, mtime=1_600_000_000)
    b.file("dir/file", b"hello\n", mode=0o4755, uid=1000, gid=1001)
    b.file("dir/empty", b"")
    b.symlink("dir/sym", "../elsewhere/target")
    b.hardlink("dir/hard", "dir/file")
    b.chardev("dev/null", 1, 3, mode=0o666)
    b.blockdev("dev/sda", 8, 0, mode=0o660, gid=6)
    b.fifo("dev/fifo", mode=0o600)
    b.file(LONG_FILE, b"long\n")
    b.symlink("long/sym", LONG_FILE)
    b.hardlink("long/hard", LONG_FILE)
    if fmt == "pax":
        b.file("xattrs", b"x", xattrs={"security.capability": CAP, "trusted.bin": BINARY})
    else:
        b.file("bigid", b"x", uid=3_000_000, gid=3_000_001)
    return b


@pytest.mark.parametrize("fmt", ["pax", "gnu"])
@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_every_entry_type(fmt: str, compression: str) -> None:
    blob = every_type(fmt).build(compression=compression)  # type: ignore[arg-type]
    got = by_path(members(blob, LAYER_MEDIA_TYPES[compression]))  # type: ignore[index]
    d, _ = got[b"dir"]
    assert (d.kind, d.mode, d.uid, d.gid, d.mtime_ns) == (
        K.DIR,
        0o1777,
        5,
        6,
        1_600_000_000 * 10**9,
    )
    f, data = got[b"dir/file"]
    assert (f.kind, f.mode, f.uid, f.gid, f.size, data) == (
        K.FILE,
        0o4755,
        1000,
        1001,
        6,
        b"hello\n",
    )
    assert got[b"dir/empty"][0].size == 0
    s, _ = got[b"dir/sym"]
    assert (s.kind, s.link) == (K.SYMLINK, b"../elsewhere/target")
    h, _ = got[b"dir/hard"]
    assert (h.kind, h.link) == (K.HARDLINK, b"dir/file")
    c, _ = got[b"dev/null"]
    assert (c.kind, c.rdev_major, c.rdev_minor, c.mode) == (K.CHAR, 1, 3, 0o666)
    blk, _ = got[b"dev/sda"]
    assert (blk.kind, blk.rdev_major, blk.rdev_minor, blk.gid) == (K.BLOCK, 8, 0, 6)
    assert got[b"dev/fifo"][0].kind is K.FIFO
    assert got[LONG_FILE.encode()][1] == b"long\n"
    assert got[b"long/sym"][0].link == LONG_FILE.encode()
    assert got[b"long/hard"][0].link == LONG_FILE.encode()
    if fmt == "pax":
        x, _ = got[b"xattrs"]
        assert x.xattrs == ((b"security.capability", CAP), (b"trusted.bin", BINARY))
    else:
        big, _ = got[b"bigid"]
        assert (big.uid, big.gid) == (3_000_000, 3_000_001)


def test_pax_fractional_mtime_and_libarchive_xattrs() -> None:
    info = tarfile.TarInfo("f")
    info.pax_headers = {
        "mtime": "1700000000.123456789",
        "LIBARCHIVE.xattr.user.with%20space": "AAH/",  # base64 of 00 01 ff, unpadded ok
        "SCHILY.xattr.user.text": xattr_to_pax(b"plain"),
    }
    neg = tarfile.TarInfo("g")
    neg.pax_headers = {"mtime": "-1.5"}
    layer = LayerBuilder("pax").raw(info, b"").raw(neg, b"").tar()
    got = by_path(members(layer))
    f = got[b"f"][0]
    assert f.mtime_ns == 1_700_000_000_123_456_789
    assert f.xattrs == ((b"user.text", b"plain"), (b"user.with space", b"\x00\x01\xff"))
    assert got[b"g"][0].mtime_ns == -1_500_000_000


def test_whiteouts_and_aufs_metadata() -> None:
    b = LayerBuilder("pax").whiteout("etc/passwd").opaque("var/cache").whiteout("top")
    b.file(".wh..wh.plnk/123.456", b"aufs")
    got = sorted((e.kind.value, e.path) for e, _ in members(b.tar()))
    assert got == [("opaque", b"var/cache"), ("whiteout", b"etc/passwd"), ("whiteout", b"top")]


def test_dot_slash_names_and_root_entry() -> None:
    root = tarfile.TarInfo("./")
    root.type = tarfile.DIRTYPE
    root.mode = 0o700
    child = tarfile.TarInfo("./a/./b")
    layer = LayerBuilder("pax", sort_entries=False).raw(root).raw(child, b"z").tar()
    got = members(layer)
    assert [(e.path, e.kind) for e, _ in got] == [(b"", K.DIR), (b"a/b", K.FILE)]
    assert got[0][0].mode == 0o700


@pytest.mark.parametrize(
    ("name", "link", "error"),
    [
        ("../escape", None, UnsafePathError),
        ("a/../../escape", None, UnsafePathError),
        ("/etc/abs", None, UnsafePathError),
        ("link", "../outside", UnsafePathError),
        ("link", "/abs/target", UnsafePathError),
        ("a/" + "n" * 256, None, SourceError),
        ("a\x00b", None, SourceError),
    ],
)
def test_bad_paths(name: str, link: str | None, error: type[Exception]) -> None:
    info = tarfile.TarInfo("placeholder")
    info.pax_headers = {"path": name}
    if link is not None:
        info.type = tarfile.LNKTYPE
        info.pax_headers["linkpath"] = link
    layer = LayerBuilder("pax").raw(info, None if link else b"").tar()
    with pytest.raises(error) as exc:
        members(layer)
    message = str(exc.value)
    assert "layer 1/1" in message and "\n" not in message


def test_compression_detection() -> None:
    assert detect_compression(b"\x1f\x8b\x08\x00", GZ, "l") == "gzip"
    assert detect_compression(b"\x28\xb5\x2f\xfd", None, "l") == "zstd"
    assert detect_compression(b"\x1f\x8b\x08\x00", TAR, "l") == "gzip"  # magic wins
    assert detect_compression(b"ustar", TAR, "l") == "none"
    assert detect_compression(b"", None, "l") == "none"
    with pytest.raises(SourceError, match="unknown layer media type"):
        detect_compression(b"\x1f\x8b", "application/vnd.oci.image.layer.v1.tar+bzip2", "l")
    with pytest.raises(SourceError, match="corrupt gzip"):
        detect_compression(b"ustar", GZ, "l")


def test_mislabelled_layers_are_read_by_magic() -> None:
    tar = LayerBuilder().file("a", b"data").tar()
    for blob, media_type in [
        (compress(tar, "gzip"), TAR),
        (compress(tar, "zstd"), GZ),  # zstd bytes under a gzip type: magic wins
        (tar, None),
    ]:
        assert [(e.path, d) for e, d in members(blob, media_type)] == [(b"a", b"data")]


def test_multi_member_gzip_and_multi_frame_zstd() -> None:
    tar = LayerBuilder().file("a", b"x" * 5000).file("b", b"y" * 7000).tar()
    half = len(tar) // 2
    gz = gzip.compress(tar[:half], mtime=0) + gzip.compress(tar[half:], mtime=0)
    zc = zstandard.ZstdCompressor()
    zs = zc.compress(tar[:half]) + zc.compress(tar[half:])
    for blob in (gz, zs):
        assert [d for _, d in members(blob)] == [b"x" * 5000, b"y" * 7000]


def test_empty_layers() -> None:
    assert members(b"") == []
    assert members(compress(b"", "gzip")) == []
    assert members(bytes(1024)) == []  # end-of-archive blocks only
    assert members(compress(bytes(10240), "zstd")) == []


def flip(data: bytes, at: int) -> bytes:
    at %= len(data)
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def _big_layer() -> bytes:
    return LayerBuilder().file("a", bytes(range(256)) * 4000).file("b", b"tail").tar()


@pytest.mark.parametrize(
    ("blob", "media_type", "what"),
    [
        (compress(_big_layer(), "gzip")[:-2000], GZ, "truncated"),
        (flip(compress(_big_layer(), "gzip"), -6), GZ, "corrupt gzip stream: CRC"),
        (flip(compress(_big_layer(), "gzip"), 10), GZ, "corrupt gzip"),
        (compress(_big_layer(), "zstd")[:-100], None, "zstd|truncated"),
        (flip(compress(_big_layer(), "zstd"), 5), None, "corrupt zstd"),
        (_big_layer()[:700_000], TAR, "truncated"),
        (_big_layer()[:1000], TAR, "truncated"),
        (b"\x00" * 100 + b"garbage" * 200, TAR, "truncated|corrupt"),
        (b"x" * 512, TAR, "truncated|corrupt"),
    ],
)
def test_broken_streams(blob: bytes, media_type: str | None, what: str) -> None:
    with pytest.raises(SourceError, match=what) as exc:
        members(blob, media_type)
    assert "layer 1/1" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_digest_is_verified_and_bytes_counted() -> None:
    blob = compress(LayerBuilder().file("a", b"abc").tar(), "gzip")
    counter = ByteCounter()
    assert members(blob, GZ, digest=Digest.of(blob), counter=counter)
    assert counter.value == len(blob)
    with pytest.raises(SourceError, match="does not match its digest"):
        members(blob, GZ, digest=Digest.of(b"other"))
    # zstd without frame checksums: corrupt file data decodes "fine"; the digest catches it
    good = compress(_big_layer(), "zstd")
    bad = flip(good, len(good) // 2)
    with pytest.raises(SourceError, match=r"digest|corrupt"):
        members(bad, digest=Digest.of(good))


def test_unsupported_type() -> None:
    info = tarfile.TarInfo("volume")
    info.type = tarfile.GNUTYPE_LONGNAME[:0] + b"V"  # GNU volume header
    layer = LayerBuilder("gnu").raw(info).tar()
    with pytest.raises(SourceError, match="unsupported tar type"):
        members(layer)


def test_read_tar_on_plain_stream_skips_unread_data() -> None:
    tar = LayerBuilder().file("a", b"1" * 3000).file("b", b"2" * 10).tar()
    names = [m.entry.path for m in read_tar(io.BytesIO(tar))]  # data never read
    assert names == [b"a", b"b"]


# ---------------------------------------------------------------------------------------------
# The fast ustar/GNU header path agrees with tarfile on whatever tarfile writes

_names = st.text(alphabet=st.sampled_from("abc/é-_."), min_size=1, max_size=140).filter(
    lambda n: normalize_ok(n)
)


def normalize_ok(name: str) -> bool:
    parts = [p for p in name.split("/") if p and p != "."]
    ok = bool(parts) and ".." not in parts and not name.startswith("/")
    return ok and all(len(p.encode()) <= 255 for p in parts)


@st.composite
def tar_members(draw: st.DrawFn) -> tarfile.TarInfo:
    info = tarfile.TarInfo(draw(_names))
    info.type = draw(st.sampled_from(list(b"0123456")).map(lambda b: bytes([b])))
    info.mode = draw(st.integers(0, 0o7777))
    info.uid = draw(st.integers(0, 2**21 - 1) | st.integers(2**21, 2**32 - 1))
    info.gid = draw(st.integers(0, 70000))
    info.mtime = draw(st.integers(0, 2**33 - 1))
    info.uname = info.gname = ""
    if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = draw(_names)
    if info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor = draw(st.integers(0, 4095))
        info.devminor = draw(st.integers(0, 2**20))
    return info


@settings(max_examples=150, deadline=None)
@given(
    st.lists(tar_members(), min_size=1, max_size=6),
    st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
    st.binary(max_size=700),
)
def test_fast_headers_agree_with_tarfile(
    infos: list[tarfile.TarInfo], fmt: int, data: bytes
) -> None:
    buf = io.BytesIO()
    try:
        with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8") as tar:
            for info in infos:
                payload = data if info.type == tarfile.REGTYPE else None
                info.size = len(data) if payload is not None else 0
                tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    except ValueError:
        return  # not representable in this format (tarfile refuses)
    raw = buf.getvalue()
    expected = []
    with tarfile.open(fileobj=io.BytesIO(raw), encoding="utf-8", errors="surrogateescape") as t:
        for info in t:
            entry = entry_from_tarinfo(info)
            if entry is not None:
                body = t.extractfile(info) if entry.kind is K.FILE else None
                expected.append((entry, body.read() if body else b""))
    got = []
    for m in read_tar(io.BytesIO(raw)):
        got.append((m.entry, bytes(_read_all(m.data, m.entry.size)) if m.data else b""))
    assert got == expected


def _read_all(data: object, size: int) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = data.readinto(view[got:])  # type: ignore[attr-defined]
        assert n
        got += n
    return buf
