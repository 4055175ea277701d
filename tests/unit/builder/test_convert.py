"""The convert service function: targets, atomicity, reproducibility, error types."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from builder.convert import convert
from imagefs.config import Config
from imagefs.errors import (
    ImagefsError,
    NotFoundError,
    SourceError,
    TargetError,
    UnsafePathError,
    UsageError,
)
from imagefs.oci import REF_NAME, OciLayout
from tests.support import samples
from tests.support.converted import ConvertedImage
from tests.support.layers import LayerBuilder
from tests.support.oci import LayerBlob, compress, write_oci_layout

CONFIG = Config()


def sample(tmp_path: Path) -> str:
    layout, tag = samples.write_every_entry_type_image(tmp_path / "src", compression="mixed")
    return f"oci:{layout}:{tag}"


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_convert_into_new_layout(tmp_path: Path) -> None:
    progress: list[tuple[int, int | None]] = []
    result = convert(
        sample(tmp_path), f"oci:{tmp_path}/out:conv", CONFIG, progress=lambda *a: progress.append(a)
    )
    assert result.target == f"oci:{tmp_path}/out:conv"
    layout = OciLayout.open(tmp_path / "out")
    [entry] = layout.index().manifests
    assert entry.annotations[REF_NAME] == "conv" and entry.digest == result.manifest_digest
    img = ConvertedImage.from_layout(tmp_path / "out", "conv")
    img.check_blobs()
    assert img.read("data/dedup.bin") == samples.DEDUP_V2
    assert result.blobs == 3 and result.chunks_unique <= result.chunks_total
    assert result.bytes_in > 3_000_000 and result.seconds > 0
    assert result.bytes_stored == sum(b.size for b in img.manifest.layers[:-1])
    assert progress and progress[-1][0] == progress[-1][1]
    mode = (tmp_path / "out").stat().st_mode & 0o777
    assert mode == 0o777 & ~_umask()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_reproducible(tmp_path: Path) -> None:
    src = sample(tmp_path)
    a = convert(src, f"oci:{tmp_path}/a", CONFIG)
    b = convert(src, f"oci:{tmp_path}/b", Config(convert_threads=1))
    assert a.manifest_digest == b.manifest_digest
    assert files(tmp_path / "a") == files(tmp_path / "b")
    before = files(tmp_path / "a")
    again = convert(src, f"oci:{tmp_path}/a", CONFIG)  # into the same layout: nothing new
    assert again.manifest_digest == a.manifest_digest
    assert files(tmp_path / "a") == before


def test_existing_layouts_and_empty_dirs(tmp_path: Path) -> None:
    src = sample(tmp_path)
    (tmp_path / "empty").mkdir()
    convert(src, f"oci:{tmp_path}/empty:x", CONFIG)
    OciLayout.open(tmp_path / "empty").resolve("x")
    # into the source layout itself, under another tag
    convert(src, f"{src.rsplit(':', 1)[0]}:imagefs", CONFIG)
    tags = {m.annotations[REF_NAME] for m in OciLayout.open(tmp_path / "src").index().manifests}
    assert tags == {samples.EVERY_ENTRY_TAG, "imagefs"}
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file").write_bytes(b"x")
    with pytest.raises(TargetError):
        convert(src, f"oci:{tmp_path}/junk", CONFIG)
    with pytest.raises(TargetError):
        convert(src, f"oci:{tmp_path}/no/such/parent", CONFIG)


def broken_layer_image(tmp_path: Path, name: str) -> str:
    """An image whose second layer is bad in the way `name` says."""
    good = LayerBuilder().file("ok", b"fine" * 10000).blob()
    bad: LayerBlob
    if name == "corrupt-gzip":
        data = good.data[:-6] + bytes(b ^ 0xFF for b in good.data[-6:-4]) + good.data[-4:]
        bad = LayerBlob(data, good.media_type, good.diff_id)
    elif name == "truncated-tar":
        tar = LayerBuilder().file("big", os.urandom(100_000)).tar()[:50_000]
        bad = LayerBlob(compress(tar, "gzip"), good.media_type, "sha256:" + "0" * 64)
    elif name == "dotdot":
        info = tarfile.TarInfo("../escape")
        bad = LayerBlob.from_tar(LayerBuilder().raw(info, b"x").tar())
    elif name == "absolute":
        info = tarfile.TarInfo("placeholder")
        info.pax_headers = {"path": "/etc/shadow"}
        bad = LayerBlob.from_tar(LayerBuilder().raw(info, b"x").tar())
    elif name == "hardlink":
        bad = LayerBuilder().hardlink("link", "nowhere").blob()
    elif name == "media-type":
        bad = LayerBlob(good.data, "application/x-unknown", good.diff_id)
    else:
        raise AssertionError(name)
    write_oci_layout(tmp_path / "bad", [good, bad])
    return f"oci:{tmp_path}/bad"


@pytest.mark.parametrize(
    ("name", "error", "words"),
    [
        ("corrupt-gzip", SourceError, "corrupt gzip"),
        ("truncated-tar", SourceError, "truncated"),
        ("dotdot", UnsafePathError, "'../escape'"),
        ("absolute", UnsafePathError, "'/etc/shadow'"),
        ("hardlink", SourceError, "'link' points at missing 'nowhere'"),
        ("media-type", SourceError, "unknown layer media type"),
    ],
)
def test_bad_input_leaves_no_target(
    tmp_path: Path, name: str, error: type[ImagefsError], words: str
) -> None:
    src = broken_layer_image(tmp_path, name)
    with pytest.raises(error, match=words) as info:
        convert(src, f"oci:{tmp_path}/out", CONFIG)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]  # no temp dir left
    # an existing layout is left exactly as it was
    convert(sample(tmp_path), f"oci:{tmp_path}/existing", CONFIG)
    before = files(tmp_path / "existing")
    with pytest.raises(error):
        convert(src, f"oci:{tmp_path}/existing:other", CONFIG)
    assert files(tmp_path / "existing") == before


def test_missing_inputs(tmp_path: Path) -> None:
    blobs = [LayerBuilder().file("a", b"a").blob()]
    write_oci_layout(tmp_path / "img", blobs)
    (tmp_path / "img" / "blobs" / "sha256" / blobs[0].digest.removeprefix("sha256:")).unlink()
    with pytest.raises(NotFoundError, match="missing"):
        convert(f"oci:{tmp_path}/img", f"oci:{tmp_path}/out", CONFIG)
    assert not (tmp_path / "out").exists()
    with pytest.raises(NotFoundError):
        convert(f"oci:{tmp_path}/nothing", f"oci:{tmp_path}/out", CONFIG)
    with pytest.raises(NotFoundError):
        convert(f"dir:{tmp_path}/nothing", f"oci:{tmp_path}/out", CONFIG)
    with pytest.raises(UsageError):
        convert(f"{tmp_path}/img", f"oci:{tmp_path}/out", CONFIG)
    with pytest.raises(UsageError):
        convert(f"oci:{tmp_path}/img", f"dir:{tmp_path}/out", CONFIG)


def test_docker_archive_and_dir_sources(tmp_path: Path) -> None:
    archive = samples.write_every_entry_type_docker_archive(tmp_path / "img.tar")
    from_archive = convert(f"docker-archive:{archive}", f"oci:{tmp_path}/a", CONFIG)
    from_layout = convert(sample(tmp_path), f"oci:{tmp_path}/b", CONFIG)
    img_a = ConvertedImage.from_layout(tmp_path / "a")
    img_b = ConvertedImage.from_layout(tmp_path / "b")
    assert img_a.snapshot() == img_b.snapshot()
    assert img_a.manifest.subject is None and img_b.manifest.subject is not None
    assert from_archive.manifest_digest != from_layout.manifest_digest

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "file").write_bytes(b"directory source\n")
    os.symlink("sub/file", tree / "link")
    convert(f"dir:{tree}", f"oci:{tmp_path}/d", CONFIG)
    img = ConvertedImage.from_layout(tmp_path / "d")
    assert img.read("sub/file") == b"directory source\n"
    assert img.snapshot()["link"].link_target == "sub/file"
