"""OCI model artifacts as conversion sources: ORAS-style and CNCF ModelPack manifests whose
layers are plain files (named by their title annotation) or tars, with a config that is not
an image config, from a layout and from a registry."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagefs.digest import Digest
from registry.client import RegistryClient
from registry.reference import Reference
from tests.conftest import Env
from tests.integration.registry_fixture import RunningRegistry, run_registry

rng = random.Random(5)
WEIGHTS = {
    "model-00001-of-00002.safetensors": rng.randbytes(700_000),
    "model-00002-of-00002.safetensors": rng.randbytes(500_000),
}
CONFIG_JSON = b'{"architectures": ["Tiny"], "hidden_size": 64}\n'
TOKENIZER = {"tokenizer/vocab.txt": b"a\nb\nc\n" * 1000, "tokenizer/merges.txt": b"a b\n" * 500}
EXPECTED = {**WEIGHTS, "config.json": CONFIG_JSON, **TOKENIZER}
MODEL_CONFIG = b'{"descriptor": {"name": "tiny"}, "modelfs": {"type": "layers"}}'


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def artifact() -> tuple[bytes, dict[str, bytes]]:
    """(manifest, blobs by digest) of a ModelPack-style model artifact."""
    blobs: dict[str, bytes] = {}

    def desc(media_type: str, data: bytes, title: str | None = None) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        d: dict[str, object] = {"mediaType": media_type, "digest": digest, "size": len(data)}
        if title is not None:
            d["annotations"] = {"org.opencontainers.image.title": title}
        return d

    layers = [
        desc("application/vnd.cncf.model.weight.v1.raw", data, name)
        for name, data in WEIGHTS.items()
    ]
    layers.append(desc("application/octet-stream", CONFIG_JSON, "config.json"))  # ORAS style
    layers.append(desc("application/vnd.cncf.model.weight.v1.tar", _tar(TOKENIZER)))
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.cncf.model.manifest.v1+json",
        "config": desc("application/vnd.cncf.model.config.v1+json", MODEL_CONFIG),
        "layers": layers,
    }
    return json.dumps(manifest).encode(), blobs


def write_layout(root: Path) -> str:
    manifest, blobs = artifact()
    (root / "blobs" / "sha256").mkdir(parents=True)
    for digest, data in {
        **blobs,
        "sha256:" + hashlib.sha256(manifest).hexdigest(): manifest,
    }.items():
        (root / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "tiny"},
            }
        ],
    }
    (root / "index.json").write_text(json.dumps(index))
    return f"oci:{root}:tiny"


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def registry() -> Iterator[RunningRegistry]:
    with run_registry() as reg:
        yield reg


def test_model_artifact_from_a_layout(imagefs_env: Env, tmp_path: Path) -> None:
    source = write_layout(tmp_path / "artifact")
    out = imagefs_env.json("convert", source, f"oci:{tmp_path / 'out'}:tiny")
    assert out["bytes_in"] == sum(len(d) for d in EXPECTED.values())
    imagefs_env.run("unpack", f"oci:{tmp_path / 'out'}:tiny", str(tmp_path / "tree"))
    assert _tree(tmp_path / "tree") == EXPECTED


def test_model_artifact_from_a_registry(
    registry: RunningRegistry, imagefs_env: Env, tmp_path: Path
) -> None:
    manifest, blobs = artifact()
    with RegistryClient(registry.host) as client:
        for data in blobs.values():
            client.push_blob("models/tiny", data)
        client.push_manifest(
            Reference.parse(f"{registry.host}/models/tiny:v1"),
            "application/vnd.oci.image.manifest.v1+json",
            manifest,
        )
    target = f"{registry.host}/models/tiny:v1-imagefs"
    imagefs_env.json("convert", f"{registry.host}/models/tiny:v1", target)
    imagefs_env.run("unpack", target, str(tmp_path / "tree"))
    assert _tree(tmp_path / "tree") == EXPECTED


def test_a_corrupt_file_layer_is_a_source_error(imagefs_env: Env, tmp_path: Path) -> None:
    source = write_layout(tmp_path / "artifact")
    digest = Digest.of(next(iter(WEIGHTS.values())))
    blob = tmp_path / "artifact" / "blobs" / "sha256" / digest.hex
    data = bytearray(blob.read_bytes())
    data[1000] ^= 1
    blob.write_bytes(bytes(data))
    res = imagefs_env.run("convert", source, f"oci:{tmp_path / 'out'}", check=False)
    assert res.returncode == 3 and "does not match its digest" in res.stderr
    assert not (tmp_path / "out").exists()


def test_an_untitled_unknown_layer_is_refused(imagefs_env: Env, tmp_path: Path) -> None:
    source = write_layout(tmp_path / "artifact")
    root = tmp_path / "artifact"
    index = json.loads((root / "index.json").read_text())
    mpath = root / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads(mpath.read_bytes())
    del manifest["layers"][0]["annotations"]
    raw = json.dumps(manifest).encode()
    digest = hashlib.sha256(raw).hexdigest()
    (root / "blobs" / "sha256" / digest).write_bytes(raw)
    index["manifests"][0].update(digest="sha256:" + digest, size=len(raw))
    (root / "index.json").write_text(json.dumps(index))
    res = imagefs_env.run("convert", source, f"oci:{tmp_path / 'out'}", check=False)
    assert res.returncode == 3 and "title annotation" in res.stderr
