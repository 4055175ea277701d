"""RegistryClient against a real `docker-registry` on loopback (no mocks)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from imagefs.digest import Digest
from imagefs.errors import AuthError, NotFoundError
from imagefs.oci import MEDIA_TYPE_OCI_MANIFEST, Descriptor, Manifest
from registry.auth import Credentials
from registry.client import RegistryClient
from registry.reference import Reference
from tests.integration.registry_fixture import (
    RunningRegistry,
    TokenServer,
    run_registry,
    run_token_server,
)

CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
USERS = {"alice": "s3cret: with, punctuation"}


@pytest.fixture(scope="module")
def registry() -> Iterator[RunningRegistry]:
    with run_registry() as reg:
        yield reg


@pytest.fixture(scope="module")
def auth_registry() -> Iterator[RunningRegistry]:
    with run_registry(USERS) as reg:
        yield reg


@pytest.fixture(scope="module")
def token_server() -> Iterator[TokenServer]:
    with run_token_server(USERS) as tok:
        yield tok


@pytest.fixture(scope="module")
def token_registry(token_server: TokenServer) -> Iterator[RunningRegistry]:
    with run_registry(token=token_server) as reg:
        yield reg


@pytest.fixture
def client(registry: RunningRegistry) -> Iterator[RegistryClient]:
    with RegistryClient(registry.host, timeout_s=10, retries=1, backoff_s=0.01) as c:
        yield c


def _push_image(client: RegistryClient, repo: str, tag: str, layer: bytes) -> Descriptor:
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    client.push_blob(repo, config)
    client.push_blob(repo, layer)
    manifest = Manifest(
        MEDIA_TYPE_OCI_MANIFEST,
        Descriptor.of(CONFIG_TYPE, config),
        (Descriptor.of(LAYER_TYPE, layer),),
    ).encode()
    ref = Reference(client.registry, repo, tag)
    return client.push_manifest(ref, MEDIA_TYPE_OCI_MANIFEST, manifest)


def test_plain_http_is_the_default_on_loopback(registry: RunningRegistry) -> None:
    ref = Reference.parse(f"docker://{registry.host}/x/y:1")
    assert ref.plain_http
    with RegistryClient.for_reference(ref) as c:
        assert c.base == registry.url
        assert c.ping() == 200


def test_push_and_read_back(client: RegistryClient) -> None:
    layer = os.urandom(300_000)
    desc = _push_image(client, "imagefs/rt", "v1", layer)
    assert client.stats.blobs_pushed == 2

    by_tag, data = client.get_manifest(Reference.parse(f"{client.registry}/imagefs/rt:v1"))
    assert by_tag == desc
    manifest = Manifest.parse(data)
    assert manifest.layers[0].digest == Digest.of(layer)

    ref = Reference.parse(f"{client.registry}/imagefs/rt@{desc.digest}")
    by_digest, data2 = client.get_manifest(ref)
    assert by_digest.digest == desc.digest and data2 == data
    assert by_digest.media_type == MEDIA_TYPE_OCI_MANIFEST

    assert client.read_blob("imagefs/rt", Digest.of(layer)) == layer
    assert client.blob_exists("imagefs/rt", Digest.of(layer))
    assert not client.blob_exists("imagefs/rt", Digest.of(b"nope"))


def test_second_push_of_a_blob_is_skipped(client: RegistryClient) -> None:
    data = os.urandom(10_000)
    client.push_blob("imagefs/dedup", data)
    assert (client.stats.blobs_pushed, client.stats.blobs_skipped) == (1, 0)
    before = client.stats.requests
    client.push_blob("imagefs/dedup", data)
    assert (client.stats.blobs_pushed, client.stats.blobs_skipped) == (1, 1)
    assert client.stats.requests == before + 1  # only the HEAD


def test_read_range_returns_exact_bytes(client: RegistryClient) -> None:
    data = os.urandom(1_000_003)
    digest = client.push_blob("imagefs/ranges", data)
    reader = client.blob_reader("imagefs/ranges")
    for offset, length in [(0, 1), (0, 4096), (1, 7), (65_535, 65_538), (999_000, 1003), (12, 0)]:
        assert reader.read_range(digest, offset, length) == data[offset : offset + length]
    assert client.read_range("imagefs/ranges", digest, 0, len(data)) == data


def test_missing_tag_and_blob_are_clear_not_found(client: RegistryClient) -> None:
    ref = Reference.parse(f"{client.registry}/imagefs/none:missing")
    with pytest.raises(NotFoundError) as exc:
        client.get_manifest(ref)
    assert str(ref) in str(exc.value) and "404" in str(exc.value)
    with pytest.raises(NotFoundError):
        client.read_blob("imagefs/none", Digest.of(b"missing"))


def test_htpasswd_without_credentials_is_a_clear_auth_error(
    auth_registry: RunningRegistry,
) -> None:
    ref = Reference.parse(f"{auth_registry.host}/imagefs/private:v1")
    with RegistryClient(auth_registry.host, retries=0) as c, pytest.raises(AuthError) as exc:
        c.get_manifest(ref)
    msg = str(exc.value)
    assert str(ref) in msg and "401" in msg and "docker login" in msg
    assert exc.value.exit_code == 10


def test_htpasswd_wrong_password_is_rejected_without_leaking_it(
    auth_registry: RunningRegistry,
) -> None:
    creds = Credentials("alice", "wrong-password-xyz")
    with (
        RegistryClient(auth_registry.host, credentials=creds, retries=0) as c,
        pytest.raises(AuthError) as exc,
    ):
        c.push_blob("imagefs/private", b"data")
    assert "wrong-password-xyz" not in str(exc.value)
    assert "credentials" in str(exc.value)


def test_htpasswd_with_credentials_works(auth_registry: RunningRegistry) -> None:
    creds = Credentials("alice", USERS["alice"])
    with RegistryClient(auth_registry.host, credentials=creds, retries=0) as c:
        layer = os.urandom(50_000)
        desc = _push_image(c, "imagefs/private", "v1", layer)
        got, _ = c.get_manifest(Reference.parse(f"{auth_registry.host}/imagefs/private:v1"))
        assert got.digest == desc.digest
        assert c.read_range("imagefs/private", Digest.of(layer), 100, 200) == layer[100:300]
        assert c.stats.blobs_pushed == 2


def test_bearer_token_flow(token_registry: RunningRegistry, token_server: TokenServer) -> None:
    creds = Credentials("alice", USERS["alice"])
    with RegistryClient(token_registry.host, credentials=creds, retries=0) as c:
        layer = os.urandom(20_000)
        desc = _push_image(c, "imagefs/tok", "v1", layer)
        got, _ = c.get_manifest(Reference.parse(f"{token_registry.host}/imagefs/tok:v1"))
        assert got.digest == desc.digest
        fetches = c.stats.auth_fetches
        assert c.read_range("imagefs/tok", Digest.of(layer), 5, 10) == layer[5:15]
        assert c.stats.auth_fetches == fetches  # the cached token was reused
    # the registry's challenge lists the actions in either order
    granted = {
        frozenset(scope.rsplit(":", 1)[1].split(","))
        for scope in token_server.issued
        if scope.startswith("repository:imagefs/tok:")
    }
    assert frozenset({"pull", "push"}) in granted


def test_bearer_anonymous_is_a_clear_auth_error(token_registry: RunningRegistry) -> None:
    ref = Reference.parse(f"{token_registry.host}/imagefs/tok:v1")
    with RegistryClient(token_registry.host, retries=0) as c, pytest.raises(AuthError) as exc:
        c.get_manifest(ref)
    assert str(ref) in str(exc.value) and "docker login" in str(exc.value)


def test_bearer_wrong_password(token_registry: RunningRegistry) -> None:
    creds = Credentials("alice", "not-it-123")
    with (
        RegistryClient(token_registry.host, credentials=creds, retries=0) as c,
        pytest.raises(AuthError) as exc,
    ):
        c.blob_exists("imagefs/tok", Digest.of(b"x"))
    assert "not-it-123" not in str(exc.value) and "token service" in str(exc.value)


def test_an_account_without_push_rights_gets_a_clear_denial() -> None:
    users = {"alice": USERS["alice"], "bob": "reader-pw-7f3a"}
    with (
        run_token_server(users, readers=frozenset({"bob"})) as tokens,
        run_registry(token=tokens) as reg,
    ):
        with RegistryClient(reg.host, credentials=Credentials("alice", users["alice"])) as c:
            layer = os.urandom(5000)
            _push_image(c, "team/app", "v1", layer)
        bob = Credentials("bob", users["bob"])
        with RegistryClient(reg.host, credentials=bob, retries=0) as c:
            assert c.read_blob("team/app", Digest.of(layer)) == layer  # pull is granted
            with pytest.raises(AuthError) as exc:
                c.push_blob("team/app", b"bob may not push this")
        message = str(exc.value)
        assert "insufficient scope" in message and "push to" in message
        assert f"{reg.host}/team/app" in message and "'bob'" in message
        assert users["bob"] not in message
