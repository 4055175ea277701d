"""Pushing to a real `docker-registry`, judged from the registry's own request log: a second
image that shares a layer uploads only its new blobs; `imagefs copy` mounts blobs across
repositories of one registry and uploads them to another; a failed push leaves no tag; data
blobs above the upload chunk size go up in PATCH chunks, smaller ones in one PUT."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import random
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagefs.digest import Digest
from registry.client import RegistryClient
from tests.conftest import Env
from tests.integration.registry_fixture import RunningRegistry, matching, run_registry
from tests.support.layers import LayerBuilder
from tests.support.oci import LayerBlob, write_oci_layout

MANIFEST_ACCEPT = "application/vnd.oci.image.manifest.v1+json"
DEFAULT_CHUNK_UPLOAD_BYTES = 16 << 20  # RegistryClient's default


@pytest.fixture(scope="module")
def registry() -> Iterator[RunningRegistry]:
    with run_registry() as reg:
        yield reg


@pytest.fixture
def env(imagefs_env: Env, tmp_path: Path) -> Env:
    imagefs_env.extra["IMAGEFS_DOCKER_CONFIG"] = str(tmp_path / "no-docker-config.json")
    return imagefs_env


def _rand(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


SHARED_LAYER = (
    LayerBuilder()
    .dirs("usr", "usr/lib")
    .file("usr/lib/shared.bin", _rand(1, 300 * 1024))
    .file("usr/lib/notes.txt", b"shared layer\n" * 500)
    .blob()
)


def _top_layer(seed: int) -> LayerBlob:
    return (
        LayerBuilder()
        .dirs("app")
        .file("app/data.bin", _rand(seed, 150 * 1024))
        .file("app/version.txt", f"version {seed}\n".encode())
        .blob()
    )


def _layout(tmp: Path, name: str, layers: list[LayerBlob]) -> str:
    write_oci_layout(tmp / name, layers, tag="t")
    return f"oci:{tmp / name}:t"


def _manifest(reg: RunningRegistry, repo: str, tag: str) -> dict[str, object]:
    req = urllib.request.Request(
        f"{reg.url}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        doc: dict[str, object] = json.loads(resp.read())
    return doc


def _blob_digests(manifest: dict[str, object]) -> list[str]:
    config = manifest["config"]
    layers = manifest["layers"]
    assert isinstance(config, dict) and isinstance(layers, list)
    return [config["digest"], *(layer["digest"] for layer in layers)]


def _manifest_status(reg: RunningRegistry, repo: str, tag: str, auth: str = "") -> int:
    headers = {"Accept": MANIFEST_ACCEPT}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    req = urllib.request.Request(f"{reg.url}/v2/{repo}/manifests/{tag}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


def _uploaded(lines: list[str], repo: str, digest: str) -> list[str]:
    """The completing PUTs of uploads of `digest` into `repo`."""
    quoted = digest.replace(":", "%3A")
    return [ln for ln in matching(lines, "PUT", f"/v2/{repo}/blobs/uploads/", 201) if quoted in ln]


def _lines(reg: RunningRegistry) -> int:
    return len(reg.log.splitlines())


# ------------------------------------------------------------------ dedup on push


def test_second_push_uploads_only_new_blobs(
    env: Env, registry: RunningRegistry, tmp_path: Path
) -> None:
    repo = "push/dedup"
    image_a = _layout(tmp_path, "a", [SHARED_LAYER, _top_layer(2)])
    image_b = _layout(tmp_path, "b", [SHARED_LAYER, _top_layer(3)])

    env.json("convert", image_a, f"{registry.host}/{repo}:v1")
    blobs_a = _blob_digests(_manifest(registry, repo, "v1"))
    first = registry.completed()
    assert len(matching(first, "PUT", f"/v2/{repo}/blobs/uploads/", 201)) == len(blobs_a)
    for digest in blobs_a:
        assert len(_uploaded(first, repo, digest)) == 1, digest

    since = _lines(registry)
    env.json("convert", image_b, f"{registry.host}/{repo}:v2")
    manifest_b = _manifest(registry, repo, "v2")
    blobs_b = _blob_digests(manifest_b)
    second = registry.completed(since)

    layers_b = manifest_b["layers"]
    assert isinstance(layers_b, list)
    shared_data_blob = layers_b[0]["digest"]
    assert shared_data_blob in blobs_a, "the shared layer did not give the same data blob"
    new = [d for d in blobs_b if d not in blobs_a]
    assert new and len(new) < len(blobs_b)

    # only the new blobs were uploaded: one POST + one PUT each, no other upload
    assert len(matching(second, "POST", f"/v2/{repo}/blobs/uploads/")) == len(new)
    assert len(matching(second, "PUT", f"/v2/{repo}/blobs/uploads/")) == len(new)
    for digest in new:
        assert len(_uploaded(second, repo, digest)) == 1, digest
    # the shared blob was asked for (HEAD, present) and skipped
    assert matching(second, "HEAD", f"/v2/{repo}/blobs/{shared_data_blob}", 200)
    assert _uploaded(second, repo, shared_data_blob) == []
    assert len(matching(second, "PUT", f"/v2/{repo}/manifests/v2", 201)) == 1

    assert env.json("check", f"{registry.host}/{repo}:v2")["ok"] is True


# ------------------------------------------------------------------ copy


def test_copy_within_one_registry_mounts_every_blob(
    env: Env, registry: RunningRegistry, tmp_path: Path
) -> None:
    src = f"{registry.host}/push/copy-src:v1"
    dst = f"{registry.host}/push/copy-dst:v1"
    digest = env.json("convert", _layout(tmp_path, "a", [SHARED_LAYER, _top_layer(4)]), src)[
        "manifest_digest"
    ]
    blobs = _blob_digests(_manifest(registry, "push/copy-src", "v1"))

    since = _lines(registry)
    result = env.json("copy", src, dst)
    assert result["manifest_digest"] == digest
    assert result["target"] == dst
    assert (result["blobs_copied"], result["blobs_skipped"]) == (len(blobs), 0)
    log = registry.completed(since)

    mounts = matching(log, "POST", "/v2/push/copy-dst/blobs/uploads/?", 201)
    assert len(mounts) == len(blobs)
    assert all("from=push%2Fcopy-src" in ln for ln in mounts)
    for blob in blobs:
        assert [ln for ln in mounts if f"mount={blob.replace(':', '%3A')}" in ln], blob
    assert matching(log, "PUT", "/v2/push/copy-dst/blobs/uploads/") == []
    assert matching(log, "PATCH", "/blobs/uploads/") == []
    assert matching(log, "GET", "/v2/push/copy-src/blobs/") == [], "copy downloaded blobs"
    assert len(matching(log, "PUT", "/v2/push/copy-dst/manifests/v1", 201)) == 1

    checked = env.json("check", dst)
    assert checked["ok"] is True and checked["manifest_digest"] == digest


def test_copy_registry_to_oci_layout(env: Env, registry: RunningRegistry, tmp_path: Path) -> None:
    src = f"{registry.host}/push/to-layout:v1"
    digest = env.json("convert", _layout(tmp_path, "a", [SHARED_LAYER, _top_layer(5)]), src)[
        "manifest_digest"
    ]
    blobs = _blob_digests(_manifest(registry, "push/to-layout", "v1"))
    target = f"oci:{tmp_path / 'copied'}:v1"

    result = env.json("copy", src, target)
    assert result["manifest_digest"] == digest
    assert (result["blobs_copied"], result["blobs_skipped"]) == (len(blobs), 0)
    for blob in blobs:
        stored = tmp_path / "copied/blobs/sha256" / blob.split(":", 1)[1]
        assert str(Digest.of(stored.read_bytes())) == blob

    checked = env.json("check", target)
    assert checked["ok"] is True and checked["manifest_digest"] == digest
    assert env.json("inspect", target) == env.json("inspect", src)


def test_copy_oci_layout_to_another_registry(env: Env, tmp_path: Path) -> None:
    layout = f"oci:{tmp_path / 'converted'}:v1"
    digest = env.json("convert", _layout(tmp_path, "a", [SHARED_LAYER, _top_layer(6)]), layout)[
        "manifest_digest"
    ]
    with run_registry() as other:
        target = f"docker://{other.host}/push/from-layout:v1"
        result = env.json("copy", layout, target)
        assert result["manifest_digest"] == digest
        blobs = _blob_digests(_manifest(other, "push/from-layout", "v1"))
        assert (result["blobs_copied"], result["blobs_skipped"]) == (len(blobs), 0)
        assert result["bytes_copied"] == sum(other.blob_file(b).stat().st_size for b in blobs)
        log = other.completed()
        assert len(matching(log, "PUT", "/v2/push/from-layout/blobs/uploads/", 201)) == len(blobs)
        assert matching(log, "POST", "mount=") == []

        checked = env.json("check", target)
        assert checked["ok"] is True and checked["manifest_digest"] == digest

        since = _lines(other)
        again = env.json("copy", layout, target)
        assert (again["blobs_copied"], again["blobs_skipped"]) == (0, len(blobs))
        assert matching(other.completed(since), "PUT", "/blobs/uploads/") == []


# ------------------------------------------------------------------ failed pushes


def test_push_without_credentials_leaves_no_manifest(env: Env, tmp_path: Path) -> None:
    users = {"bob": "Bob-Pw-0a1b"}
    source = _layout(tmp_path, "a", [SHARED_LAYER, _top_layer(7)])
    with run_registry(users) as reg:
        res = env.run("convert", source, f"{reg.host}/push/denied:v1", check=False)
        assert res.returncode == 10, res.stderr
        assert _manifest_status(reg, "push/denied", "v1", auth="bob:Bob-Pw-0a1b") == 404
        assert matching(reg.completed(), "PUT", "/v2/push/denied/") == []


def test_push_failing_midway_leaves_no_manifest(
    env: Env, registry: RunningRegistry, tmp_path: Path
) -> None:
    good = SHARED_LAYER
    bad = _top_layer(8)
    corrupt = LayerBlob(bad.data[:60] + b"\x00garbage" * 200, bad.media_type, bad.diff_id)
    source = _layout(tmp_path, "a", [good, corrupt])
    res = env.run("convert", source, f"{registry.host}/push/midway:v1", check=False)
    assert res.returncode == 3, res.stderr
    assert _manifest_status(registry, "push/midway", "v1") == 404
    log = registry.completed()
    # the first layer's data blob went up before the second layer failed
    assert matching(log, "PUT", "/v2/push/midway/blobs/uploads/", 201)
    assert matching(log, "PUT", "/v2/push/midway/manifests/") == []


# ------------------------------------------------------------------ chunked uploads


def test_large_data_blob_is_uploaded_in_chunks(
    env: Env, registry: RunningRegistry, tmp_path: Path
) -> None:
    big = os.urandom(DEFAULT_CHUNK_UPLOAD_BYTES + (2 << 20))  # incompressible
    layer = LayerBuilder().dirs("data").file("data/big.bin", big).blob(compression="none")
    repo = "push/big"
    ref = f"{registry.host}/{repo}:v1"
    env.json("convert", _layout(tmp_path, "big", [layer]), ref)
    manifest = _manifest(registry, repo, "v1")
    layers = manifest["layers"]
    assert isinstance(layers, list)
    sizes = [int(layer_desc["size"]) for layer_desc in layers]
    assert max(sizes) > DEFAULT_CHUNK_UPLOAD_BYTES
    expected_patches = sum(
        math.ceil(size / DEFAULT_CHUNK_UPLOAD_BYTES)
        for size in sizes
        if size > DEFAULT_CHUNK_UPLOAD_BYTES
    )
    log = registry.completed()
    patches = matching(log, "PATCH", f"/v2/{repo}/blobs/uploads/", 202)
    assert len(patches) == expected_patches
    assert len(matching(log, "PATCH", f"/v2/{repo}/blobs/uploads/")) == expected_patches

    out = tmp_path / "unpacked"
    env.run("unpack", ref, str(out))
    assert (out / "data/big.bin").read_bytes() == big


@pytest.mark.parametrize(
    "size",
    [10 * 1024, 64 * 1024, 64 * 1024 + 1, 128 * 1024, 300 * 1024],
    ids=["10KiB", "64KiB", "64KiB+1", "128KiB", "300KiB"],
)
def test_client_chunked_and_monolithic_uploads(registry: RunningRegistry, size: int) -> None:
    chunk = 64 * 1024
    data = os.urandom(size)
    digest = Digest.of(data)
    repo = f"push/client-{size}"
    since = _lines(registry)
    with RegistryClient(registry.host, chunk_upload_bytes=chunk, retries=0) as client:
        assert client.push_blob_from(repo, digest, size, io.BytesIO(data)) == "pushed"
        patches = math.ceil(size / chunk) if size > chunk else 0
        assert client.stats.upload_chunks == patches
        assert client.read_blob(repo, digest) == data
    log = registry.completed(since)
    assert len(matching(log, "PATCH", f"/v2/{repo}/blobs/uploads/", 202)) == patches
    assert len(matching(log, "PATCH", "/blobs/uploads/")) == patches
    assert len(matching(log, "POST", f"/v2/{repo}/blobs/uploads/", 202)) == 1
    assert len(_uploaded(log, repo, str(digest))) == 1
    assert registry.blob_file(str(digest)).read_bytes() == data
