"""Hostile images through the real CLI: every case has a defined outcome (a one-line error
with its exit code, or a stated sanitizing rule), and `imagefs unpack` never writes outside
DIR. Each test is a row of docs/RELIABILITY.md (area "hostile").

Rules these tests pin down:

* `..` components and absolute member names (and hard-link targets) are rejected: exit 3.
* Symlinks in a member's parent components are resolved inside the image, like
  `securejoin`: followed, clamped at the image root. The entry lands at the resolved path
  inside the tree; the symlink itself is kept verbatim. Nothing is ever followed on disk.
* Symlinks pointing outside the root are kept as symlinks, verbatim; unpack creates them
  without following, a later entry of the same name replaces the link (never writes
  through it), and a mount serves them read-only.
* Hard links to missing targets, to directories, and link loops are rejected (exit 3);
  a hard link to itself is a no-op.
* Duplicate entries within a layer: the last one wins, as tar extraction does.
* Names are bytes: invalid UTF-8 is kept byte-exact; NUL, over-long components and empty
  names are rejected (exit 3); `//` and `/./` collapse.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import stat
import struct
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest
import zstandard

from tests.conftest import REPO, Env, Mounter, Reliability
from tests.support.layers import LayerBuilder
from tests.support.oci import (
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_ZSTD,
    LayerBlob,
    write_oci_layout,
)

GIB = 1 << 30
TIB = 1 << 40
PROBE = "imagefs-hostile-probe"  # a name no real system has in /etc


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("imagefs: "), lines[0]
    return lines[0]


def _info(
    name: str | bytes, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str | bytes = ""
) -> tarfile.TarInfo:
    if isinstance(name, bytes):
        name = name.decode("utf-8", "surrogateescape")
    if isinstance(link, bytes):
        link = link.decode("utf-8", "surrogateescape")
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.linkname = link
    info.mtime = 1700000000
    return info


def _raw_tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A PAX tar of the members as given (no normalization, no sorting)."""
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape"
    ) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


class Jail:
    """A directory holding the unpack target and a sentinel tree beside it; `escaped()`
    lists anything that appeared outside the target."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "jail"
        self.dest = self.root / "dest"
        self.outside = self.root / "outside"
        self.outside.mkdir(parents=True)
        (self.outside / "canary").write_bytes(b"canary\n")
        self.before = self._snapshot()

    def _snapshot(self) -> dict[str, tuple[int, int, bytes]]:
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            if Path(dirpath) == self.root and "dest" in dirnames:
                dirnames.remove("dest")
            for name in dirnames + filenames:
                p = Path(dirpath, name)
                st = p.lstat()
                data = p.read_bytes() if stat.S_ISREG(st.st_mode) else b""
                out[str(p.relative_to(self.root))] = (st.st_mode, st.st_nlink, data)
        return out

    def escaped(self) -> list[str]:
        after = self._snapshot()
        changed = [k for k in after if self.before.get(k) != after[k]]
        gone = [k for k in self.before if k not in after]
        etc_probe = [f"/etc/{PROBE}"] if os.path.lexists(f"/etc/{PROBE}") else []
        return sorted(changed + gone + etc_probe)


@pytest.fixture
def jail(tmp_path: Path) -> Iterator[Jail]:
    j = Jail(tmp_path)
    yield j
    if os.path.lexists(f"/etc/{PROBE}"):  # never expected; clean up if a bug put it there
        os.unlink(f"/etc/{PROBE}")


def _image(env: Env, tmp: Path, tars: list[bytes], name: str = "img") -> str:
    """Convert an OCI layout of these uncompressed layer tars; the imagefs image's ref."""
    src = tmp / f"{name}-src"
    write_oci_layout(src, [LayerBlob.from_tar(t, "gzip") for t in tars], tag="t")
    out = tmp / f"{name}-out"
    env.run("convert", f"oci:{src}:t", f"oci:{out}:t")
    return f"oci:{out}:t"


def _convert_fails(env: Env, tmp: Path, tars: list[bytes]) -> str:
    src = tmp / "bad-src"
    write_oci_layout(src, [LayerBlob.from_tar(t, "gzip") for t in tars], tag="t")
    target = tmp / "bad-out"
    res = env.run("convert", f"oci:{src}:t", f"oci:{target}:t", check=False)
    assert res.returncode == 3, res.stderr
    assert not target.exists(), "a rejected image left a target behind"
    return _one_line(res.stderr)


def _tree(root: Path) -> dict[str, tuple[str, bytes]]:
    """path -> (kind, content or link target) of everything below root, no following."""
    out: dict[str, tuple[str, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p).encode())
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", b"")
            else:
                out[rel] = ("file", p.read_bytes())
    return out


# ---------------------------------------------------------------------------------------------
# `..` and absolute paths


UNSAFE_NAMES: dict[str, tuple[list[tuple[tarfile.TarInfo, bytes | None]], tuple[str, ...]]] = {
    "dotdot": ([(_info("../escape"), b"x")], ("'..'",)),
    "inner-dotdot": ([(_info("a/b/../../../escape"), b"x")], ("'..'",)),
    "trailing-dotdot": ([(_info("a/..", tarfile.DIRTYPE), None)], ("'..'",)),
    "absolute": ([(_info("/etc/" + PROBE), b"x")], ("absolute",)),
    "absolute-dir": ([(_info("/", tarfile.DIRTYPE), None)], ("absolute",)),
    "hardlink-dotdot": (
        [(_info("f"), b"x"), (_info("h", tarfile.LNKTYPE, link="../../etc/passwd"), None)],
        ("'..'",),
    ),
    "hardlink-absolute": (
        [(_info("h", tarfile.LNKTYPE, link="/etc/passwd"), None)],
        ("absolute",),
    ),
    "whiteout-dotdot": ([(_info("a/.wh.."), b"")], ("names no removable entry",)),
}


@pytest.mark.reliability(
    "hostile",
    "layer entries (files, dirs, hard-link targets, whiteouts) named with '..' or absolute",
    "convert exits 3 with one line naming the entry; nothing is written at the target",
)
@pytest.mark.parametrize("case", sorted(UNSAFE_NAMES))
def test_dotdot_and_absolute_names_are_rejected(
    case: str, imagefs_env: Env, tmp_path: Path, reliability: Reliability
) -> None:
    members, words = UNSAFE_NAMES[case]
    line = _convert_fails(imagefs_env, tmp_path, [_raw_tar(members)])
    assert any(w in line for w in words), line
    assert os.path.lexists(f"/etc/{PROBE}") is False
    reliability.record(inputs=1)


# ---------------------------------------------------------------------------------------------
# symlinked parents


def _symlink_parent_cases(outside: Path) -> dict[str, tuple[list[bytes], str, str, bytes]]:
    """case -> (layer tars, symlink path, its target, resolved path of `payload`)."""
    abs_out = str(outside)
    return {
        "abs-same-layer": (
            [_raw_tar([(_info("a", tarfile.SYMTYPE, link=abs_out), None), (_info("a/p"), b"P")])],
            "a",
            abs_out,
            abs_out.lstrip("/").encode() + b"/p",
        ),
        "etc-next-layer": (
            [
                _raw_tar([(_info("a", tarfile.SYMTYPE, link="/etc"), None)]),
                _raw_tar([(_info(f"a/{PROBE}"), b"P")]),
            ],
            "a",
            "/etc",
            f"etc/{PROBE}".encode(),
        ),
        "relative-up": (
            [
                _raw_tar(
                    [
                        (_info("d", tarfile.DIRTYPE), None),
                        (_info("d/a", tarfile.SYMTYPE, link="../../../x"), None),
                        (_info("d/a/p"), b"P"),
                    ]
                )
            ],
            "d/a",
            "../../../x",
            b"x/p",
        ),
        "chain": (
            [
                _raw_tar(
                    [
                        (_info("a", tarfile.SYMTYPE, link="b/c"), None),
                        (_info("b", tarfile.SYMTYPE, link="../../.."), None),
                        (_info("a/p"), b"P"),
                    ]
                )
            ],
            "a",
            "b/c",
            b"c/p",
        ),
        "hardlink-via-symlink": (
            [
                _raw_tar(
                    [
                        (_info("etc", tarfile.DIRTYPE), None),
                        (_info(f"etc/{PROBE}"), b"P"),
                        (_info("a", tarfile.SYMTYPE, link="/etc"), None),
                        (_info("h", tarfile.LNKTYPE, link=f"a/{PROBE}"), None),
                    ]
                )
            ],
            "a",
            "/etc",
            b"h",
        ),
    }


@pytest.mark.reliability(
    "hostile",
    "a layer makes `a` a symlink (to /etc, an absolute path outside, ../../x, a chain) and "
    "then has `a/p` (same or next layer, also as a hard-link target)",
    "the entry lands inside the image at the path the symlink resolves to, clamped at the "
    "image root (securejoin); the symlink is kept verbatim; unpack and mount write nothing "
    "outside DIR",
)
@pytest.mark.parametrize(
    "case", ["abs-same-layer", "etc-next-layer", "relative-up", "chain", "hardlink-via-symlink"]
)
def test_symlinked_parents_resolve_inside_the_image(
    case: str,
    imagefs_env: Env,
    mount_image: Mounter,
    tmp_path: Path,
    jail: Jail,
    reliability: Reliability,
) -> None:
    tars, link, target, resolved = _symlink_parent_cases(jail.outside)[case]
    image = _image(imagefs_env, tmp_path, tars)
    imagefs_env.run("unpack", image, str(jail.dest))
    assert os.readlink(jail.dest / link) == target
    payload = jail.dest / os.fsdecode(resolved)
    assert payload.lstat().st_mode & stat.S_IFMT(0xFFFF) == stat.S_IFREG
    assert payload.read_bytes() == b"P"
    assert jail.escaped() == []
    assert not (jail.outside / "p").exists()
    mnt = mount_image(image).path
    assert os.readlink(mnt / link) == target
    assert stat.S_ISREG(os.lstat(mnt / os.fsdecode(resolved)).st_mode)
    assert (mnt / os.fsdecode(resolved)).read_bytes() == b"P"
    assert jail.escaped() == []
    reliability.record(inputs=1)


@pytest.mark.reliability(
    "hostile",
    "symlink loop in a member's parent (a -> b, b -> a, then a/f)",
    "convert exits 3: 'too many levels of symbolic links'",
)
def test_symlink_loop_in_parent_is_rejected(
    imagefs_env: Env, tmp_path: Path, reliability: Reliability
) -> None:
    tar = _raw_tar(
        [
            (_info("a", tarfile.SYMTYPE, link="b"), None),
            (_info("b", tarfile.SYMTYPE, link="a"), None),
            (_info("a/f"), b"x"),
        ]
    )
    assert "too many levels of symbolic links" in _convert_fails(imagefs_env, tmp_path, [tar])
    reliability.record(inputs=1)


# ---------------------------------------------------------------------------------------------
# symlinks pointing outside the root


@pytest.mark.reliability(
    "hostile",
    "symlinks to absolute and ../ paths outside the root, a dir symlink to a host directory, "
    "and a later layer replacing such a symlink with a file or directory",
    "kept as symlinks with verbatim targets; unpack creates them without following and a "
    "replacing entry replaces the link itself; the mount is read-only (EROFS); nothing "
    "outside DIR changes",
)
def test_symlinks_out_of_the_root_are_kept_never_followed(
    imagefs_env: Env,
    mount_image: Mounter,
    tmp_path: Path,
    jail: Jail,
    reliability: Reliability,
) -> None:
    canary = str(jail.outside / "canary")
    lower = _raw_tar(
        [
            (_info("abs", tarfile.SYMTYPE, link="/etc/shadow"), None),
            (_info("rel", tarfile.SYMTYPE, link="../../../../../outside/canary"), None),
            (_info("hostdir", tarfile.SYMTYPE, link=str(jail.outside)), None),
            (_info("victim", tarfile.SYMTYPE, link=canary), None),
            (_info("victimdir", tarfile.SYMTYPE, link=str(jail.outside)), None),
        ]
    )
    upper = _raw_tar(
        [
            (_info("victim"), b"replaced\n"),
            (_info("victimdir", tarfile.DIRTYPE), None),
            (_info("victimdir/canary"), b"pwned\n"),
        ]
    )
    image = _image(imagefs_env, tmp_path, [lower, upper])
    imagefs_env.run("unpack", image, str(jail.dest))
    got = _tree(jail.dest)
    assert got == {
        "abs": ("link", b"/etc/shadow"),
        "rel": ("link", b"../../../../../outside/canary"),
        "hostdir": ("link", str(jail.outside).encode()),
        "victim": ("file", b"replaced\n"),
        "victimdir": ("dir", b""),
        "victimdir/canary": ("file", b"pwned\n"),
    }
    assert (jail.outside / "canary").read_bytes() == b"canary\n"
    assert jail.escaped() == []
    mnt = mount_image(image).path
    assert os.readlink(mnt / "abs") == "/etc/shadow"
    assert os.readlink(mnt / "hostdir") == str(jail.outside)
    assert (mnt / "victim").read_bytes() == b"replaced\n"
    for path in (mnt / "new", mnt / "victimdir" / "new"):
        with pytest.raises(OSError) as info:
            path.write_bytes(b"x")
        assert info.value.errno == errno.EROFS
    assert jail.escaped() == []
    reliability.record(inputs=5)


# ---------------------------------------------------------------------------------------------
# hard links


BAD_HARDLINKS: dict[str, tuple[list[tuple[tarfile.TarInfo, bytes | None]], tuple[str, ...]]] = {
    "missing-target": (
        [(_info("h", tarfile.LNKTYPE, link="nowhere"), None)],
        ("'h'", "missing", "'nowhere'"),
    ),
    "to-directory": (
        [(_info("d", tarfile.DIRTYPE), None), (_info("h", tarfile.LNKTYPE, link="d"), None)],
        ("'h'", "directory", "'d'"),
    ),
    "to-root": (
        [(_info("h", tarfile.LNKTYPE, link="./"), None)],
        ("'h'", "directory"),
    ),
    "loop": (
        [
            (_info("a", tarfile.LNKTYPE, link="b"), None),
            (_info("b", tarfile.LNKTYPE, link="a"), None),
        ],
        ("'a'", "missing", "'b'"),
    ),
    "self-missing": ([(_info("a", tarfile.LNKTYPE, link="a"), None)], ("'a'", "missing")),
    "later-target": (
        [(_info("h", tarfile.LNKTYPE, link="f"), None), (_info("f"), b"x")],
        ("'h'", "missing", "'f'"),
    ),
}


@pytest.mark.reliability(
    "hostile",
    "hard links to missing targets, to directories (and the root), loops, self-links to "
    "nothing, links to a target that comes later",
    "convert exits 3 with one line naming the link and its target",
)
@pytest.mark.parametrize("case", sorted(BAD_HARDLINKS))
def test_bad_hard_links_are_rejected(
    case: str, imagefs_env: Env, tmp_path: Path, reliability: Reliability
) -> None:
    members, words = BAD_HARDLINKS[case]
    line = _convert_fails(imagefs_env, tmp_path, [_raw_tar(members)])
    assert "hard link" in line, line
    for w in words:
        assert w in line, line
    reliability.record(inputs=1)


@pytest.mark.reliability(
    "hostile",
    "a hard link to itself over an existing file; a hard link to a symlink pointing outside",
    "self-link is a no-op (one inode, nlink 1); a link to a symlink is a symlink with the "
    "same verbatim target; nothing outside DIR changes",
)
def test_benign_odd_hard_links(
    imagefs_env: Env, tmp_path: Path, jail: Jail, reliability: Reliability
) -> None:
    tar = _raw_tar(
        [
            (_info("f"), b"data"),
            (_info("f", tarfile.LNKTYPE, link="f"), None),
            (_info("s", tarfile.SYMTYPE, link=str(jail.outside / "canary")), None),
            (_info("hs", tarfile.LNKTYPE, link="s"), None),
        ]
    )
    image = _image(imagefs_env, tmp_path, [tar])
    imagefs_env.run("unpack", image, str(jail.dest))
    assert (jail.dest / "f").read_bytes() == b"data"
    assert (jail.dest / "f").stat().st_nlink == 1
    assert os.readlink(jail.dest / "hs") == str(jail.outside / "canary")
    assert os.readlink(jail.dest / "s") == str(jail.outside / "canary")
    assert jail.escaped() == []
    reliability.record(inputs=2)


# ---------------------------------------------------------------------------------------------
# absurd sizes and counts


def _tar_claiming(size: int, fmt: Literal[0, 1, 2]) -> bytes:
    """A tar whose only member claims `size` bytes but carries 4 KiB."""
    info = _info("huge.bin", size=size)
    return info.tobuf(fmt, "utf-8", "surrogateescape") + b"\xab" * 4096


@pytest.mark.reliability(
    "hostile",
    "a tar member header claiming 1 TiB (PAX size record, GNU base-256) over 4 KiB of data",
    "convert exits 3 'truncated or corrupt tar stream' after reading what is there; "
    "nothing is allocated for the claim",
)
@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_member_claiming_a_tebibyte(
    fmt: Literal[0, 1, 2], imagefs_env: Env, tmp_path: Path, reliability: Reliability
) -> None:
    line = _convert_fails(imagefs_env, tmp_path, [_tar_claiming(TIB, fmt)])
    assert "truncated" in line, line
    reliability.record(inputs=1)


def _peak_rss_run(env: Env, *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    res = subprocess.run(
        ["/usr/bin/time", "-f", "peak-kib=%M", sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        env=env.vars,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    peak = int(res.stderr.rsplit("peak-kib=", 1)[1].split()[0])
    return res, peak // 1024


def _bomb(path: Path, size: int, compression: str) -> LayerBlob:
    """A layer of one file of `size` zeros, compressed as a stream (small on disk)."""
    head = _info("zeros.bin", size=size).tobuf(tarfile.PAX_FORMAT)
    tail = bytes(-size % 512 + 1024)
    digest = hashlib.sha256(head)
    zeros = bytes(8 << 20)
    with open(path, "wb") as f:
        if compression == "zstd":
            writer: zstandard.ZstdCompressionWriter | gzip.GzipFile = zstandard.ZstdCompressor(
                level=1
            ).stream_writer(f, closefd=False)
        else:
            writer = gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0)
        with writer:
            writer.write(head)
            for _ in range(size // len(zeros)):
                writer.write(zeros)
                digest.update(zeros)
            writer.write(tail)
            digest.update(tail)
    media = MEDIA_TYPE_LAYER_ZSTD if compression == "zstd" else MEDIA_TYPE_LAYER_GZIP
    return LayerBlob(path.read_bytes(), media, "sha256:" + digest.hexdigest())


@pytest.mark.reliability(
    "hostile",
    "decompression bomb: a ~330 KiB zstd layer expanding to a 10 GiB file of zeros "
    "(and a gzip layer expanding to 1 GiB)",
    "convert streams it with bounded memory (peak RSS < 300 MiB) and succeeds: the file "
    "keeps its size, every chunk dedups to one stored chunk; a mount reads zeros at its end",
)
@pytest.mark.parametrize(("compression", "size"), [("zstd", 10 * GIB), ("gzip", GIB)])
def test_decompression_bomb_is_bounded(
    compression: str,
    size: int,
    imagefs_env: Env,
    mount_image: Mounter,
    tmp_path: Path,
    reliability: Reliability,
) -> None:
    blob = _bomb(tmp_path / "layer", size, compression)
    assert len(blob.data) < size // 500  # gzip tops out near 1:1000, zstd far beyond
    write_oci_layout(tmp_path / "src", [blob], tag="t")
    out = tmp_path / "out"
    res, peak_mib = _peak_rss_run(
        imagefs_env, "convert", f"oci:{tmp_path / 'src'}:t", f"oci:{out}:t", "--json"
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["bytes_in"] >= size
    assert report["chunks_unique"] == 1
    assert report["chunks_total"] >= size // (256 << 10)
    assert peak_mib < 300, f"convert peaked at {peak_mib} MiB"
    stored = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert stored < 4 << 20
    mnt = mount_image(f"oci:{out}:t").path
    assert (mnt / "zeros.bin").stat().st_size == size
    with open(mnt / "zeros.bin", "rb") as f:
        f.seek(size - 4096)
        assert f.read() == bytes(4096)
    reliability.record(inputs=1)


def _zstd_frame_claiming(claim: int, stored_size: int) -> bytes:
    """A valid-looking zstd frame of exactly `stored_size` bytes whose header claims
    `claim` bytes of content (single segment, 8-byte content size, one raw block)."""
    n = stored_size - 16
    assert 0 < n < 128 << 10
    return (
        b"\x28\xb5\x2f\xfd"
        + bytes([0xE0])  # FCS 8 bytes, single segment, no checksum, no dictionary
        + struct.pack("<Q", claim)
        + (1 | (n << 3)).to_bytes(3, "little")  # last block, raw, n bytes
        + b"z" * n
    )


@pytest.mark.reliability(
    "hostile",
    "a blob whose zstd chunk frame claims 1 TiB of content for a chunk recorded as 12 KiB",
    "refused before decompressing: unpack and check exit 4 naming the chunk ('frame claims'); "
    "a read through the mount fails with EIO; nothing is allocated for the claim",
)
def test_chunk_frame_claiming_more_than_its_size_is_refused(
    imagefs_env: Env, mount_image: Mounter, tmp_path: Path, reliability: Reliability
) -> None:
    from imagefs.format import ChunkCodec, Compression

    data = b"a compressible line of text\n" * 440  # one chunk (< the 16 KiB minimum)
    comp, packed = ChunkCodec().encode(data)
    assert comp is Compression.ZSTD
    image = _image(imagefs_env, tmp_path, [LayerBuilder().file("f.txt", data).tar()])
    out = tmp_path / "img-out"
    patched = 0
    for blob in (out / "blobs" / "sha256").iterdir():
        raw = blob.read_bytes()
        at = raw.find(packed)
        if at >= 0:
            evil = _zstd_frame_claiming(TIB, len(packed))
            blob.write_bytes(raw[:at] + evil + raw[at + len(packed) :])
            patched += 1
    assert patched == 1
    res, peak_mib = _peak_rss_run(imagefs_env, "unpack", image, str(tmp_path / "dest"))
    assert res.returncode == 4, res.stderr
    assert "frame claims" in res.stderr.splitlines()[0], res.stderr
    assert peak_mib < 300
    res = imagefs_env.run("check", image, check=False)
    assert res.returncode == 4, res.stderr
    mnt = mount_image(image).path
    with pytest.raises(OSError) as info:
        (mnt / "f.txt").read_bytes()
    assert info.value.errno == errno.EIO
    reliability.record(inputs=1)


def _replace_bootstrap(layout: Path, stored: bytes) -> None:
    """Put `stored` (the bootstrap blob's bytes, as is) in the only image of `layout`."""
    index = json.loads((layout / "index.json").read_text())
    mdesc = index["manifests"][0]
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / mdesc["digest"].split(":")[1]).read_text())
    boot = manifest["layers"][-1]
    digest = hashlib.sha256(stored).hexdigest()
    (blobs / digest).write_bytes(stored)
    boot["digest"], boot["size"] = f"sha256:{digest}", len(stored)
    mbytes = json.dumps(manifest).encode()
    mdigest = hashlib.sha256(mbytes).hexdigest()
    (blobs / mdigest).write_bytes(mbytes)
    mdesc["digest"], mdesc["size"] = f"sha256:{mdigest}", len(mbytes)
    (layout / "index.json").write_text(json.dumps(index))


def _bootstrap_raw(layout: Path) -> bytes:
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_text())
    stored = (blobs / manifest["layers"][-1]["digest"].split(":")[1]).read_bytes()
    return zstandard.ZstdDecompressor().decompress(stored)


def _patched_section(raw: bytes, section: int, offset: int, length: int) -> bytes:
    at = 20 + 16 * section  # after the header (magic, major, minor, flags, count)
    return raw[:at] + struct.pack("<QQ", offset, length) + raw[at + 16 :]


HOSTILE_BOOTSTRAPS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    # stored frames
    "frame-claims-1TiB": (lambda raw: _zstd_frame_claiming(TIB, 200), "impossible size"),
    "frame-claims-3GiB": (lambda raw: _zstd_frame_claiming(3 * GIB, 200), "impossible size"),
    # raw bootstraps, recompressed honestly
    "section-count-4G": (
        lambda raw: raw[:16] + struct.pack("<I", 0xFFFFFFFF) + raw[20:],
        "section table is truncated",
    ),
    "inodes-claim-2^60-bytes": (
        lambda raw: _patched_section(raw, 0, struct.unpack_from("<Q", raw, 20)[0], 1 << 60),
        "outside the bootstrap",
    ),
    "chunks-claim-2^40-records": (
        lambda raw: _patched_section(raw, 4, 8, (1 << 40) * 48),
        "outside the bootstrap",
    ),
}


@pytest.mark.reliability(
    "hostile",
    "a bootstrap whose zstd frame claims 1 TiB or 3 GiB, or whose header claims 4G sections, "
    "2^60 bytes of inodes, or 2^40 chunk records",
    "mount, unpack, check and inspect exit 4 with one line; nothing is allocated for the claim "
    "(peak RSS < 300 MiB)",
)
@pytest.mark.parametrize("case", sorted(HOSTILE_BOOTSTRAPS))
def test_hostile_bootstrap_is_refused(
    case: str, imagefs_env: Env, tmp_path: Path, reliability: Reliability
) -> None:
    make, words = HOSTILE_BOOTSTRAPS[case]
    image = _image(imagefs_env, tmp_path, [LayerBuilder().file("a.txt", b"hello\n").tar()])
    layout = tmp_path / "img-out"
    raw = _bootstrap_raw(layout)
    stored = make(raw)
    if not case.startswith("frame-"):
        stored = zstandard.ZstdCompressor(write_content_size=True).compress(stored)
    _replace_bootstrap(layout, stored)
    for command in (("check", image), ("inspect", image), ("unpack", image, str(tmp_path / "d"))):
        res, peak_mib = _peak_rss_run(imagefs_env, *command)
        assert res.returncode == 4, (command, res.stderr)
        line = res.stderr.splitlines()[0]
        assert line.startswith("imagefs: ") and words in line, line
        assert peak_mib < 300, (command, peak_mib)
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())
    (tmp_path / "mnt").mkdir()
    res = imagefs_env.run("mount", image, str(tmp_path / "mnt"), check=False)
    assert res.returncode == 4, res.stderr
    assert words in _one_line(res.stderr)
    reliability.record(inputs=1)


# ---------------------------------------------------------------------------------------------
# deep nesting


DEPTH = 10_000


def _walk_down(top: Path, depth: int, leaf: str) -> bytes:
    """Read `d/d/.../d/leaf` (depth components) one openat at a time (the path is far
    beyond PATH_MAX); with `leaf` "d", return the names found at `depth`."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        assert sorted(os.listdir(fd)) == [leaf]
        if leaf == "d":
            return b"d"
        lf = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
        try:
            return os.read(lf, 100)
        finally:
            os.close(lf)
    finally:
        os.close(fd)


@pytest.mark.reliability(
    "hostile",
    "10,000 nested directories (a 20,000-byte PAX path)",
    "converted, checked and unpacked correctly (unpack is iterative and holds at most 64 "
    "directory descriptors; the leaf reads back); the mount serves the nesting (walked to "
    "depth 1,000: the FUSE layer resolves whole paths, quadratic in depth)",
)
def test_ten_thousand_nested_directories(
    imagefs_env: Env, mount_image: Mounter, tmp_path: Path, jail: Jail, reliability: Reliability
) -> None:
    deep = "/".join(["d"] * DEPTH)
    image = _image(imagefs_env, tmp_path, [LayerBuilder().file(deep + "/leaf", b"deep\n").tar()])
    imagefs_env.run("check", image)
    try:
        imagefs_env.run("unpack", image, str(jail.dest))
        assert _walk_down(jail.dest, DEPTH, "leaf") == b"deep\n"
        assert jail.escaped() == []
    finally:  # pytest's (recursive) tmp_path cleanup cannot remove 10,000 levels; rm can
        subprocess.run(["rm", "-rf", str(jail.dest)], check=True)
    mnt = mount_image(image).path
    assert _walk_down(mnt, 1_000, "d") == b"d"
    reliability.record(inputs=1)


# ---------------------------------------------------------------------------------------------
# odd names


def _pax_member(records: dict[bytes, bytes], data: bytes = b"x") -> bytes:
    """A tar member whose name (and more) come from raw PAX records, whatever bytes they hold."""
    body = b""
    for key, value in records.items():
        rec = b" " + key + b"=" + value + b"\n"
        n = len(rec) + 1
        while len(str(n)) + len(rec) != n:
            n += 1
        body += str(n).encode() + rec
    pax = _info("././@PaxHeader", tarfile.XHDTYPE, size=len(body)).tobuf(tarfile.USTAR_FORMAT)
    typ = tarfile.SYMTYPE if b"linkpath" in records else tarfile.REGTYPE
    member = _info("placeholder", typ, size=0 if typ == tarfile.SYMTYPE else len(data))
    head = member.tobuf(tarfile.USTAR_FORMAT)
    out = pax + body + bytes(-len(body) % 512) + head
    if typ == tarfile.REGTYPE:
        out += data + bytes(-len(data) % 512)
    return out


BAD_NAMES = {
    "nul-in-path": ({b"path": b"a\0b"}, "NUL"),
    "nul-in-symlink-target": ({b"path": b"s", b"linkpath": b"/etc\0x"}, "invalid target"),
    "empty-symlink-target": ({b"path": b"s", b"linkpath": b""}, "invalid target"),
    "component-over-255": ({b"path": b"a/" + b"n" * 256}, "longer than 255"),
    "dotdot-in-pax-path": ({b"path": b"x/../../y"}, "'..'"),
    "absolute-pax-path": ({b"path": b"/" + PROBE.encode()}, "absolute"),
}


@pytest.mark.reliability(
    "hostile",
    "PAX path records with NUL, '..', a leading '/', a 256-byte component; symlink "
    "targets with NUL or empty",
    "convert exits 3 with one line naming the entry (bytes escaped)",
)
@pytest.mark.parametrize("case", sorted(BAD_NAMES))
def test_bad_pax_names_are_rejected(
    case: str, imagefs_env: Env, tmp_path: Path, reliability: Reliability
) -> None:
    records, words = BAD_NAMES[case]
    line = _convert_fails(imagefs_env, tmp_path, [_pax_member(records) + bytes(1024)])
    assert words in line, line
    assert "\0" not in line
    reliability.record(inputs=1)


def _read(path: bytes) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.reliability(
    "hostile",
    "names of invalid UTF-8, control characters and '//' or '/./' (PAX path records), "
    "symlink targets of invalid UTF-8",
    "names are bytes: kept byte-exact through convert, unpack and mount; '//' and '/./' "
    "collapse to one separator",
)
def test_odd_names_are_kept_byte_exact(
    imagefs_env: Env, mount_image: Mounter, tmp_path: Path, jail: Jail, reliability: Reliability
) -> None:
    tar = (
        _pax_member({b"path": b"caf\xe9"}, b"latin1")
        + _pax_member({b"path": b"\xff\xfe/\x80"}, b"bytes")
        + _pax_member({b"path": b"nl\nand\ttab\x1b"}, b"ctl")
        + _pax_member({b"path": b"s//t/./u"}, b"u")
        + _pax_member({b"path": b"ln", b"linkpath": b"\xe9/../x"})
        + bytes(1024)
    )
    image = _image(imagefs_env, tmp_path, [tar])
    imagefs_env.run("unpack", image, str(jail.dest))
    d = bytes(jail.dest)
    names = [b"caf\xe9", b"\xff\xfe", b"nl\nand\ttab\x1b", b"s", b"ln"]
    assert sorted(os.listdir(d)) == sorted(names)
    assert _read(d + b"/caf\xe9") == b"latin1"
    assert _read(d + b"/\xff\xfe/\x80") == b"bytes"
    assert _read(d + b"/nl\nand\ttab\x1b") == b"ctl"
    assert _read(d + b"/s/t/u") == b"u"
    assert os.readlink(d + b"/ln") == b"\xe9/../x"
    assert jail.escaped() == []
    mnt = bytes(mount_image(image).path)
    assert sorted(os.listdir(mnt)) == sorted(os.listdir(d))
    assert _read(mnt + b"/\xff\xfe/\x80") == b"bytes"
    assert os.readlink(mnt + b"/ln") == b"\xe9/../x"
    reliability.record(inputs=5)


# ---------------------------------------------------------------------------------------------
# duplicates within a layer


@pytest.mark.reliability(
    "hostile",
    "duplicate entries within one layer: file twice, file then dir, dir with children then "
    "file, symlink then file, file then symlink, dir then dir",
    "the last entry wins, as tar extraction does (a replaced directory loses its subtree; "
    "dir over dir keeps its children and takes the later metadata)",
)
def test_duplicate_entries_last_one_wins(
    imagefs_env: Env, tmp_path: Path, jail: Jail, reliability: Reliability
) -> None:
    lb = LayerBuilder(sort_entries=False)
    lb.file("f", b"first").file("f", b"second")
    lb.file("fd", b"file").dir("fd", mode=0o700)
    lb.dir("df").file("df/child", b"c").file("df", b"now a file")
    lb.symlink("sf", str(jail.outside / "canary")).file("sf", b"not a link")
    lb.file("fs", b"file").symlink("fs", str(jail.outside))
    lb.dir("dd", mode=0o755).file("dd/keep", b"k").dir("dd", mode=0o711)
    image = _image(imagefs_env, tmp_path, [lb.tar()])
    imagefs_env.run("unpack", image, str(jail.dest))
    assert _tree(jail.dest) == {
        "f": ("file", b"second"),
        "fd": ("dir", b""),
        "df": ("file", b"now a file"),
        "sf": ("file", b"not a link"),
        "fs": ("link", str(jail.outside).encode()),
        "dd": ("dir", b""),
        "dd/keep": ("file", b"k"),
    }
    assert stat.S_IMODE((jail.dest / "fd").stat().st_mode) == 0o700
    assert stat.S_IMODE((jail.dest / "dd").stat().st_mode) == 0o711
    assert jail.escaped() == []
    reliability.record(inputs=6)
