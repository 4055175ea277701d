"""Conversion against real tools: the converted tree equals `umoci raw unpack` of the source
(every entry type, whiteouts, xattrs, hard links), skopeo-written docker archives, GNU tar
sparse files, the `imagefs convert` command, and memory that does not grow with layer size."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from builder.convert import convert
from imagefs.config import Config
from tests.conftest import Env
from tests.support import samples
from tests.support.converted import ConvertedImage
from tests.support.oci import LayerBlob, write_oci_layout
from tests.support.trees import (
    diff_hardlink_groups,
    diff_snapshots,
    hardlink_groups,
    snapshot_tree,
    umoci_raw_unpack,
)

pytestmark = [pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sample_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sample") / "layout"
    for compression in ("gzip", "zstd", "none", "mixed"):
        samples.write_every_entry_type_image(root, compression=compression, tag=compression)
    return root


@pytest.fixture(scope="module")
def umoci_tree(sample_layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return umoci_raw_unpack(sample_layout, "gzip", tmp_path_factory.mktemp("umoci") / "rootfs")


def differences(expected: Path, image: ConvertedImage) -> list[str]:
    return diff_snapshots(
        snapshot_tree(expected), image.snapshot(), labels=("umoci", "imagefs")
    ) + diff_hardlink_groups(hardlink_groups(expected), image.hardlink_groups())


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none", "mixed"])
def test_converted_tree_equals_umoci(
    sample_layout: Path, umoci_tree: Path, tmp_path: Path, compression: str
) -> None:
    convert(f"oci:{sample_layout}:{compression}", f"oci:{tmp_path}/out", Config())
    image = ConvertedImage.from_layout(tmp_path / "out")
    image.bootstrap.validate()
    image.check_blobs()
    assert differences(umoci_tree, image) == []


def test_skopeo_docker_archive(sample_layout: Path, umoci_tree: Path, tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            f"oci:{sample_layout}:gzip",
            f"docker-archive:{archive}:imagefs/sample:latest",
        ],
        check=True,
        capture_output=True,
    )
    convert(f"docker-archive:{archive}", f"oci:{tmp_path}/out", Config())
    image = ConvertedImage.from_layout(tmp_path / "out")
    assert differences(umoci_tree, image) == []
    assert image.manifest.subject is None


def test_gnu_tar_sparse_and_dir_source(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    sparse = tree / "sparse.img"
    with sparse.open("wb") as f:
        f.seek(3 << 20)
        f.write(b"middle")
        f.seek(9 << 20)
        f.write(b"end")
    (tree / "plain").write_bytes(b"plain file\n")
    layer = tmp_path / "layer.tar"
    subprocess.run(
        ["tar", "--sparse", "--format=posix", "-C", str(tree), "-cf", str(layer), "."],
        check=True,
    )
    with tarfile.open(layer) as t:
        assert t.getmember("./sparse.img").issparse()
    tar = layer.read_bytes()
    write_oci_layout(tmp_path / "img", [LayerBlob.from_tar(tar, "zstd")])
    convert(f"oci:{tmp_path}/img", f"oci:{tmp_path}/out", Config())
    image = ConvertedImage.from_layout(tmp_path / "out")
    expected = sparse.read_bytes()
    assert image.read("sparse.img") == expected
    assert image.read("plain") == b"plain file\n"
    # the same tree as a directory source gives the same files
    convert(f"dir:{tree}", f"oci:{tmp_path}/dir", Config())
    from_dir = ConvertedImage.from_layout(tmp_path / "dir")
    assert from_dir.read("sparse.img") == expected
    drop = {"mtime", "uid", "gid"}  # tar stores whole seconds; the dir walk keeps ns
    assert diff_snapshots(image.snapshot(), from_dir.snapshot(), ignore=drop) == []


def test_cli_convert_json(sample_layout: Path, imagefs_env: Env, tmp_path: Path) -> None:
    out = imagefs_env.json("convert", f"oci:{sample_layout}:mixed", f"oci:{tmp_path}/out:conv")
    direct = convert(f"oci:{sample_layout}:mixed", f"oci:{tmp_path}/again", Config())
    assert out["manifest_digest"] == str(direct.manifest_digest)
    assert out["chunks_unique"] == direct.chunks_unique and out["blobs"] == 3
    bad = imagefs_env.run("convert", f"oci:{tmp_path}/nothing", f"oci:{tmp_path}/x", check=False)
    assert bad.returncode == 5 and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------
# Peak memory does not grow with layer size

_MEASURE = """
import resource, sys
from builder.convert import convert
from imagefs.config import Config
convert(sys.argv[1], sys.argv[2], Config())
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _big_layer(path: Path, mib: int) -> LayerBlob:
    """A zstd tar layer with one `mib`-MiB file of unique data plus small files, streamed to
    disk (never held whole), returned as a LayerBlob read back (for the layout writer)."""
    raw = path.with_suffix(".tar.zst")
    cctx = zstandard.ZstdCompressor(level=1)
    block = os.urandom(1 << 20)
    with raw.open("wb") as out, cctx.stream_writer(out) as zw:
        tar = tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115

        class _Unique:
            def __init__(self) -> None:
                self.n = 0

            def read(self, size: int) -> bytes:
                out = bytearray()
                while len(out) < size:
                    self.n += 1
                    out += block[:32] + self.n.to_bytes(8, "little") + block[40:]
                return bytes(out[:size])

        info = tarfile.TarInfo("big.bin")
        info.size = mib << 20
        tar.addfile(info, _Unique())  # type: ignore[arg-type]
        for i in range(200):
            small = tarfile.TarInfo(f"small/{i}")
            small.size = 1000
            tar.addfile(small, _Unique())  # type: ignore[arg-type]
        tar.close()
    data = raw.read_bytes()
    return LayerBlob(data, "application/vnd.oci.image.layer.v1.tar+zstd", "sha256:" + "0" * 64)


def _peak_rss_kib(source: str, target: str) -> int:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, source, target],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    return int(out.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_layer_size(tmp_path: Path) -> None:
    peaks = {}
    for mib in (32, 256):
        write_oci_layout(tmp_path / f"img{mib}", [_big_layer(tmp_path / f"l{mib}", mib)])
        peaks[mib] = _peak_rss_kib(f"oci:{tmp_path}/img{mib}", f"oci:{tmp_path}/out{mib}")
        (tmp_path / f"l{mib}.tar.zst").unlink()
    growth_mib = (peaks[256] - peaks[32]) / 1024
    assert growth_mib < 24, f"peak RSS grew {growth_mib:.1f} MiB for 224 MiB more layer: {peaks}"
    print("peak RSS KiB by layer MiB:", peaks)
