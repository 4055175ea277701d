"""Image references in a registry (`docker://HOST/REPO:TAG`, `HOST:PORT/repo@sha256:...`,
`ubuntu`), parsed by a pure function with the normalisation docker and containerd apply."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from imagefs.digest import Digest
from imagefs.errors import FormatError, UsageError

DOCKER_HUB = "registry-1.docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", DOCKER_HUB})
DEFAULT_TAG = "latest"

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)


@dataclass(frozen=True, slots=True)
class Reference:
    """An image in a registry: `registry` is `host[:port]`; at least one of tag and digest."""

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    def __post_init__(self) -> None:
        if self.tag is None and self.digest is None:
            raise UsageError(f"reference {self.registry}/{self.repository} has no tag or digest")

    @classmethod
    def parse(cls, text: str) -> Reference:
        return parse_reference(text)

    @property
    def host(self) -> str:
        """The registry host without its port (brackets stripped from an IPv6 literal)."""
        if self.registry.startswith("["):
            return self.registry[1:].partition("]")[0]
        return self.registry.partition(":")[0]

    @property
    def plain_http(self) -> bool:
        """Loopback registries speak plain HTTP by default, as containerd assumes."""
        return is_loopback(self.host)

    @property
    def reference(self) -> str:
        """What goes after `/manifests/`: the digest when there is one, else the tag."""
        return str(self.digest) if self.digest is not None else str(self.tag)

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def with_digest(self, digest: Digest) -> Reference:
        return Reference(self.registry, self.repository, self.tag, digest)

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.registry, self.repository, tag, None)

    def __str__(self) -> str:
        out = self.name
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _looks_like_registry(component: str) -> bool:
    # docker's rule: the first component names a registry when it has a dot or a port,
    # or is `localhost`; otherwise the reference is on Docker Hub.
    return "." in component or ":" in component or component == "localhost"


def parse_reference(text: str) -> Reference:
    """Parse `[docker://][HOST[:PORT]/]REPO[:TAG][@sha256:HEX]` with Docker Hub defaults."""
    original = text
    if text.startswith("docker://"):
        text = text[len("docker://") :]
    elif "://" in text:
        raise UsageError(f"unsupported reference scheme in {original!r} (use docker://HOST/REPO)")
    if not text:
        raise UsageError("empty image reference")

    digest: Digest | None = None
    if "@" in text:
        text, _, digest_text = text.partition("@")
        try:
            digest = Digest.parse(digest_text)
        except FormatError:
            raise UsageError(
                f"bad digest in reference {original!r} (expected @sha256:<64 hex>)"
            ) from None

    first, slash, rest = text.partition("/")
    if slash and _looks_like_registry(first):
        registry, remainder = first, rest
        if not _HOST.fullmatch(registry):
            raise UsageError(f"bad registry host {registry!r} in reference {original!r}")
    else:
        registry, remainder = "docker.io", text

    tag: str | None = None
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > last_slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise UsageError(f"bad tag {tag!r} in reference {original!r}")

    if registry in DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in remainder:
            remainder = "library/" + remainder
    if not remainder or not all(_COMPONENT.fullmatch(c) for c in remainder.split("/")):
        raise UsageError(
            f"bad repository name {remainder!r} in reference {original!r} "
            "(lowercase letters, digits and . _ - separated by /)"
        )
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, remainder, tag, digest)
