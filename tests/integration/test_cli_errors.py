"""Bad input through the real CLI: a one-line error naming the problem, the README's exit
code, and nothing at TARGET."""

from __future__ import annotations

import gzip
import io
import json
import struct
import tarfile
from pathlib import Path

import pytest
import zstandard

from tests.conftest import Env
from tests.support.layers import LayerBuilder
from tests.support.oci import LayerBlob, write_oci_layout


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("imagefs: "), lines[0]
    return lines[0]


def _raw_layer(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> LayerBlob:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return LayerBlob.from_tar(buf.getvalue(), "gzip")


def _info(
    name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.linkname = link
    return info


def _source_with(tmp: Path, blob: LayerBlob) -> str:
    write_oci_layout(tmp / "src", [blob], tag="t")
    return f"oci:{tmp / 'src'}:t"


def _good_blob() -> LayerBlob:
    return LayerBuilder().file("a.txt", b"hello\n" * 1000).blob()


BAD_LAYERS = {
    "corrupt-gzip": (
        lambda: LayerBlob(
            _good_blob().data[:40] + b"\x00garbage" * 64 + _good_blob().data[-8:],
            "application/vnd.oci.image.layer.v1.tar+gzip",
            _good_blob().diff_id,
        ),
        3,
        ("gzip", "corrupt", "decompress", "layer"),
    ),
    "truncated-tar": (
        lambda: LayerBlob(
            gzip.compress(LayerBuilder().file("big.bin", b"x" * 100_000).tar()[:50_000], mtime=0),
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "sha256:" + "0" * 64,
        ),
        3,
        ("truncated", "tar", "unexpected end"),
    ),
    "dotdot": (lambda: _raw_layer([(_info("../escape.txt", size=2), b"hi")]), 3, ("..", "unsafe")),
    "absolute": (
        lambda: _raw_layer([(_info("/etc/evil", size=2), b"hi")]),
        3,
        ("absolute", "unsafe"),
    ),
    "missing-hardlink-target": (
        lambda: _raw_layer([(_info("link", tarfile.LNKTYPE, link="nowhere"), None)]),
        3,
        ("nowhere",),
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_LAYERS))
def test_bad_layers_fail_cleanly(case: str, imagefs_env: Env, tmp_path: Path) -> None:
    make, code, words = BAD_LAYERS[case]
    source = _source_with(tmp_path, make())
    target_dir = tmp_path / "target"
    res = imagefs_env.run("convert", source, f"oci:{target_dir}", check=False)
    assert res.returncode == code, res.stderr
    line = _one_line(res.stderr).lower()
    assert any(w in line for w in words), line
    assert not target_dir.exists(), "a failed conversion left a target behind"
    assert not any(p.name.startswith("target") for p in tmp_path.iterdir())


def test_failed_convert_leaves_an_existing_layout_untouched(
    imagefs_env: Env, tmp_path: Path
) -> None:
    good = _source_with(tmp_path / "g", _good_blob())
    target = tmp_path / "target"
    imagefs_env.run("convert", good, f"oci:{target}:good")
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    bad = _source_with(tmp_path / "b", BAD_LAYERS["dotdot"][0]())
    res = imagefs_env.run("convert", bad, f"oci:{target}:bad", check=False)
    assert res.returncode == 3
    after = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert after == before


def test_convert_is_reproducible(imagefs_env: Env, tmp_path: Path) -> None:
    layers = [
        LayerBuilder().file("a/x.bin", bytes(range(256)) * 4096).dir("a").blob(),
        LayerBuilder().file("b.txt", b"b" * 70_000).whiteout("a/x.bin").blob("pax", "zstd"),
    ]
    write_oci_layout(tmp_path / "src", layers, tag="t")
    one = imagefs_env.json("convert", f"oci:{tmp_path / 'src'}:t", f"oci:{tmp_path / 'o1'}")
    two = imagefs_env.json("convert", f"oci:{tmp_path / 'src'}:t", f"oci:{tmp_path / 'o2'}")
    assert one["manifest_digest"] == two["manifest_digest"]
    blobs1 = {p.name: p.read_bytes() for p in (tmp_path / "o1/blobs/sha256").iterdir()}
    blobs2 = {p.name: p.read_bytes() for p in (tmp_path / "o2/blobs/sha256").iterdir()}
    assert blobs1 == blobs2


def _rewrite_bootstrap(layout: Path, mutate: object) -> None:
    """Replace the bootstrap blob of the only image in `layout` (and its descriptors)."""
    import hashlib

    index = json.loads((layout / "index.json").read_text())
    mdesc = index["manifests"][0]
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / mdesc["digest"].split(":")[1]).read_text())
    boot = manifest["layers"][-1]
    raw = zstandard.ZstdDecompressor().decompress(
        (blobs / boot["digest"].split(":")[1]).read_bytes()
    )
    stored = zstandard.ZstdCompressor().compress(mutate(raw))  # type: ignore[operator]
    digest = hashlib.sha256(stored).hexdigest()
    (blobs / digest).write_bytes(stored)
    boot["digest"], boot["size"] = f"sha256:{digest}", len(stored)
    mbytes = json.dumps(manifest).encode()
    mdigest = hashlib.sha256(mbytes).hexdigest()
    (blobs / mdigest).write_bytes(mbytes)
    mdesc["digest"], mdesc["size"] = f"sha256:{mdigest}", len(mbytes)
    (layout / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    ("mutation", "words"),
    [
        (lambda raw: raw[:8] + struct.pack("<H", 9) + raw[10:], ("format 9", "not supported")),
        (lambda raw: raw[:24] + struct.pack("<QQ", 1 << 40, 64) + raw[40:], ("outside",)),
        (lambda raw: raw[:100], ("truncated", "outside", "short")),
    ],
    ids=["unknown-version", "impossible-section", "truncated"],
)
def test_bad_bootstrap_fails_cleanly(
    mutation: object, words: tuple[str, ...], imagefs_env: Env, tmp_path: Path
) -> None:
    source = _source_with(tmp_path, _good_blob())
    imagefs_env.run("convert", source, f"oci:{tmp_path / 'out'}")
    _rewrite_bootstrap(tmp_path / "out", mutation)
    for command in ("check", "inspect"):
        res = imagefs_env.run(command, f"oci:{tmp_path / 'out'}", check=False)
        assert res.returncode == 4, res.stderr
        line = _one_line(res.stderr).lower()
        assert any(w in line for w in words), line
    (tmp_path / "mnt").mkdir()
    res = imagefs_env.run("mount", f"oci:{tmp_path / 'out'}", str(tmp_path / "mnt"), check=False)
    assert res.returncode != 0
    line = _one_line(res.stderr).lower()
    assert any(w in line for w in words), line


def test_usage_errors(imagefs_env: Env, tmp_path: Path) -> None:
    # not a transport, and not a valid registry reference either
    res = imagefs_env.run("convert", "Nonsense:th ing", f"oci:{tmp_path / 'x'}", check=False)
    assert res.returncode == 2, res.stderr
    assert "Nonsense" in _one_line(res.stderr)
    res = imagefs_env.run("convert", "ftp://host/x", f"oci:{tmp_path / 'x'}", check=False)
    assert res.returncode == 2, res.stderr
    assert "scheme" in _one_line(res.stderr)
    res = imagefs_env.run(
        "convert", f"oci:{tmp_path / 'nothing-here'}", f"oci:{tmp_path / 'x'}", check=False
    )
    assert res.returncode == 5, res.stderr
    line = _one_line(res.stderr)
    assert "nothing-here" in line and ("does not exist" in line or "oci-layout" in line)
    res = imagefs_env.run(
        "convert", "dir:/", f"oci:{tmp_path / 'x'}", "--avg-chunk", "1", check=False
    )
    assert res.returncode == 2
    assert "chunk" in _one_line(res.stderr)
