"""Lazy mounts straight from a real registry, sharing one node cache: a second image that
shares most chunks with the first fetches only what the first did not; the Range fallback
through a proxy that makes the registry answer 200."""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Env, Mounter
from tests.integration.http_proxy import run_proxy
from tests.integration.registry_fixture import RunningRegistry, run_registry
from tests.support.layers import LayerBuilder
from tests.support.oci import LayerBlob, write_oci_layout

SHARED = {f"lib/shared{i}.bin": random.Random(i).randbytes(150_000 + 7_000 * i) for i in range(8)}
NEW = random.Random(99).randbytes(300_000)  # incompressible: stored raw, size known


@pytest.fixture(scope="module")
def registry() -> Iterator[RunningRegistry]:
    with run_registry() as reg:
        yield reg


def _layout(root: Path, files: dict[str, bytes], tag: str) -> str:
    layer = LayerBuilder()
    for path, data in files.items():
        layer.file(path, data)
    write_oci_layout(root, [LayerBlob.from_tar(layer.tar())], tag=tag)
    return f"oci:{root}:{tag}"


@pytest.fixture(scope="module")
def images(registry: RunningRegistry) -> dict[str, str]:
    """Two images in the registry: A (the shared files) and B (the same files plus one new
    file, in a different layer, so every blob digest differs)."""
    with tempfile.TemporaryDirectory(prefix="ifs-cache-") as tmp:
        env = Env(Path(tmp))
        a = f"{registry.host}/apps/a:v1"
        b = f"{registry.host}/apps/b:v1"
        env.run("convert", _layout(Path(tmp) / "a", SHARED, "a"), a)
        env.run("convert", _layout(Path(tmp) / "b", {**SHARED, "bin/new.bin": NEW}, "b"), b)
    return {"a": a, "b": b}


def _read_all(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = path.read_bytes()
    return out


def test_second_image_fetches_only_what_the_first_did_not(
    images: dict[str, str], imagefs_env: Env, mount_image: Mounter
) -> None:
    a = mount_image(images["a"], "a")
    assert _read_all(a.path) == SHARED
    first = a.stats()
    shared_bytes = sum(len(d) for d in SHARED.values())
    assert first["bytes_fetched"] >= shared_bytes  # everything came from the registry
    assert first["requests"] >= 1

    b = mount_image(images["b"], "b")  # same node cache (the env's cache dir)
    assert _read_all(b.path) == {**SHARED, "bin/new.bin": NEW}
    second = b.stats()
    # only the new file's chunks travel; everything shared is a cache hit
    assert len(NEW) <= second["bytes_fetched"] <= len(NEW) + 4096
    assert second["cache_hits"] >= len(SHARED)
    assert second["requests"] <= first["requests"]
    assert list(second["bytes_fetched_by_blob"].values()) == [second["bytes_fetched"]]
    assert second["request_latency_ms"]["max"] > 0


def test_cold_reads_fetch_a_fraction_of_the_image(
    images: dict[str, str], imagefs_env: Env, mount_image: Mounter
) -> None:
    m = mount_image(images["b"], "b")
    assert (m.path / "lib/shared3.bin").read_bytes() == SHARED["lib/shared3.bin"]
    stats = m.stats()
    total = sum(len(d) for d in SHARED.values()) + len(NEW)
    assert stats["bytes_read"] == len(SHARED["lib/shared3.bin"])
    assert stats["bytes_fetched"] <= len(SHARED["lib/shared3.bin"]) + 64 * 1024
    assert stats["bytes_fetched"] < total / 4


@pytest.mark.reliability(
    "fault", "a proxy or registry that ignores Range (answers 200)", "correct bytes, sliced"
)
def test_range_fallback_through_a_proxy_that_drops_range(
    images: dict[str, str], registry: RunningRegistry, imagefs_env: Env, mount_image: Mounter
) -> None:
    seen = len(registry.log.splitlines())
    with run_proxy(strip_range=True) as proxy:
        imagefs_env.extra["IMAGEFS_REGISTRY_PROXY"] = proxy.url
        m = mount_image(images["b"], "b")
        assert (m.path / "bin/new.bin").read_bytes() == NEW
        assert (m.path / "lib/shared0.bin").read_bytes() == SHARED["lib/shared0.bin"]
        blob_gets = [r for r in proxy.requests if r.startswith("GET ") and "/blobs/" in r]
        assert blob_gets, proxy.requests  # the reads went through the proxy
        assert any("/manifests/" in r for r in proxy.requests)
    # the registry answered those range reads with whole blobs (200), and imagefs sliced
    served = [
        line
        for line in registry.log.splitlines()[seen:]
        if "response completed" in line and "method=GET" in line and "/v2/apps/b/blobs/" in line
    ]
    assert len(served) == len(blob_gets)
    assert all("http.response.status=200" in line for line in served)


@pytest.mark.reliability(
    "fault", "503 with Retry-After, twice", "retried after the delay; correct bytes"
)
def test_reads_retry_a_busy_registry_honouring_retry_after(
    images: dict[str, str], imagefs_env: Env, mount_image: Mounter
) -> None:
    import time

    with run_proxy(fail_first=2) as proxy:
        imagefs_env.extra["IMAGEFS_REGISTRY_PROXY"] = proxy.url
        started = time.monotonic()
        m = mount_image(images["b"], "b")  # the bootstrap read is refused twice, then served
        assert (m.path / "bin/new.bin").read_bytes() == NEW
        waited = time.monotonic() - started
    refused = [r for r in proxy.requests if r.endswith("-> 503")]
    assert len(refused) == 2
    assert waited >= 2.0  # Retry-After: 1, honoured twice
    assert m.stats()["bytes_fetched"] >= len(NEW)


def test_blob_reads_follow_redirects_to_object_storage_without_credentials(
    imagefs_env: Env, mount_image: Mounter, tmp_path: Path
) -> None:
    from tests.integration.http_proxy import run_file_server

    users = {"ci": "redirect-pw-91c2"}
    data = tmp_path / "registry-data"
    data.mkdir()
    with (
        run_file_server(data) as store,
        run_registry(users, data_dir=data, redirect_base=store.url) as reg,
    ):
        ref = f"{reg.host}/apps/redirected:v1"
        imagefs_env.extra["IMAGEFS_CREDS"] = f"ci:{users['ci']}"
        imagefs_env.run(
            "convert",
            _layout(tmp_path / "src", {"bin/new.bin": NEW}, "r"),
            ref,
            "--dest-creds",
            f"ci:{users['ci']}",
        )
        m = mount_image(ref)
        assert (m.path / "bin/new.bin").read_bytes() == NEW
    blob_paths = [p for p, _ in store.requests if p.endswith("/data")]
    assert blob_paths, store.requests  # the reads went to the object store
    assert all("Authorization" not in h for _, h in store.requests)


def test_platform_selection_from_a_registry_index(
    images: dict[str, str], registry: RunningRegistry, imagefs_env: Env, mount_image: Mounter
) -> None:
    from imagefs.oci import MEDIA_TYPE_OCI_INDEX, Descriptor, Index
    from registry.client import RegistryClient
    from registry.reference import Reference

    digests = {}
    for name, arch in (("a", "amd64"), ("b", "arm64")):
        out = imagefs_env.json("copy", images[name], f"{registry.host}/apps/multi:{arch}")
        digests[arch] = out["manifest_digest"]
    with RegistryClient(registry.host) as client:
        entries = []
        for arch, digest in digests.items():
            ref = Reference.parse(f"{registry.host}/apps/multi@{digest}")
            desc, _ = client.get_manifest(ref)
            entries.append(
                Descriptor(
                    desc.media_type,
                    desc.digest,
                    desc.size,
                    platform={"os": "linux", "architecture": arch},
                )
            )
        index = Index(tuple(entries)).encode()
        client.push_manifest(
            Reference.parse(f"{registry.host}/apps/multi:both"), MEDIA_TYPE_OCI_INDEX, index
        )
    ref = f"{registry.host}/apps/multi:both"
    for arch, digest in digests.items():
        info = imagefs_env.json("inspect", ref, "--platform", f"linux/{arch}")
        assert info["manifest_digest"] == digest
    res = imagefs_env.run("inspect", ref, "--platform", "linux/riscv64", check=False)
    assert res.returncode == 5 and "riscv64" in res.stderr
    m = mount_image(ref, "multi", "--platform", "linux/arm64")
    assert (m.path / "bin/new.bin").read_bytes() == NEW  # only image b has this file
