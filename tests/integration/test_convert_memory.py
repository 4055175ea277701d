"""Streaming: the peak memory of `imagefs convert` does not grow with the layer size."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.conftest import REPO, Env
from tests.support.oci import image_config

MIB = 1 << 20


class _RandomStream(io.RawIOBase):
    """`size` pseudo-random bytes, generated as they are read (never all in memory)."""

    def __init__(self, size: int, seed: int) -> None:
        self.left = size
        self.block = hashlib.sha256(str(seed).encode()).digest() * (MIB // 32)
        self.counter = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buf), self.left, MIB)
        if n <= 0:
            return 0
        self.counter += 1
        # vary every MiB so chunks do not dedup against each other
        piece = hashlib.sha256(self.counter.to_bytes(8, "little")).digest() + self.block[32:]
        buf[:n] = piece[:n]
        self.left -= n
        return n


def _write_layout(root: Path, size: int) -> str:
    """An OCI layout with one uncompressed layer holding one file of `size` bytes, written
    to disk as a stream."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    tmp = root / "layer.tar"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("big.bin")
        info.size = size
        tar.addfile(info, io.BufferedReader(_RandomStream(size, size)))
    digest = hashlib.sha256()
    with open(tmp, "rb") as f:
        while block := f.read(8 * MIB):
            digest.update(block)
    layer_digest = "sha256:" + digest.hexdigest()
    os.rename(tmp, blobs / digest.hexdigest())
    layer = {
        "mediaType": "application/vnd.oci.image.layer.v1.tar",
        "digest": layer_digest,
        "size": (blobs / digest.hexdigest()).stat().st_size,
    }
    config = json.dumps(image_config([layer_digest])).encode()  # uncompressed: diff_id = digest
    cdigest = hashlib.sha256(config).hexdigest()
    (blobs / cdigest).write_bytes(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": f"sha256:{cdigest}",
                "size": len(config),
            },
            "layers": [layer],
        }
    ).encode()
    mdigest = hashlib.sha256(manifest).hexdigest()
    (blobs / mdigest).write_bytes(manifest)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": f"sha256:{mdigest}",
                        "size": len(manifest),
                        "annotations": {"org.opencontainers.image.ref.name": "t"},
                    }
                ],
            }
        )
    )
    return f"oci:{root}:t"


def _peak_rss_mib(env: Env, source: str, target: str) -> float:
    """Peak RSS of the convert process itself, measured by /usr/bin/time (a small parent:
    a process forked from pytest would count pytest's pages until it execs)."""
    res = subprocess.run(
        [
            "/usr/bin/time",
            "-f",
            "peak-kib=%M",
            sys.executable,
            "-m",
            "cli.main",
            "convert",
            source,
            target,
        ],
        cwd=REPO,
        env=env.vars,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    line = [ln for ln in res.stderr.splitlines() if ln.startswith("peak-kib=")][-1]
    return int(line.split("=")[1]) / 1024


def test_peak_memory_does_not_grow_with_layer_size(imagefs_env: Env, tmp_path: Path) -> None:
    small = _peak_rss_mib(
        imagefs_env, _write_layout(tmp_path / "s", 16 * MIB), f"oci:{tmp_path / 'o1'}"
    )
    large = _peak_rss_mib(
        imagefs_env, _write_layout(tmp_path / "l", 512 * MIB), f"oci:{tmp_path / 'o2'}"
    )
    # 32x the input may cost a few more buffers in flight, never the layer itself
    assert large < small + 96, (small, large)
    assert large < 256, large
