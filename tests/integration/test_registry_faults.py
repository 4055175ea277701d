"""Faults against a real registry: down at mount time, gone in the middle of reads (EIO
within the configured bound, then reads recover when it is back), and a blob whose bytes are
corrupt (refetched once, then EIO; never wrong bytes, nothing unverified cached)."""

from __future__ import annotations

import errno
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Env, Mounter
from tests.integration.registry_fixture import free_port, run_registry
from tests.support.layers import LayerBuilder
from tests.support.oci import LayerBlob, write_oci_layout

FILES = {f"data/f{i}.bin": random.Random(i).randbytes(200_000) for i in range(4)}
TIMEOUT_S = 3.0


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ifs-regdata-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _convert(env: Env, host: str, tmp: Path) -> str:
    layer = LayerBuilder()
    for path, data in FILES.items():
        layer.file(path, data)
    write_oci_layout(tmp / "src", [LayerBlob.from_tar(layer.tar())], tag="v1")
    ref = f"{host}/faults/img:v1"
    env.run("convert", f"oci:{tmp / 'src'}:v1", ref)
    return ref


def _bounded(env: Env) -> None:
    env.extra["IMAGEFS_REGISTRY_TIMEOUT_S"] = str(TIMEOUT_S)
    env.extra["IMAGEFS_REGISTRY_RETRIES"] = "2"


@pytest.mark.reliability(
    "fault", "registry down when mounting", "one-line error, non-zero exit, nothing mounted"
)
def test_registry_down_at_mount_time_is_one_clear_line(imagefs_env: Env, tmp_path: Path) -> None:
    _bounded(imagefs_env)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ref = f"127.0.0.1:{free_port()}/faults/img:v1"  # nothing listens there
    started = time.monotonic()
    res = imagefs_env.run("mount", ref, str(mnt), check=False)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("imagefs: ") and "cannot reach 127.0.0.1:" in lines[0]
    assert time.monotonic() - started < 2 * TIMEOUT_S + 10
    assert not any(mnt.iterdir())


@pytest.mark.reliability(
    "fault",
    "registry gone in the middle of reads, then back",
    "EIO within registry_timeout_s + 5 s; cached files still read; reads recover",
)
def test_registry_gone_mid_read_gives_eio_then_recovers(
    imagefs_env: Env, mount_image: Mounter, tmp_path: Path, data_dir: Path
) -> None:
    _bounded(imagefs_env)
    port = free_port()
    with run_registry(port=port, data_dir=data_dir) as reg:
        ref = _convert(imagefs_env, reg.host, tmp_path)
        m = mount_image(ref)
        assert (m.path / "data/f0.bin").read_bytes() == FILES["data/f0.bin"]
    # the registry is gone: a read that needs it fails with EIO, within the bound
    started = time.monotonic()
    with pytest.raises(OSError) as info:
        (m.path / "data/f1.bin").read_bytes()
    assert info.value.errno == errno.EIO
    assert time.monotonic() - started < TIMEOUT_S + 5
    assert (m.path / "data/f0.bin").read_bytes() == FILES["data/f0.bin"]  # cached: fine
    with run_registry(port=port, data_dir=data_dir):
        assert (m.path / "data/f1.bin").read_bytes() == FILES["data/f1.bin"]
        assert (m.path / "data/f2.bin").read_bytes() == FILES["data/f2.bin"]


@pytest.mark.reliability(
    "fault",
    "a blob whose bytes do not match (one byte flipped in the registry's storage)",
    "refetched once, then EIO; never wrong bytes; nothing unverified cached",
)
def test_corrupt_blob_is_refetched_once_then_eio(
    imagefs_env: Env, mount_image: Mounter, tmp_path: Path
) -> None:
    with run_registry() as reg:
        ref = _convert(imagefs_env, reg.host, tmp_path)
        info = imagefs_env.json("inspect", ref)
        blob = info["blobs"][0]["digest"]
        path = reg.blob_file(blob)
        data = bytearray(path.read_bytes())
        # the chunks are laid out in path order: f0 first; corrupt a byte inside f1's data
        data[200_000 + 1000] ^= 0xFF
        path.write_bytes(bytes(data))

        m = mount_image(ref)
        assert (m.path / "data/f0.bin").read_bytes() == FILES["data/f0.bin"]
        for _ in range(2):  # nothing unverified was cached: the second try fails the same way
            with pytest.raises(OSError) as err:
                (m.path / "data/f1.bin").read_bytes()
            assert err.value.errno == errno.EIO
        stats = m.stats()
        assert stats["integrity_errors"] >= 2  # first fetch, then each refetch
        assert (m.path / "data/f2.bin").read_bytes() == FILES["data/f2.bin"]
