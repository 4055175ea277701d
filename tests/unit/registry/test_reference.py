from __future__ import annotations

import pytest

from imagefs.digest import Digest
from imagefs.errors import UsageError
from registry.reference import Reference, parse_reference

HEX = "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("ubuntu", "registry-1.docker.io", "library/ubuntu", "latest", None),
        ("ubuntu:22.04", "registry-1.docker.io", "library/ubuntu", "22.04", None),
        ("docker.io/ubuntu", "registry-1.docker.io", "library/ubuntu", "latest", None),
        ("index.docker.io/foo/bar:1", "registry-1.docker.io", "foo/bar", "1", None),
        ("foo/bar", "registry-1.docker.io", "foo/bar", "latest", None),
        ("docker://ghcr.io/org/img:v1", "ghcr.io", "org/img", "v1", None),
        ("localhost:5000/repo:tag", "localhost:5000", "repo", "tag", None),
        ("localhost/repo", "localhost", "repo", "latest", None),
        ("127.0.0.1:5000/a/b/c:x_y-z.1", "127.0.0.1:5000", "a/b/c", "x_y-z.1", None),
        (f"repo@sha256:{HEX}", "registry-1.docker.io", "library/repo", None, HEX),
        (f"h.io/r:t@sha256:{HEX}", "h.io", "r", "t", HEX),
        ("[::1]:5000/repo:1", "[::1]:5000", "repo", "1", None),
        ("quay.io/a__b/c-d.e", "quay.io", "a__b/c-d.e", "latest", None),
    ],
)
def test_parse(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_reference(text)
    assert ref == Reference(registry, repository, tag, Digest("sha256", digest) if digest else None)
    assert Reference.parse(str(ref)) == ref  # round-trips


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("localhost:5000/r", True),
        ("localhost/r", True),
        ("127.0.0.1:5000/r", True),
        ("127.0.0.2:80/r", True),
        ("[::1]:5000/r", True),
        ("ghcr.io/r", False),
        ("ubuntu", False),
        ("10.0.0.1:5000/r", False),
    ],
)
def test_plain_http_only_on_loopback(text: str, plain: bool) -> None:
    assert parse_reference(text).plain_http is plain


def test_reference_and_str() -> None:
    ref = parse_reference("h.io:5000/a/b:t")
    assert ref.reference == "t" and str(ref) == "h.io:5000/a/b:t" and ref.host == "h.io"
    d = Digest.of(b"x")
    assert ref.with_digest(d).reference == str(d)
    assert ref.with_digest(d).with_tag("u") == Reference("h.io:5000", "a/b", "u")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "docker://",
        "oci://x",
        "UPPER/case",
        "h.io/",
        "repo:",
        "repo:bad/tag",
        "repo@sha256:short",
        "repo@md5:" + HEX,
        "h.io/a//b",
        "h.io/-a",
        "repo:" + "t" * 129,
    ],
)
def test_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_reference(text)


def test_needs_tag_or_digest() -> None:
    with pytest.raises(UsageError):
        Reference("h.io", "r")
