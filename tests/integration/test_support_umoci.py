"""The sample images unpacked by real umoci: whiteouts, devices, modes, xattrs, hard links."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import samples
from tests.support.layers import LayerBuilder
from tests.support.oci import write_oci_layout
from tests.support.trees import (
    EntryMeta,
    UmociError,
    compare_trees,
    hardlink_groups,
    snapshot_tree,
    umoci_raw_unpack,
)

pytestmark = [
    pytest.mark.integration,
]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    for compression in ("gzip", "zstd", "none", "mixed"):
        samples.write_every_entry_type_image(
            root / "layout", compression=compression, tag=compression
        )
    return root / "layout"


@pytest.fixture(scope="module")
def rootfs(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return umoci_raw_unpack(images, "gzip", tmp_path_factory.mktemp("unpacked") / "rootfs")


@pytest.fixture(scope="module")
def snap(rootfs: Path) -> dict[str, EntryMeta]:
    return snapshot_tree(rootfs)


def test_whiteouts_and_opaque_dir(rootfs: Path, snap: dict[str, EntryMeta]) -> None:
    for path in samples.EXPECTED_ABSENT:
        assert not os.path.lexists(rootfs / path), path
    assert not any(".wh." in path for path in snap)
    below_opaque = {p for p in snap if p.startswith(samples.OPAQUE_DIR + "/")}
    assert below_opaque == samples.OPAQUE_EXPECTED
    assert snap["opaque"].mode == 0o750  # the layer-3 entry's metadata wins
    assert snap["replace/file-to-dir"].kind == "dir"
    assert snap["replace/dir-to-file"].kind == "reg"
    # Neighbours of whited-out paths survive.
    assert {"etc/hostname", "hl-wh/link", "recreate/phoenix"} <= set(snap)


def test_contents(rootfs: Path) -> None:
    for path, content in samples.EXPECTED_CONTENT.items():
        assert (rootfs / path).read_bytes() == content, path


def test_devices_fifo_and_modes(snap: dict[str, EntryMeta]) -> None:
    for path, (kind, major, minor) in samples.EXPECTED_DEVICES.items():
        assert (snap[path].kind, snap[path].rdev) == (kind, (major, minor)), path
    assert snap["dev/fifo"].kind == "fifo"
    for path, mode in samples.EXPECTED_MODES.items():
        assert snap[path].mode == mode, f"{path}: {snap[path].mode:o} != {mode:o}"
    for path, owner in samples.EXPECTED_OWNERS.items():
        assert (snap[path].uid, snap[path].gid) == owner, path
    assert (snap["dev/loop0"].gid, snap["dev/loop0"].mode) == (6, 0o660)


def test_symlinks(rootfs: Path, snap: dict[str, EntryMeta]) -> None:
    for path, target in samples.EXPECTED_SYMLINKS.items():
        assert (snap[path].kind, snap[path].link_target) == ("symlink", target), path
    assert (rootfs / samples.PAX_LONG_SYMLINK).read_bytes() == b"a long PAX path\n"
    assert (rootfs / samples.GNU_LONG_SYMLINK).read_bytes() == b"a long GNU path\n"
    assert (rootfs / "links/to-dir").is_dir()


def test_xattrs_byte_exact(rootfs: Path, snap: dict[str, EntryMeta]) -> None:
    for path, xattrs in samples.EXPECTED_XATTRS.items():
        assert dict(snap[path].xattrs) == xattrs, path
    assert snap["etc/hostname"].xattrs == {}
    if shutil.which("getfattr"):
        out = subprocess.run(
            ["getfattr", "-d", "-m", "-", "-e", "hex", str(rootfs / "bin/ping")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "security.capability=0x" + samples.CAP_NET_BIND_SERVICE.hex() in out


def test_hardlink_groups(rootfs: Path, snap: dict[str, EntryMeta]) -> None:
    assert hardlink_groups(rootfs) == set(samples.EXPECTED_HARDLINK_GROUPS)
    assert snap["data/hl/original"].nlink == 3
    # Link entries' own metadata (mode 0o644) is not applied to the shared inode.
    assert snap["data/hl/second"].mode == 0o640
    assert snap[samples.CROSS_LAYER_HARDLINK].mode == 0o755
    # Rewriting a hard-linked path in a later layer breaks the link; whiting one out too.
    assert snap[samples.HL_MODIFIED_LINK].nlink == 1
    assert snap[samples.HL_WHITEOUT_LINK].nlink == 1


def test_mtimes_are_those_of_the_entries(snap: dict[str, EntryMeta]) -> None:
    """Every entry of the sample has the default mtime, and umoci keeps directory mtimes
    through later whiteouts and additions below them."""
    assert {path: m.mtime for path, m in snap.items() if m.mtime != 1700000000} == {}


@pytest.mark.parametrize("variant", ["zstd", "none", "mixed"])
def test_compression_variants_unpack_to_the_same_tree(
    images: Path, rootfs: Path, tmp_path: Path, variant: str
) -> None:
    other = umoci_raw_unpack(images, variant, tmp_path / "rootfs")
    assert compare_trees(rootfs, other) == []


def test_docker_archive_matches_oci_layout(rootfs: Path, tmp_path: Path) -> None:
    archive = samples.write_every_entry_type_docker_archive(tmp_path / "img.tar")
    ref = "imagefs/every-entry:latest"
    subprocess.run(
        ["skopeo", "copy", f"docker-archive:{archive}:{ref}", f"oci:{tmp_path / 'oci'}:d"],
        capture_output=True,
        check=True,
    )
    assert compare_trees(rootfs, umoci_raw_unpack(tmp_path / "oci", "d", tmp_path / "r")) == []


def test_compare_trees_notices_changes(images: Path, rootfs: Path, tmp_path: Path) -> None:
    other = umoci_raw_unpack(images, "gzip", tmp_path / "rootfs")
    os.chmod(other / "bin/setuid", 0o755)
    cap_net_raw = b"\x01\x00\x00\x02\x00\x20\x00\x00" + bytes(12)  # bit 13
    os.setxattr(other / "bin/ping", "security.capability", cap_net_raw, follow_symlinks=False)
    os.unlink(other / "data/hl/second")
    os.utime(other / "etc", (0, 1))
    with open(other / "data/random.bin", "r+b") as f:
        f.seek(512 * 1024)
        f.write(b"\0")
    diff = compare_trees(rootfs, other)
    assert "bin/setuid: mode expected=0o4755 actual=0o755" in diff
    assert any(line.startswith("bin/ping: xattr security.capability") for line in diff)
    assert "only in expected: data/hl/second (reg)" in diff
    assert "etc: mtime expected=1700000000 actual=1" in diff
    assert any(line.startswith("data/random.bin: sha256") for line in diff)
    assert any("hard-link group only in expected" in line for line in diff)
    assert not any(
        line.startswith("etc:") for line in compare_trees(rootfs, other, ignore={"dir_mtime"})
    )


def test_umoci_error_carries_stderr(images: Path, tmp_path: Path) -> None:
    with pytest.raises(UmociError, match="tag is not found"):
        umoci_raw_unpack(images, "no-such-tag", tmp_path / "rootfs")


def test_umoci_quirks_documented_in_trees(tmp_path: Path) -> None:
    """Pin the umoci behaviour trees.py documents: parent mtimes restored, implicit parents
    get the unpack time, forbidden and empty xattrs dropped."""
    lower = LayerBuilder().dirs("w", "a", "o", mtime=1000)
    for d in "wao":
        lower.file(f"{d}/f", b"f", mtime=1000)
    lower.file(
        "w/x",
        b"",
        mtime=1000,
        xattrs={
            "security.selinux": b"system_u:object_r:bin_t:s0\x00",
            "trusted.overlay.opaque": b"y",
            "trusted.overlay.other": b"kept",
            "user.empty": b"",
            "user.kept": b"1",
        },
    )
    upper = LayerBuilder()  # no entries for the parent directories
    upper.whiteout("w/f").file("a/new", b"n", mtime=2000).opaque("o")
    upper.file("implicit/child", b"c", mtime=2000)
    write_oci_layout(tmp_path / "layout", [lower.blob(), upper.blob(compression="none")])
    before = time.time()
    snap = snapshot_tree(umoci_raw_unpack(tmp_path / "layout", "latest", tmp_path / "r"))
    assert {d: snap[d].mtime for d in "wao"} == {"w": 1000, "a": 1000, "o": 1000}
    assert "w/f" not in snap and "o/f" not in snap and snap["a/new"].mtime == 2000
    assert snap["implicit"].mtime >= int(before) - 1
    assert dict(snap["w/x"].xattrs) == {"trusted.overlay.other": b"kept", "user.kept": b"1"}
