"""Mirrors through the real CLI: an origin `docker-registry` and a second one running as its
pull-through cache. With IMAGEFS_REGISTRY_MIRRORS naming the mirror, a mount of an origin
reference reads the manifest and every chunk (Range requests) from the mirror, and the
origin serves blobs only to the mirror; with the mirror down, the origin answers."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Env, Mounter
from tests.integration.registry_fixture import RunningRegistry, matching, run_registry
from tests.support import samples
from tests.support.trees import compare_trees, snapshot_tree

IMAGEFS_AGENT = "http.request.useragent=imagefs/0.1"
REPO = "mirror/sample"


@dataclass(frozen=True)
class Pushed:
    origin: RunningRegistry
    ref: str  # the origin reference, HOST:PORT/REPO:TAG
    digest: str
    expected: Path  # `imagefs unpack` of the image straight from the origin


@pytest.fixture(scope="module")
def sample_source(tmp_path_factory: pytest.TempPathFactory) -> str:
    layout, tag = samples.write_every_entry_type_image(
        tmp_path_factory.mktemp("mirror-src") / "layout", compression="gzip"
    )
    return f"oci:{layout}:{tag}"


@pytest.fixture
def origin() -> Iterator[RunningRegistry]:
    with run_registry() as reg:
        yield reg


@pytest.fixture
def pushed(origin: RunningRegistry, imagefs_env: Env, sample_source: str, tmp_path: Path) -> Pushed:
    """The sample converted into the origin, and unpacked from it without any mirror."""
    imagefs_env.extra["IMAGEFS_DOCKER_CONFIG"] = str(tmp_path / "no-docker-config.json")
    ref = f"{origin.host}/{REPO}:v1"
    digest: str = imagefs_env.json("convert", sample_source, ref)["manifest_digest"]
    expected = tmp_path / "expected"
    imagefs_env.run("unpack", ref, str(expected))
    assert snapshot_tree(expected), "the unpacked image is empty"
    return Pushed(origin, ref, digest, expected)


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_mount_reads_through_the_mirror(
    pushed: Pushed, imagefs_env: Env, mount_image: Mounter
) -> None:
    origin = pushed.origin
    with run_registry(proxy_remote=origin.url) as mirror:
        since = len(origin.log.splitlines())
        imagefs_env.extra["IMAGEFS_REGISTRY_MIRRORS"] = f"{origin.host}={mirror.url}"
        m = mount_image(pushed.ref)
        # every file read through the mount (compare_trees hashes each regular file)
        assert compare_trees(pushed.expected, m.path) == []
        assert m.stats()["manifest_digest"] == pushed.digest

        from_imagefs = [ln for ln in mirror.completed() if IMAGEFS_AGENT in ln]
        assert matching(from_imagefs, "GET", f"/v2/{REPO}/manifests/v1", 200)
        assert matching(from_imagefs, "GET", f"/v2/{REPO}/blobs/sha256:", 206), (
            "no Range reads of data blobs reached the mirror"
        )

        at_origin = origin.completed(since)
        assert not [ln for ln in at_origin if IMAGEFS_AGENT in ln], "imagefs asked the origin"
        proxied = matching(at_origin, "GET", f"/v2/{REPO}/blobs/sha256:", 200)
        assert proxied, "the mirror did not fetch the blobs from the origin"
        assert all("http.request.useragent=Go-http-client/" in ln for ln in proxied)


def test_wildcard_mirror_serves_inspect(pushed: Pushed, imagefs_env: Env) -> None:
    origin = pushed.origin
    with run_registry(proxy_remote=origin.url) as mirror:
        since = len(origin.log.splitlines())
        imagefs_env.extra["IMAGEFS_REGISTRY_MIRRORS"] = f"*={mirror.url}"
        info = imagefs_env.json("inspect", pushed.ref)
        assert info["manifest_digest"] == pushed.digest
        from_imagefs = [ln for ln in mirror.completed() if IMAGEFS_AGENT in ln]
        assert matching(from_imagefs, "GET", f"/v2/{REPO}/manifests/v1", 200)
        assert not [ln for ln in origin.completed(since) if IMAGEFS_AGENT in ln]


def test_mirror_down_falls_back_to_the_origin(
    pushed: Pushed, imagefs_env: Env, mount_image: Mounter
) -> None:
    origin = pushed.origin
    since = len(origin.log.splitlines())
    imagefs_env.extra["IMAGEFS_REGISTRY_MIRRORS"] = (
        f"{origin.host}=http://127.0.0.1:{_closed_port()}"
    )
    m = mount_image(pushed.ref)
    assert compare_trees(pushed.expected, m.path) == []
    assert m.stats()["manifest_digest"] == pushed.digest

    from_imagefs = [ln for ln in origin.completed(since) if IMAGEFS_AGENT in ln]
    assert matching(from_imagefs, "GET", f"/v2/{REPO}/manifests/v1", 200)
    assert matching(from_imagefs, "GET", f"/v2/{REPO}/blobs/sha256:", 206)

    # and a command that is not a mount (inspect) falls back too
    assert imagefs_env.json("inspect", pushed.ref)["manifest_digest"] == pushed.digest


def test_mirror_missing_the_image_falls_back_to_the_origin(
    pushed: Pushed, imagefs_env: Env, tmp_path: Path
) -> None:
    """A mirror that is up but is not a cache of this origin (it answers 404) is skipped."""
    with run_registry() as unrelated:
        since = len(pushed.origin.log.splitlines())
        imagefs_env.extra["IMAGEFS_REGISTRY_MIRRORS"] = f"{pushed.origin.host}={unrelated.url}"
        out = tmp_path / "via-origin"
        imagefs_env.run("unpack", pushed.ref, str(out))
        assert compare_trees(pushed.expected, out) == []
        assert matching(unrelated.completed(), "GET", f"/v2/{REPO}/manifests/v1", 404)
        from_imagefs = [ln for ln in pushed.origin.completed(since) if IMAGEFS_AGENT in ln]
        assert matching(from_imagefs, "GET", f"/v2/{REPO}/manifests/v1", 200)
