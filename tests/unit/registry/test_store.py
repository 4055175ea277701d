"""Registry options: which mirrors serve which registry; reference kinds."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagefs.config import load
from imagefs.errors import ConfigError, UsageError
from imagefs.oci import parse_platform
from registry.client import token_query
from registry.store import RegistryOptions, is_registry_ref


def test_mirrors_for_a_registry() -> None:
    opts = RegistryOptions(
        mirrors=(
            "127.0.0.1:5000=http://127.0.0.1:6000/",
            "docker.io=https://mirror.example",
            "*=http://p2p.local:65001",
        )
    )
    assert opts.mirrors_for("127.0.0.1:5000") == ["http://127.0.0.1:6000", "http://p2p.local:65001"]
    assert opts.mirrors_for("registry-1.docker.io") == [
        "https://mirror.example",
        "http://p2p.local:65001",
    ]
    assert opts.mirrors_for("quay.io") == ["http://p2p.local:65001"]


def test_mirror_settings_from_the_environment(tmp_path: Path) -> None:
    env = {"IMAGEFS_REGISTRY_MIRRORS": "a:1=http://m:2, *=https://n", "HOME": str(tmp_path)}
    cfg = load(environ=env)
    assert cfg.registry_mirrors == ("a:1=http://m:2", "*=https://n")
    assert cfg.docker_config == str(tmp_path / ".docker" / "config.json")
    assert RegistryOptions.from_config(cfg).mirrors_for("a:1") == ["http://m:2", "https://n"]
    with pytest.raises(ConfigError, match="mirror"):
        load(environ={"IMAGEFS_REGISTRY_MIRRORS": "no-url-here"})


def test_docker_config_follows_DOCKER_CONFIG(tmp_path: Path) -> None:
    cfg = load(environ={"DOCKER_CONFIG": str(tmp_path), "HOME": "/nowhere"})
    assert cfg.docker_config == str(tmp_path / "config.json")


def test_reference_kinds_and_platforms() -> None:
    assert is_registry_ref("docker://a/b:c") and is_registry_ref("localhost:5000/x")
    assert not is_registry_ref("oci:/tmp/x:tag") and not is_registry_ref("dir:/m")
    assert parse_platform("linux/arm64/v8") == {
        "os": "linux",
        "architecture": "arm64",
        "variant": "v8",
    }
    with pytest.raises(UsageError):
        parse_platform("linux")


def test_token_query_splits_a_multi_scope_challenge() -> None:
    params = {"service": "s", "scope": "repository:a:pull,push repository:b:pull"}
    assert token_query(params) == [
        ("service", "s"),
        ("scope", "repository:a:pull,push"),
        ("scope", "repository:b:pull"),
    ]
