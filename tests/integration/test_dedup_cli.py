"""`imagefs dedup` and `imagefs inspect --json` per-blob counts through the real CLI: two
images built from random (incompressible) files, most of them shared, converted into two
layouts; the shared/own bytes are exactly the files built, the layer-level union is larger
than the chunk-level stored bytes, and a plain OCI image gets layer figures only."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Env
from tests.support.layers import LayerBuilder
from tests.support.oci import LayerBlob, write_oci_layout

pytestmark = [pytest.mark.integration]

_rng = random.Random(20240611)
BIG = _rng.randbytes(400_000)  # several FastCDC chunks
MID = _rng.randbytes(120_000)
SMALL = _rng.randbytes(5_000)  # below the minimum: one chunk
A_ONLY = _rng.randbytes(70_000)
B_ONLY = _rng.randbytes(90_000)
TOP = _rng.randbytes(150_000)  # in the top layer of both a and b
COMMON = len(BIG) + len(MID) + len(SMALL) + len(TOP)


def _layer(builder: LayerBuilder) -> LayerBlob:
    return LayerBlob.from_tar(builder.tar())


@dataclass(frozen=True)
class Images:
    src: str  # oci:PATH of the source layout, tags a and b
    base: LayerBlob  # the layer a and b share
    layer_a: LayerBlob
    layer_b: LayerBlob
    out_a: str  # a and b converted, each into a layout of its own
    out_b: str


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    root = tmp_path_factory.mktemp("dedup")
    base = _layer(
        LayerBuilder()
        .dirs("usr", "usr/lib")
        .file("usr/lib/big", BIG)
        .file("usr/lib/mid", MID)
        .file("usr/lib/small", SMALL)
    )
    layer_a = _layer(
        LayerBuilder()
        .dirs("opt")
        .file("opt/a", A_ONLY)
        .file("opt/big-copy", BIG)
        .file("opt/top", TOP)
    )
    layer_b = _layer(LayerBuilder().dirs("opt").file("opt/b", B_ONLY).file("opt/top", TOP))
    write_oci_layout(root / "src", [base, layer_a], tag="a")
    write_oci_layout(root / "src", [base, layer_b], tag="b")
    env = Env(root / "env")
    for tag in ("a", "b"):
        env.json("convert", f"oci:{root}/src:{tag}", f"oci:{root}/out-{tag}")
    return Images(
        f"oci:{root}/src", base, layer_a, layer_b, f"oci:{root}/out-a", f"oci:{root}/out-b"
    )


def test_dedup_of_two_converted_images(imagefs_env: Env, images: Images) -> None:
    report = imagefs_env.json("dedup", images.out_a, images.out_b)
    a, b = report["images"]
    assert [a["name"], b["name"]] == [images.out_a, images.out_b]
    assert a["imagefs"] and b["imagefs"]

    # files: image a holds BIG twice; distinct chunks count it once
    assert a["logical_bytes"] == COMMON + len(A_ONLY) + len(BIG)
    assert a["unique_chunk_bytes"] == COMMON + len(A_ONLY)
    assert b["logical_bytes"] == b["unique_chunk_bytes"] == COMMON + len(B_ONLY)
    # exactly the files the two have in common are shared
    assert (a["shared_bytes"], a["own_bytes"]) == (COMMON, len(A_ONLY))
    assert (b["shared_bytes"], b["own_bytes"]) == (COMMON, len(B_ONLY))
    # random bytes do not compress: every chunk is stored raw
    assert a["stored_bytes"] == a["unique_chunk_bytes"]
    assert b["stored_bytes"] == b["unique_chunk_bytes"]

    assert report["total_logical_bytes"] == a["logical_bytes"] + b["logical_bytes"]
    union = COMMON + len(A_ONLY) + len(B_ONLY)
    assert report["total_unique_chunk_bytes"] == report["total_stored_bytes"] == union
    assert report["sum_stored_bytes"] == a["stored_bytes"] + b["stored_bytes"]

    # whole layers: the base layer converts to the same blob for both, so that one is
    # shared; TOP sits in each image's own top layer, so layer sharing stores it twice
    assert a["layers"] == b["layers"] == 3  # two blobs and the bootstrap
    assert a["shared_layer_bytes"] == b["shared_layer_bytes"]
    shared_blob = a["shared_layer_bytes"]
    assert len(BIG) + len(MID) + len(SMALL) < shared_blob < a["layer_bytes"]
    assert a["own_layer_bytes"] == a["layer_bytes"] - shared_blob
    assert report["total_layer_bytes"] == a["layer_bytes"] + b["layer_bytes"]
    assert report["union_layer_bytes"] == report["total_layer_bytes"] - shared_blob
    assert report["union_layer_bytes"] > report["total_stored_bytes"] + len(TOP)
    assert report["imagefs_union_layer_bytes"] == report["union_layer_bytes"]
    assert a["bootstrap_bytes"] > 0 and b["bootstrap_bytes"] > 0
    expected = (
        1 - (union + a["bootstrap_bytes"] + b["bootstrap_bytes"]) / (report["union_layer_bytes"])
    )
    assert report["saving_vs_layers"] == pytest.approx(expected, abs=1e-4)
    assert report["saving_vs_layers"] > 0.1

    text = imagefs_env.run("dedup", images.out_a, images.out_b).stdout
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["image", "files"]
    assert lines[1].startswith(images.out_a) and lines[2].startswith(images.out_b)
    assert lines[3].split()[0] == "set"
    assert "saving vs layers" in lines[5]


def test_dedup_with_plain_oci_images(imagefs_env: Env, images: Images) -> None:
    src, base, layer_a, layer_b = images.src, images.base, images.layer_a, images.layer_b
    report = imagefs_env.json("dedup", f"{src}:a", images.out_a, f"{src}:b")
    plain_a, conv_a, plain_b = report["images"]
    for plain in (plain_a, plain_b):
        assert plain["imagefs"] is False
        for key in ("logical_bytes", "unique_chunk_bytes", "stored_bytes", "shared_bytes"):
            assert plain[key] is None, key
        assert plain["own_bytes"] is None and plain["chunks"] is None
        assert plain["layers"] == 2
        assert plain["shared_layer_bytes"] == base.size  # the base layer, shared by a and b
    assert plain_a["layer_bytes"] == base.size + layer_a.size
    assert plain_a["own_layer_bytes"] == layer_a.size
    assert plain_b["layer_bytes"] == base.size + layer_b.size
    # the only imagefs image shares no chunk (plain images have no chunk figures)
    assert conv_a["shared_bytes"] == 0
    assert conv_a["own_bytes"] == conv_a["unique_chunk_bytes"] == COMMON + len(A_ONLY)
    assert report["total_stored_bytes"] == conv_a["stored_bytes"]
    assert report["union_layer_bytes"] == (
        base.size + layer_a.size + layer_b.size + conv_a["layer_bytes"]
    )
    assert report["imagefs_union_layer_bytes"] == conv_a["layer_bytes"]


def test_inspect_reports_per_blob_reference_counts(imagefs_env: Env, images: Images) -> None:
    info = imagefs_env.json("inspect", images.out_a)
    blobs = info["blobs"]
    assert blobs
    for b in blobs:
        # this image wrote its blobs: each chunk it stored is referenced, every byte of
        # the chunk data area belongs to a referenced chunk
        assert b["chunks_stored"] == b["chunks"] == b["referenced_chunks"] > 0
        assert b["referenced_fraction"] == 1.0
        assert b["chunk_data_bytes"] == b["stored_bytes"]
        assert b["references"] >= b["chunks"]
        assert b["referenced_bytes"] >= b["uncompressed_bytes"]
    # BIG is referenced twice (usr/lib/big and opt/big-copy), stored once
    assert (
        sum(b["referenced_bytes"] for b in blobs)
        == info["bytes"]
        == COMMON + len(A_ONLY) + len(BIG)
    )
    assert sum(b["uncompressed_bytes"] for b in blobs) == info["unique_bytes"]
    assert sum(b["references"] for b in blobs) == info["chunks"]
    assert sum(b["references"] for b in blobs) > sum(b["chunks"] for b in blobs)


def test_dedup_errors_are_one_line(imagefs_env: Env, tmp_path: Path) -> None:
    res = imagefs_env.run("dedup", f"oci:{tmp_path}/missing", check=False)
    assert res.returncode == 5  # not found
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("imagefs: "), res.stderr
    res = imagefs_env.run("dedup", check=False)
    assert res.returncode == 2 and "Missing argument" in res.stderr
