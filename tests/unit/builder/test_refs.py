"""Source and target reference parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.refs import SourceRef, TargetRef, parse_source, parse_target
from imagefs.errors import UsageError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("oci:img", SourceRef("oci", Path("img"), None)),
        ("oci:img:v1.2", SourceRef("oci", Path("img"), "v1.2")),
        ("oci:/abs/path/img:latest", SourceRef("oci", Path("/abs/path/img"), "latest")),
        ("oci:./a:b/c", SourceRef("oci", Path("./a:b/c"), None)),  # "b/c" is no tag
        ("docker-archive:/tmp/x.tar", SourceRef("docker-archive", Path("/tmp/x.tar"))),
        ("docker-archive:a:b.tar", SourceRef("docker-archive", Path("a:b.tar"))),
        ("dir:/srv/root", SourceRef("dir", Path("/srv/root"))),
        ("dir:with:colon", SourceRef("dir", Path("with:colon"))),
    ],
)
def test_parse_source(text: str, expected: SourceRef) -> None:
    assert parse_source(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("oci:out", TargetRef(Path("out"), "latest")),
        ("oci:out:imagefs", TargetRef(Path("out"), "imagefs")),
        ("oci:/x/y:1.0-rc_1", TargetRef(Path("/x/y"), "1.0-rc_1")),
    ],
)
def test_parse_target(text: str, expected: TargetRef) -> None:
    assert parse_target(text) == expected
    assert str(expected).startswith("oci:")


@pytest.mark.parametrize(
    "text", ["img", "oci:", "oci::tag", "docker:x", "dir:", "registry:example.com/x"]
)
def test_bad_source(text: str) -> None:
    with pytest.raises(UsageError):
        parse_source(text)


@pytest.mark.parametrize("text", ["out", "dir:out", "docker-archive:x.tar", "oci:", "oci::t"])
def test_bad_target(text: str) -> None:
    with pytest.raises(UsageError):
        parse_target(text)
