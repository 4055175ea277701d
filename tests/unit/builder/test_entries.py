"""Path normalization and whiteout naming."""

from __future__ import annotations

import pytest

from builder.entries import (
    EntryKind,
    classify_whiteout,
    is_aufs_meta,
    normalize_path,
)
from imagefs.errors import SourceError, UnsafePathError


@pytest.mark.parametrize(
    ("name", "path"),
    [
        (b"a/b", b"a/b"),
        (b"./a/b", b"a/b"),
        (b"././a//b/./c/", b"a/b/c"),
        (b".", b""),
        (b"./", b""),
        (b"", b""),
        (b"a/\xff\xfe", b"a/\xff\xfe"),
        (b"x" * 255, b"x" * 255),
    ],
)
def test_normalize(name: bytes, path: bytes) -> None:
    assert normalize_path(name) == path


@pytest.mark.parametrize("name", [b"../etc/passwd", b"a/../../b", b"a/..", b"/etc/passwd", b"/"])
def test_unsafe_paths(name: bytes) -> None:
    with pytest.raises(UnsafePathError) as info:
        normalize_path(name, what="layer 1: entry")
    assert "layer 1: entry" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", [b"a/" + b"x" * 256, b"a\0b"])
def test_bad_names(name: bytes) -> None:
    with pytest.raises(SourceError):
        normalize_path(name)


def test_whiteouts() -> None:
    assert classify_whiteout(b"etc/.wh.passwd") == (EntryKind.WHITEOUT, b"etc/passwd")
    assert classify_whiteout(b".wh.top") == (EntryKind.WHITEOUT, b"top")
    assert classify_whiteout(b"d/.wh..wh..opq") == (EntryKind.OPAQUE, b"d")
    assert classify_whiteout(b".wh..wh..opq") == (EntryKind.OPAQUE, b"")
    assert classify_whiteout(b"etc/passwd") is None
    assert classify_whiteout(b"etc/x.wh.y") is None
    assert is_aufs_meta(b".wh..wh.plnk")
    assert is_aufs_meta(b"a/.wh..wh.aufs")
    assert not is_aufs_meta(b"a/.wh..wh..opq")
    for bad in (b"a/.wh.", b"a/.wh..", b".wh..."):
        with pytest.raises(UnsafePathError):
            classify_whiteout(bad)
