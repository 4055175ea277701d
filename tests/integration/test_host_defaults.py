"""Defaults that protect the host: mounts are read-only, nosuid and nodev, and private to
their owner unless asked (the snapshotter asks, for containers); credential files others
can read are flagged; TLS is verified unless a registry is loopback or listed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fuse_mount.snapshotter.remote import SNAPSHOTTER_MOUNT_ARGS
from registry.client import RegistryClient
from tests.conftest import Env, Mounter
from tests.support.layers import LayerBuilder
from tests.support.oci import LayerBlob, write_oci_layout


def _options(path: Path) -> set[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if fields[4] == os.path.realpath(path):
                super_opts = line.split(" - ", 1)[1].split()[2]
                return set(fields[5].split(",")) | set(super_opts.split(","))
    raise AssertionError(f"{path} is not mounted")


@pytest.fixture
def image(tmp_path: Path, imagefs_env: Env) -> str:
    layer = LayerBuilder().file("bin/tool", b"#!/bin/sh\necho hi\n", mode=0o4755)
    write_oci_layout(tmp_path / "src", [LayerBlob.from_tar(layer.tar())], tag="t")
    imagefs_env.run("convert", f"oci:{tmp_path / 'src'}:t", f"oci:{tmp_path / 'out'}:t")
    return f"oci:{tmp_path / 'out'}:t"


@pytest.mark.reliability(
    "defaults",
    "a developer's `imagefs mount`",
    "read-only, nosuid, nodev, not visible to other users",
)
def test_a_developer_mount_is_read_only_nosuid_nodev_private(
    image: str, mount_image: Mounter
) -> None:
    m = mount_image(image)
    options = _options(m.path)
    assert {"ro", "nosuid", "nodev"} <= options, options
    assert "allow_other" not in options
    with pytest.raises(OSError):
        (m.path / "new-file").write_bytes(b"x")


@pytest.mark.reliability(
    "defaults",
    "the snapshotter's mounts (containers run setuid programs, device files, any user)",
    "allow_other, suid and dev only because the snapshotter asks for them",
)
def test_suid_dev_and_allow_other_only_when_asked(image: str, mount_image: Mounter) -> None:
    assert set(SNAPSHOTTER_MOUNT_ARGS) == {"--allow-other", "--suid", "--dev"}
    m = mount_image(image, "asked", *SNAPSHOTTER_MOUNT_ARGS)
    options = _options(m.path)
    assert "allow_other" in options and "ro" in options
    assert "nosuid" not in options and "nodev" not in options


@pytest.mark.reliability(
    "defaults",
    "a docker config holding credentials that other users can read",
    "used, with a one-line warning to chmod 600; none for a 0600 file",
)
def test_readable_credential_files_are_flagged(imagefs_env: Env, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {"127.0.0.1:1": {"auth": "dXNlcjpzM2NyZXQ="}}}))
    imagefs_env.extra["IMAGEFS_DOCKER_CONFIG"] = str(config)
    imagefs_env.extra["IMAGEFS_REGISTRY_RETRIES"] = "0"
    for mode, warned in ((0o644, True), (0o600, False)):
        config.chmod(mode)
        res = imagefs_env.run("inspect", "127.0.0.1:1/x/y:z", check=False)
        assert res.returncode == 9  # nothing listens there
        assert ("chmod 600" in res.stderr) is warned, res.stderr
        assert "s3cret" not in res.stderr and "dXNlcjpzM2NyZXQ=" not in res.stderr


@pytest.mark.reliability(
    "defaults", "a registry that is not loopback", "HTTPS with certificate verification"
)
def test_tls_is_verified_by_default() -> None:
    with RegistryClient("registry.example:5000") as client:
        assert client.base.startswith("https://") and client.session.verify is True
    with RegistryClient("127.0.0.1:5000") as client:
        assert client.base.startswith("http://")  # loopback, as containerd does
