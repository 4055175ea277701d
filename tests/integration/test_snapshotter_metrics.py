"""The snapshotter's Prometheus endpoint, scraped over HTTP: per-image figures asked of real
imagefs mounts at scrape time, and RPC counters."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from fuse_mount.mount import query
from fuse_mount.snapshotter.metrics import serve_metrics
from fuse_mount.snapshotter.service import RPC_STATS
from imagefs.config import Config
from tests.conftest import Env, Mounter
from tests.integration.registry_fixture import free_port
from tests.support.layers import LayerBuilder
from tests.support.oci import LayerBlob, write_oci_layout


def test_metrics_report_mounts_and_rpcs(
    imagefs_env: Env, mount_image: Mounter, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 4000
    layer = LayerBuilder().file("srv/data.bin", data)
    write_oci_layout(tmp_path / "src", [LayerBlob.from_tar(layer.tar())], tag="m")
    imagefs_env.run("convert", f"oci:{tmp_path / 'src'}:m", f"oci:{tmp_path / 'out'}:m")
    # the snapshotter keeps its image mounts in one directory: the mounter's is that here
    m = mount_image(f"oci:{tmp_path / 'out'}:m", "images/one")
    assert (m.path / "srv" / "data.bin").read_bytes() == data
    RPC_STATS.record("Prepare", "OK", 0.01)
    RPC_STATS.record("Remove", "FAILED_PRECONDITION", 0.002)

    config = Config(run_dir=Path(imagefs_env.vars["IMAGEFS_RUN_DIR"]))
    port = free_port()
    serve_metrics(f"127.0.0.1:{port}", m.path.parent, lambda p: query(p, config))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    image = f'image="oci:{tmp_path / "out"}:m"'
    assert "imagefs_mounts 1.0" in text
    fetched = [ln for ln in text.splitlines() if ln.startswith("imagefs_bytes_fetched_total{")]
    assert len(fetched) == 1 and image in fetched[0] and float(fetched[0].split()[-1]) > 0
    read = [ln for ln in text.splitlines() if ln.startswith("imagefs_bytes_read_total{")]
    assert float(read[0].split()[-1]) >= len(data)
    assert 'imagefs_snapshotter_rpcs_total{code="OK",method="Prepare"}' in text
    assert 'imagefs_snapshotter_rpc_errors_total{method="Remove"}' in text
