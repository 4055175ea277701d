"""Convert real sample images, mount them through real FUSE and unpack them, and compare
both trees with `umoci raw unpack` of the same source: content, type, mode, uid, gid, mtime,
xattrs, symlink targets, hard-link groups and device numbers."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Env, Mounter
from tests.support import samples
from tests.support.layers import LayerBuilder
from tests.support.oci import write_oci_layout
from tests.support.trees import compare_trees, snapshot_tree, umoci_raw_unpack

# The sample names every directory in its layers, so even directory mtimes must agree.
IGNORE: frozenset[str] = frozenset()


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    root = tmp_path_factory.mktemp("sample")
    layout, tag = samples.write_every_entry_type_image(root / "src", compression="mixed")
    reference = umoci_raw_unpack(layout, tag, root / "umoci")
    return {"layout": layout, "tag": tag, "reference": reference, "root": root}


def _convert(env: Env, source: str, target: str) -> dict[str, object]:
    data: dict[str, object] = env.json("convert", source, target)
    return data


def test_mounted_and_unpacked_trees_match_umoci(
    sample: dict[str, Path | str], imagefs_env: Env, mount_image: Mounter, tmp_path: Path
) -> None:
    source = f"oci:{sample['layout']}:{sample['tag']}"
    target = f"oci:{tmp_path / 'out'}:v1"
    result = _convert(imagefs_env, source, target)
    assert result["chunks_unique"] <= result["chunks_total"]  # type: ignore[operator]
    expected = snapshot_tree(Path(sample["reference"]))
    assert expected, "the reference tree is empty"

    m = mount_image(target)
    mounted = snapshot_tree(m.path)
    assert compare_trees(Path(sample["reference"]), m.path, ignore=IGNORE) == []
    assert set(mounted) == set(expected)

    unpacked = tmp_path / "unpacked"
    imagefs_env.run("unpack", target, str(unpacked))
    assert compare_trees(Path(sample["reference"]), unpacked, ignore=IGNORE) == []


def test_whiteouts_and_special_files_through_the_mount(
    sample: dict[str, Path | str], imagefs_env: Env, mount_image: Mounter, tmp_path: Path
) -> None:
    target = f"oci:{tmp_path / 'out'}"
    _convert(imagefs_env, f"oci:{sample['layout']}:{sample['tag']}", target)
    m = mount_image(target)
    for path in samples.EXPECTED_ABSENT:
        assert not os.path.lexists(m.path / path), path
    for path, (kind, major, minor) in samples.EXPECTED_DEVICES.items():
        st = os.lstat(m.path / path)
        assert stat.S_ISCHR(st.st_mode) if kind == "chr" else stat.S_ISBLK(st.st_mode), path
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (major, minor)
    for path, value in samples.EXPECTED_XATTRS.items():
        for name, data in value.items():
            assert os.getxattr(m.path / path, name, follow_symlinks=False) == data
    for group in samples.EXPECTED_HARDLINK_GROUPS:
        inos = {os.lstat(m.path / p).st_ino for p in group}
        assert len(inos) == 1
        assert os.lstat(m.path / next(iter(group))).st_nlink == len(group)


def test_mount_is_read_only(
    sample: dict[str, Path | str], imagefs_env: Env, mount_image: Mounter, tmp_path: Path
) -> None:
    target = f"oci:{tmp_path / 'out'}"
    _convert(imagefs_env, f"oci:{sample['layout']}:{sample['tag']}", target)
    m = mount_image(target)
    some_file = next(p for p in samples.EXPECTED_CONTENT if (m.path / p).is_file())
    attempts = [
        lambda: open(m.path / "new-file", "w"),  # noqa: SIM115
        lambda: open(m.path / some_file, "r+b"),  # noqa: SIM115
        lambda: os.mkdir(m.path / "newdir"),
        lambda: os.unlink(m.path / some_file),
        lambda: os.chmod(m.path / some_file, 0o777),
        lambda: os.setxattr(m.path / some_file, "user.new", b"x"),
        lambda: os.rename(m.path / some_file, m.path / "moved"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS


def test_reads_fetch_only_what_they_touch(
    imagefs_env: Env, mount_image: Mounter, tmp_path: Path
) -> None:
    big = os.urandom(8 << 20)
    layer = LayerBuilder().dir("data").file("data/big.bin", big).file("data/small.txt", b"hi\n")
    write_oci_layout(tmp_path / "src", [layer.blob()], tag="t")
    target = f"oci:{tmp_path / 'out'}"
    _convert(imagefs_env, f"oci:{tmp_path / 'src'}:t", target)

    m = mount_image(target)
    assert m.stats()["bytes_fetched"] == 0, "mounting must read the bootstrap only"
    with open(m.path / "data/big.bin", "rb") as f:
        f.seek(3 << 20)
        piece = f.read(4096)
    assert piece == big[3 << 20 : (3 << 20) + 4096]
    stats = m.stats()
    assert 0 < stats["bytes_fetched"] <= 2 * 256 * 1024 + (128 << 10) * 8
    assert stats["chunks_fetched"] <= 8
    assert (m.path / "data/small.txt").read_bytes() == b"hi\n"

    # Reading everything twice: the second pass is served by the chunk cache.
    assert (m.path / "data/big.bin").read_bytes() == big
    fetched = m.stats()["bytes_fetched"]
    fd = os.open(m.path / "data/big.bin", os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    assert (m.path / "data/big.bin").read_bytes() == big
    after = m.stats()
    assert after["bytes_fetched"] == fetched
    assert after["cache_hits"] > 0
    assert after["bytes_read"] >= 2 * len(big)


def test_corrupt_chunk_gives_eio_and_check_fails(
    imagefs_env: Env, mount_image: Mounter, tmp_path: Path
) -> None:
    data = b"".join(os.urandom(1 << 16) for _ in range(16))
    layer = LayerBuilder().file("f.bin", data).file("ok.txt", b"fine\n")
    write_oci_layout(tmp_path / "src", [layer.blob()], tag="t")
    target = f"oci:{tmp_path / 'out'}"
    _convert(imagefs_env, f"oci:{tmp_path / 'src'}:t", target)
    imagefs_env.run("check", target)
    info = imagefs_env.json("inspect", target)
    blob = tmp_path / "out" / "blobs" / "sha256" / info["blobs"][0]["digest"].split(":")[1]
    raw = bytearray(blob.read_bytes())
    raw[100] ^= 0xFF  # inside the first chunk of f.bin
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(raw))

    res = imagefs_env.run("check", target, check=False)
    assert res.returncode == 4, res.stderr
    assert "does not match" in res.stderr or "does not decompress" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1

    m = mount_image(target)
    with pytest.raises(OSError) as err, open(m.path / "f.bin", "rb") as f:
        f.read(4096)
    assert err.value.errno == errno.EIO
    assert (m.path / "ok.txt").read_bytes() == b"fine\n"
    assert m.stats()["integrity_errors"] >= 1


def test_docker_archive_and_dir_sources(
    sample: dict[str, Path | str], imagefs_env: Env, mount_image: Mounter, tmp_path: Path
) -> None:
    archive = samples.write_every_entry_type_docker_archive(tmp_path / "image.tar")
    target = f"oci:{tmp_path / 'out'}:docker"
    _convert(imagefs_env, f"docker-archive:{archive}", target)
    m = mount_image(target, "m1")
    assert compare_trees(Path(sample["reference"]), m.path, ignore=IGNORE) == []

    # dir: the umoci tree itself becomes a one-layer image and must come back identical.
    target2 = f"oci:{tmp_path / 'out'}:dir"
    _convert(imagefs_env, f"dir:{sample['reference']}", target2)
    m2 = mount_image(target2, "m2")
    assert compare_trees(Path(sample["reference"]), m2.path) == []


def test_umount_and_bad_mount_errors(
    sample: dict[str, Path | str], imagefs_env: Env, tmp_path: Path
) -> None:
    (tmp_path / "mnt").mkdir()
    res = imagefs_env.run(
        "mount", f"oci:{tmp_path / 'missing'}", str(tmp_path / "mnt"), check=False
    )
    assert res.returncode != 0
    assert "oci-layout" in res.stderr or "not" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = imagefs_env.run("umount", str(tmp_path / "mnt"), check=False)
    assert res.returncode == 7 and "not mounted" in res.stderr
    res = imagefs_env.run("stats", str(tmp_path / "mnt"), check=False)
    assert res.returncode == 7
    # the source image is a plain image, not an imagefs one
    res = imagefs_env.run(
        "mount", f"oci:{sample['layout']}:{sample['tag']}", str(tmp_path / "mnt"), check=False
    )
    assert res.returncode != 0 and "convert it first" in res.stderr
    assert subprocess.run(["mountpoint", "-q", str(tmp_path / "mnt")]).returncode != 0


def test_libfuse_3_is_loaded_even_when_libfuse_2_is_installed() -> None:
    """mfusepy prefers libfuse 2 when the linker cache lists it (Debian installs both); the
    package must pick libfuse 3 before mfusepy is first imported, whatever imports first."""
    import sys

    for first in ("fuse_mount.mount", "fuse_mount.fs"):
        out = subprocess.run(
            [sys.executable, "-c", f"import {first}, mfusepy; print(mfusepy._libfuse_path)"],
            capture_output=True,
            text=True,
            check=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("FUSE_LIBRARY")},
        ).stdout
        assert "fuse3" in out, out
