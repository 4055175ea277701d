"""Hostile layers at the pure core (no CLI): the merge resolves symlinked parents inside
the image and never outside it, rejects loops and bad hard links, and lets the last
duplicate win; `unpack` walks any depth with a bounded number of descriptors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.entries import Entry, EntryKind
from builder.merge import Merger, walk_tree
from imagefs.chunks import MemoryBlobReader, ReadStats, build_chunk_source
from imagefs.errors import SourceError
from imagefs.format import Bootstrap, encode_bootstrap
from imagefs.unpack import MAX_OPEN_DIRS, unpack
from imagefs.view import FileSystemView
from tests.conftest import Reliability
from tests.unit.imagefs.trees import TreeBuilder, pack_blobs


def _f(path: bytes, content: int = 0) -> Entry:
    return Entry(path, EntryKind.FILE, content=content)


def _d(path: bytes, mode: int = 0o755) -> Entry:
    return Entry(path, EntryKind.DIR, mode)


def _s(path: bytes, target: bytes) -> Entry:
    return Entry(path, EntryKind.SYMLINK, 0o777, link=target)


def _h(path: bytes, target: bytes) -> Entry:
    return Entry(path, EntryKind.HARDLINK, link=target)


def _paths(m: Merger) -> dict[bytes, tuple[str, bytes | int]]:
    out: dict[bytes, tuple[str, bytes | int]] = {}
    for path, node in walk_tree(m.root):
        if path:
            e = node.entry
            out[path] = (e.kind.value, e.link if e.kind is EntryKind.SYMLINK else e.content)
    return out


@pytest.mark.reliability(
    "hostile",
    "merge: file entries through symlinked parents (absolute, ../.. beyond the root, chains)",
    "resolved inside the image, clamped at the root; the symlinks are kept verbatim",
)
@pytest.mark.parametrize(
    ("layers", "resolved"),
    [
        ([[_s(b"a", b"/etc"), _f(b"a/passwd", 7)]], b"etc/passwd"),
        ([[_s(b"a", b"../../x")], [_f(b"a/passwd", 7)]], b"x/passwd"),
        ([[_s(b"a", b"b/../../c"), _s(b"b", b"/"), _f(b"a/p", 7)]], b"c/p"),
        ([[_d(b"d"), _s(b"d/up", b".."), _f(b"d/up/up/up/p", 7)]], b"up/up/p"),
    ],
    ids=["abs", "dotdot-next-layer", "chain", "dotdot-in-dir"],
)
def test_symlinked_parents_stay_inside(
    layers: list[list[Entry]], resolved: bytes, reliability: Reliability
) -> None:
    m = Merger()
    for layer in layers:
        m.apply(layer)
    got = _paths(m)
    assert got[resolved] == ("file", 7)
    assert all(not p.startswith((b"/", b"../")) and b"/../" not in p for p in got)
    symlinks = {e.path: e.link for layer in layers for e in layer if e.kind is EntryKind.SYMLINK}
    for path, target in symlinks.items():
        assert got[path] == ("symlink", target)
    reliability.record(inputs=1)


@pytest.mark.reliability(
    "hostile",
    "merge: symlink loops in parents; hard links to missing, directory, looped or later targets",
    "SourceError naming the path (convert exit 3)",
)
@pytest.mark.parametrize(
    ("entries", "words"),
    [
        ([_s(b"a", b"b"), _s(b"b", b"a"), _f(b"a/f")], "too many levels"),
        ([_s(b"a", b"a/x"), _f(b"a/f")], "too many levels"),
        ([_h(b"h", b"missing")], "missing"),
        ([_d(b"d"), _h(b"h", b"d")], "directory"),
        ([_h(b"h", b"")], "directory"),
        ([_h(b"a", b"b"), _h(b"b", b"a")], "missing"),
        ([_h(b"h", b"f"), _f(b"f")], "missing"),
    ],
    ids=["loop", "self-loop", "missing", "dir", "root", "link-loop", "later"],
)
def test_hostile_links_are_rejected(
    entries: list[Entry], words: str, reliability: Reliability
) -> None:
    with pytest.raises(SourceError, match=words):
        Merger().apply(entries)
    reliability.record(inputs=1)


@pytest.mark.reliability(
    "hostile",
    "merge: duplicate entries in one layer (file/file, file/dir, dir+child/file, link/file)",
    "the last entry wins; a directory replaced by a non-directory loses its subtree",
)
def test_duplicates_last_one_wins(reliability: Reliability) -> None:
    m = Merger()
    m.apply(
        [
            _f(b"f", 1),
            _f(b"f", 2),
            _f(b"fd", 3),
            _d(b"fd"),
            _d(b"df"),
            _f(b"df/child", 4),
            _f(b"df", 5),
            _s(b"sf", b"/etc/passwd"),
            _f(b"sf", 6),
            _f(b"self", 8),
            _h(b"self", b"self"),
        ]
    )
    got = _paths(m)
    assert got == {
        b"f": ("file", 2),
        b"fd": ("dir", -1),
        b"df": ("file", 5),
        b"sf": ("file", 6),
        b"self": ("file", 8),
    }
    reliability.record(inputs=5)


def _deep_view(depth: int) -> FileSystemView:
    packed = pack_blobs([[b"deep\n"]])
    tree = TreeBuilder()
    path = b""
    for _ in range(depth):
        path = path + b"/d" if path else b"d"
        tree.dir(path)
    tree.file(path + b"/leaf", packed.refs, packed.refs)
    boot = Bootstrap.decode(encode_bootstrap(tree.build(), packed.refs, packed.infos))
    stats = ReadStats()
    return FileSystemView(boot, build_chunk_source(MemoryBlobReader(packed.blobs), stats), stats)


@pytest.mark.reliability(
    "hostile",
    "unpack of a tree nested 3,000 directories deep",
    "unpacked whole, with at most MAX_OPEN_DIRS directory descriptors open at once",
)
def test_unpack_any_depth_with_bounded_descriptors(
    tmp_path: Path, reliability: Reliability, monkeypatch: pytest.MonkeyPatch
) -> None:
    depth = 3000
    view = _deep_view(depth)
    assert sum(1 for _ in view.walk()) == depth + 1
    real_open, real_close = os.open, os.close
    open_fds: set[int] = set()
    peak = 0

    def counting_open(*args: object, **kw: object) -> int:
        nonlocal peak
        fd = real_open(*args, **kw)  # type: ignore[arg-type]
        open_fds.add(fd)
        peak = max(peak, len(open_fds))
        return fd

    def counting_close(fd: int) -> None:
        open_fds.discard(fd)
        real_close(fd)

    monkeypatch.setattr("imagefs.unpack.os.open", counting_open)
    monkeypatch.setattr("imagefs.unpack.os.close", counting_close)
    dest = tmp_path / "dest"
    result = unpack(view, dest)
    monkeypatch.undo()
    assert result.entries == depth + 1
    assert MAX_OPEN_DIRS < peak <= MAX_OPEN_DIRS + 3, peak
    assert not open_fds
    fd = real_open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            nxt = real_open("d", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            real_close(fd)
            fd = nxt
        leaf = real_open("leaf", os.O_RDONLY, dir_fd=fd)
        assert os.read(leaf, 10) == b"deep\n"
        real_close(leaf)
    finally:
        real_close(fd)
    _remove_deep(dest)
    assert not dest.exists()
    reliability.record(inputs=1)


def _remove_deep(top: Path) -> None:
    """Remove a `d/d/.../leaf` chain iteratively (pytest's recursive tmp_path cleanup cannot
    descend thousands of levels): lift each `d` into the place of its parent."""
    spare = top.with_name(top.name + ".next")
    while True:
        inner = top / "d"
        has_inner = inner.is_dir() and not inner.is_symlink()
        if has_inner:
            os.rename(inner, spare)
        for child in top.iterdir():
            child.unlink()
        top.rmdir()
        if not has_inner:
            return
        os.rename(spare, top)
