"""Images in a registry behind the core's seams: `RegistryImageStore` (an `ImageStore`, for
mounts and as a conversion source) and `RegistryTarget` (an `ImageTarget`), plus the one
place that turns the config into clients: plain HTTP, CA, proxy, credentials and mirrors.

Mirrors are tried before the origin for every read (a pull-through registry, or a P2P
agent acting as a mirror); a mirror that fails is skipped for a while, and the origin
answers. Pushes always go to the origin.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import BinaryIO, TypeVar
from urllib.parse import urlsplit

from imagefs.chunks import BlobReader
from imagefs.config import Config
from imagefs.digest import Digest
from imagefs.errors import (
    AuthError,
    FormatError,
    IntegrityError,
    NotFoundError,
    RegistryError,
    UsageError,
)
from imagefs.oci import INDEX_TYPES, MANIFEST_TYPES, Descriptor, Index, Manifest, select_platform
from registry.auth import Credentials
from registry.client import RegistryClient
from registry.credentials import resolve_credentials
from registry.reference import Reference, parse_reference

T = TypeVar("T")
MIRROR_BACKOFF_S = 30.0  # a failing mirror is skipped this long
_LOCAL_PREFIXES = ("oci:", "docker-archive:", "dir:")


def is_registry_ref(text: str) -> bool:
    """A registry reference (`docker://...` or bare), not a local transport."""
    return not text.startswith(_LOCAL_PREFIXES)


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    timeout_s: float = 30.0
    retries: int = 3
    mirrors: tuple[str, ...] = ()  # "REGISTRY=URL", "*=URL"
    proxy: str = ""
    ca_file: str = ""
    plain_http: tuple[str, ...] = ()
    docker_config: str = ""

    @classmethod
    def from_config(cls, config: Config) -> RegistryOptions:
        return cls(
            timeout_s=config.registry_timeout_s,
            retries=config.registry_retries,
            mirrors=config.registry_mirrors,
            proxy=config.registry_proxy,
            ca_file=config.registry_ca_file,
            plain_http=config.plain_http_registries,
            docker_config=config.docker_config,
        )

    def mirrors_for(self, registry: str) -> list[str]:
        out = []
        for item in self.mirrors:
            name, _, url = item.partition("=")
            if name in ("*", registry) or (
                name in ("docker.io", "index.docker.io") and registry == "registry-1.docker.io"
            ):
                out.append(url.rstrip("/"))
        return out

    def client(self, registry: str, credentials: Credentials | None = None) -> RegistryClient:
        """A client for the origin `registry` (host[:port]) with its credentials."""
        plain = registry in self.plain_http or None  # None: automatic for loopback
        return RegistryClient(
            registry,
            plain_http=plain,
            credentials=resolve_credentials(registry, self.docker_config, credentials),
            timeout_s=self.timeout_s,
            retries=self.retries,
            ca_file=self.ca_file or None,
            proxy=self.proxy or None,
        )

    def mirror_client(self, url: str) -> RegistryClient:
        parts = urlsplit(url)
        return RegistryClient(
            parts.netloc,
            plain_http=parts.scheme == "http",
            credentials=resolve_credentials(parts.netloc, self.docker_config),
            timeout_s=self.timeout_s,
            retries=min(self.retries, 1),
            ca_file=self.ca_file or None,
            proxy=self.proxy or None,
        )

    def puller(self, ref: Reference, credentials: Credentials | None = None) -> PullClient:
        mirrors = [self.mirror_client(url) for url in self.mirrors_for(ref.registry)]
        return PullClient(self.client(ref.registry, credentials), mirrors)


# mirror failures that make the origin worth asking (not a bad reference: that is the
# origin's answer to give)
_MIRROR_ERRORS = (RegistryError, NotFoundError, AuthError, IntegrityError, FormatError)


class PullClient:
    """Reads through the mirrors first, then the origin."""

    def __init__(self, origin: RegistryClient, mirrors: list[RegistryClient]) -> None:
        self.origin = origin
        self.mirrors = mirrors
        self._down: dict[str, float] = {}
        self._lock = threading.Lock()
        self.mirror_hits = 0

    def _each(self, call: Callable[[RegistryClient], T]) -> T:
        now = time.monotonic()
        for mirror in self.mirrors:
            with self._lock:
                if self._down.get(mirror.registry, 0.0) > now:
                    continue
            try:
                out = call(mirror)
            except _MIRROR_ERRORS:
                with self._lock:
                    self._down[mirror.registry] = now + MIRROR_BACKOFF_S
                continue
            with self._lock:
                self.mirror_hits += 1
            return out
        return call(self.origin)

    def get_manifest(self, ref: Reference) -> tuple[Descriptor, bytes]:
        return self._each(lambda c: c.get_manifest(dataclasses.replace(ref, registry=c.registry)))

    def read_blob(self, repository: str, digest: Digest) -> bytes:
        return self._each(lambda c: c.read_blob(repository, digest))

    def open_blob(self, repository: str, digest: Digest) -> BinaryIO:
        return self._each(lambda c: c.open_blob(repository, digest))

    def read_range(self, repository: str, digest: Digest, offset: int, length: int) -> bytes:
        return self._each(lambda c: c.read_range(repository, digest, offset, length))

    def requests(self) -> int:
        return self.origin.stats.requests + sum(m.stats.requests for m in self.mirrors)

    def close(self) -> None:
        self.origin.close()
        for mirror in self.mirrors:
            mirror.close()


class _RangeReader:
    """`imagefs.chunks.BlobReader` over one repository, through the mirrors."""

    def __init__(self, client: PullClient, repository: str) -> None:
        self.client = client
        self.repository = repository

    def read_range(self, blob: Digest, offset: int, length: int) -> bytes:
        try:
            return self.client.read_range(self.repository, blob, offset, length)
        except NotFoundError as exc:  # for a reader, a vanished blob is an I/O error
            raise RegistryError(str(exc)) from None


MAX_INDEX_DEPTH = 4


class RegistryImageStore:
    """An image in a registry (`ImageStore`): manifests resolved through indexes by
    platform, blobs streamed or read by range."""

    def __init__(self, ref: Reference, client: PullClient) -> None:
        self.ref = ref
        self.client = client
        self._manifests: dict[Digest, bytes] = {}

    def resolve_manifest(
        self, platform: Mapping[str, str] | None = None
    ) -> tuple[Descriptor, Manifest]:
        desc, raw = self.client.get_manifest(self.ref)
        for _ in range(MAX_INDEX_DEPTH):
            if desc.media_type not in INDEX_TYPES:
                break
            chosen = select_platform(Index.parse(raw), platform)
            desc, raw = self.client.get_manifest(self.ref.with_digest(chosen.digest))
        if desc.media_type not in MANIFEST_TYPES:
            raise FormatError(f"{self.ref} is a {desc.media_type}, not an image manifest")
        self._manifests[desc.digest] = raw
        return desc, Manifest.parse(raw, desc.media_type)

    def read_manifest(self, desc: Descriptor) -> bytes:
        raw = self._manifests.get(desc.digest)
        if raw is None:
            _, raw = self.client.get_manifest(self.ref.with_digest(desc.digest))
        return raw

    def read_blob(self, digest: Digest) -> bytes:
        return self.client.read_blob(self.ref.repository, digest)

    def open_blob(self, digest: Digest) -> BinaryIO:
        return self.client.open_blob(self.ref.repository, digest)

    def blob_reader(self) -> BlobReader:
        return _RangeReader(self.client, self.ref.repository)

    def describe(self) -> str:
        return str(self.ref)

    def close(self) -> None:
        self.client.close()


class RegistryTarget:
    """A repository being pushed to (`ImageTarget`): blobs HEAD-first (skipped when
    present, mounted from `mount_from` repositories of the same registry when they hold
    them), the manifest last, under the reference's tag."""

    def __init__(
        self, ref: Reference, client: RegistryClient, mount_from: tuple[str, ...] = ()
    ) -> None:
        if ref.tag is None:
            raise UsageError(f"target {ref} needs a tag")
        self.ref = ref
        self.client = client
        self.mount_from = mount_from

    def has_blob(self, digest: Digest) -> bool:
        return self.client.blob_exists(self.ref.repository, digest)

    def put_blob_from(self, digest: Digest, size: int, file: BinaryIO) -> None:
        self.client.push_blob_from(
            self.ref.repository, digest, size, file, mount_from=self.mount_from
        )

    def put_manifest(self, desc: Descriptor, data: bytes) -> None:
        self.client.push_manifest(self.ref, desc.media_type, data)

    def describe(self) -> str:
        return str(self.ref)

    def close(self) -> None:
        self.client.close()


def open_registry_store(
    text: str, config: Config, credentials: Credentials | None = None
) -> RegistryImageStore:
    ref = parse_reference(text)
    return RegistryImageStore(ref, RegistryOptions.from_config(config).puller(ref, credentials))


def open_registry_target(
    text: str,
    config: Config,
    credentials: Credentials | None = None,
    mount_from: tuple[str, ...] = (),
) -> RegistryTarget:
    ref = parse_reference(text)
    if ref.digest is not None:
        raise UsageError(f"target {text} must name a tag, not a digest")
    client = RegistryOptions.from_config(config).client(ref.registry, credentials)
    return RegistryTarget(ref, client, mount_from)
