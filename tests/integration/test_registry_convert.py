"""Converting an ordinary OCI image straight from a registry: skopeo pushes the sample image,
`imagefs convert docker://...` streams its layers and pushes the imagefs image, and the lazy
mount of the result matches `umoci raw unpack` of the source."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Env, Mounter
from tests.integration.registry_fixture import RunningRegistry, run_registry
from tests.support import samples
from tests.support.trees import compare_trees, umoci_raw_unpack


@pytest.fixture(scope="module")
def registry() -> Iterator[RunningRegistry]:
    with run_registry() as reg:
        yield reg


def test_convert_from_a_registry_source_to_a_registry_target(
    registry: RunningRegistry, imagefs_env: Env, mount_image: Mounter, tmp_path: Path
) -> None:
    layout, tag = samples.write_every_entry_type_image(tmp_path / "src", compression="mixed")
    reference = umoci_raw_unpack(layout, tag, tmp_path / "umoci")
    plain = f"{registry.host}/apps/plain:v1"
    subprocess.run(
        ["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:{tag}", f"docker://{plain}"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    req = urllib.request.Request(
        f"{registry.url}/v2/apps/plain/manifests/v1",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        plain_digest = resp.headers["Docker-Content-Digest"]
        plain_layers = json.loads(resp.read())["layers"]

    seen = len(registry.log.splitlines())
    converted = f"{registry.host}/apps/plain:v1-imagefs"
    result = imagefs_env.json("convert", f"docker://{plain}", converted)
    log = registry.completed(seen)
    # every source layer was streamed once, whole (no Range), by imagefs
    for layer in plain_layers:
        gets = [ln for ln in log if "method=GET " in ln and layer["digest"] in ln]
        assert len(gets) == 1 and "http.response.status=200 " in gets[0], layer["digest"]

    req = urllib.request.Request(
        f"{registry.url}/v2/apps/plain/manifests/v1-imagefs",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        manifest = json.loads(resp.read())
    assert resp.headers["Docker-Content-Digest"] == result["manifest_digest"]
    assert manifest["subject"]["digest"] == plain_digest  # points at the source image

    m = mount_image(converted)
    assert compare_trees(reference, m.path) == []
