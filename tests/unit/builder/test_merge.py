"""The overlay merge: whiteouts, opaque directories, replacement, implicit parents, hard
links and symlinked parents; and a property test against a flat path-dict reference model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.entries import Entry, EntryKind
from builder.merge import MAX_SYMLINK_FOLLOWS, Node, merge_layers, number_inodes, walk_tree
from imagefs.errors import SourceError

K = EntryKind


def f(path: str, tag: int = 1, **kw: object) -> Entry:
    return Entry(path.encode(), K.FILE, mtime_ns=tag, **kw)  # type: ignore[arg-type]


def d(path: str, tag: int = 1, mode: int = 0o755) -> Entry:
    return Entry(path.encode(), K.DIR, mode=mode, mtime_ns=tag)


def sym(path: str, target: str, tag: int = 1) -> Entry:
    return Entry(path.encode(), K.SYMLINK, mtime_ns=tag, link=target.encode())


def hl(path: str, target: str) -> Entry:
    return Entry(path.encode(), K.HARDLINK, link=target.encode())


def wh(path: str) -> Entry:
    return Entry(path.encode(), K.WHITEOUT)


def opq(path: str) -> Entry:
    return Entry(path.encode(), K.OPAQUE)


def flat(root: Node) -> dict[str, tuple[str, int]]:
    """path -> (kind, tag) of the merged tree, root left out."""
    return {p.decode(): (n.entry.kind.value, n.entry.mtime_ns) for p, n in walk_tree(root) if p}


def groups(root: Node) -> set[frozenset[str]]:
    by: dict[int, set[str]] = {}
    for p, n in walk_tree(root):
        if not n.is_dir:
            by.setdefault(id(n), set()).add(p.decode())
    return {frozenset(s) for s in by.values() if len(s) > 1}


def test_whiteout_removes_lower_subtree() -> None:
    root = merge_layers(
        [
            [d("a"), f("a/x"), d("a/sub"), f("a/sub/y"), f("b")],
            [wh("a/sub"), wh("b"), wh("missing/thing")],
        ]
    )
    assert flat(root) == {"a": ("dir", 1), "a/x": ("file", 1), "missing": ("dir", 0)}


def test_whiteout_does_not_hide_same_layer_entries() -> None:
    # order in the tar does not matter: the whiteout acts on lower layers only
    root = merge_layers([[f("a", 1)], [f("a", 2), wh("a")], [wh("a"), f("a", 3)]])
    assert flat(root) == {"a": ("file", 3)}


def test_opaque_keeps_same_layer_entries() -> None:
    lower = [d("o", 1), f("o/lower"), d("o/sub", 1), f("o/sub/deep"), f("keep")]
    upper = [f("o/new", 2), opq("o"), d("o/sub", 2), f("o/sub/new", 2)]
    root = merge_layers([lower, upper])
    assert flat(root) == {
        "keep": ("file", 1),
        "o": ("dir", 1),  # no dir entry for o in the upper layer: metadata kept
        "o/new": ("file", 2),
        "o/sub": ("dir", 2),
        "o/sub/new": ("file", 2),
    }


def test_replace_file_by_dir_and_back() -> None:
    root = merge_layers(
        [
            [f("x"), d("y"), f("y/child")],
            [d("x", 2), f("x/inner", 2), f("y", 2)],
        ]
    )
    assert flat(root) == {"x": ("dir", 2), "x/inner": ("file", 2), "y": ("file", 2)}


def test_dir_over_dir_updates_metadata_keeps_children() -> None:
    root = merge_layers([[d("a", 1, 0o700), f("a/x")], [d("a", 2, 0o750)]])
    node = root.children[b"a"]  # type: ignore[index]
    assert node.entry.mode == 0o750
    assert b"x" in node.children  # type: ignore[operator]


def test_last_entry_in_a_layer_wins() -> None:
    root = merge_layers([[f("a", 1), f("a", 2), sym("b", "x", 3), f("b", 4)]])
    assert flat(root) == {"a": ("file", 2), "b": ("file", 4)}


def test_implicit_parents_and_root_entry() -> None:
    root = merge_layers([[f("a/b/c", 5)], [Entry(b"", K.DIR, mode=0o700, mtime_ns=9)]])
    assert flat(root) == {"a": ("dir", 0), "a/b": ("dir", 0), "a/b/c": ("file", 5)}
    implicit = root.children[b"a"].entry  # type: ignore[index]
    assert (implicit.mode, implicit.uid, implicit.gid) == (0o755, 0, 0)
    assert (root.entry.mode, root.entry.mtime_ns) == (0o700, 9)
    with pytest.raises(SourceError, match="root"):
        merge_layers([[Entry(b"", K.FILE)]])


def test_hard_links() -> None:
    root = merge_layers(
        [
            [f("t", 1), hl("same", "t"), d("d"), f("d/u", 2)],
            [hl("cross", "d/u"), f("t", 3)],  # rewriting t breaks its link to "same"
        ]
    )
    assert groups(root) == {frozenset({"d/u", "cross"})}
    assert flat(root)["same"] == ("file", 1)
    assert flat(root)["t"] == ("file", 3)
    nodes = number_inodes(root)
    assert nodes[0] is root
    assert len(nodes) == 1 + len(flat(root)) - 1  # one shared inode


def test_hard_link_errors_name_both_paths() -> None:
    with pytest.raises(SourceError) as info:
        merge_layers([[f("a")], [hl("link", "nothere")]])
    assert "'link'" in str(info.value) and "'nothere'" in str(info.value)
    with pytest.raises(SourceError, match="directory"):
        merge_layers([[d("dir"), hl("link", "dir")]])
    with pytest.raises(SourceError):  # whited out in the same layer, before the link
        merge_layers([[f("a")], [wh("a"), hl("b", "a")]])


def test_symlinked_parents_are_followed_within_the_root() -> None:
    root = merge_layers(
        [
            [d("usr"), d("usr/lib"), sym("lib", "usr/lib"), sym("abs", "/usr"), sym("up", "../..")],
            [f("lib/x"), f("abs/y"), f("up/z"), wh("lib/gone")],
        ]
    )
    got = flat(root)
    assert got["usr/lib/x"] == ("file", 1)
    assert got["usr/y"] == ("file", 1)
    assert got["z"] == ("file", 1)  # ".." is clamped at the root
    assert got["lib"] == ("symlink", 1)


def test_symlink_loops_are_an_error() -> None:
    with pytest.raises(SourceError, match="symbolic links"):
        merge_layers([[sym("a", "b"), sym("b", "a")], [f("a/x")]])


def test_number_inodes_is_sorted_depth_first() -> None:
    root = merge_layers([[f("b"), d("a"), f("a/z"), f("a/c"), hl("0", "a/z")]])
    order = [n.entry.path for n in number_inodes(root)]
    # "0" comes first by name and takes the shared inode; "a/z" reuses it
    assert order == [b"", b"a/z", b"a", b"a/c", b"b"]


# ---------------------------------------------------------------------------------------------
# Property test: the tree merge against a flat dict of paths


Path = tuple[str, ...]


@dataclass
class Rec:
    kind: EntryKind
    tag: int  # mtime_ns, unique per generated entry; 0 for implicit directories
    inode: int
    link: str = ""


class Model:
    """Layers applied to a dict path -> record: subtree removal by prefix, symlinks in
    parents resolved by rewriting the path."""

    def __init__(self) -> None:
        self.paths: dict[Path, Rec] = {}
        self.next_inode = 1

    def _new(self, kind: EntryKind, tag: int, link: str = "") -> Rec:
        self.next_inode += 1
        return Rec(kind, tag, self.next_inode, link)

    def _remove(self, path: Path) -> None:
        for p in [p for p in self.paths if p[: len(path)] == path]:
            del self.paths[p]

    def _dir(self, parts: Sequence[str], create: bool) -> Path | None:
        todo = [p for p in reversed(parts) if p]
        at: Path = ()
        follows = 0
        while todo:
            name = todo.pop()
            if name == ".":
                continue
            if name == "..":
                at = at[:-1]
                continue
            rec = self.paths.get((*at, name))
            if rec is not None and rec.kind is K.SYMLINK:
                follows += 1
                if follows > MAX_SYMLINK_FOLLOWS:
                    raise SourceError("loop")
                if rec.link.startswith("/"):
                    at = ()
                todo.extend(p for p in reversed(rec.link.split("/")) if p)
                continue
            if rec is None or rec.kind is not K.DIR:
                if not create:
                    return None
                self._remove((*at, name))
                self.paths[(*at, name)] = self._new(K.DIR, 0)
            at = (*at, name)
        return at

    def apply(self, entries: Sequence[Entry]) -> None:
        for e in entries:
            parts = e.path.decode().split("/") if e.path else []
            if e.kind is K.WHITEOUT:
                parent = self._dir(parts[:-1], create=False)
                if parent is not None:
                    self._remove((*parent, parts[-1]))
            elif e.kind is K.OPAQUE:
                at = self._dir(parts, create=False)
                if at is not None:
                    for p in [p for p in self.paths if p[: len(at)] == at and len(p) > len(at)]:
                        del self.paths[p]
        for e in entries:
            parts = e.path.decode().split("/") if e.path else []
            if e.kind is K.WHITEOUT:
                self._dir(parts[:-1], create=True)
                continue
            if e.kind is K.OPAQUE:
                self._dir(parts, create=True)
                continue
            if not parts:
                continue  # root metadata: not compared
            if e.kind is K.HARDLINK:
                lparts = e.link.decode().split("/")
                lparent = self._dir(lparts[:-1], create=False)
                target = None if lparent is None else self.paths.get((*lparent, lparts[-1]))
                if target is None or target.kind is K.DIR:
                    raise SourceError("bad hard link")
                parent = self._dir(parts[:-1], create=True)
                assert parent is not None
                self._remove((*parent, parts[-1]))
                self.paths[(*parent, parts[-1])] = target
                continue
            parent = self._dir(parts[:-1], create=True)
            assert parent is not None
            key = (*parent, parts[-1])
            old = self.paths.get(key)
            if e.kind is K.DIR and old is not None and old.kind is K.DIR:
                self.paths[key] = Rec(K.DIR, e.mtime_ns, old.inode)
                continue
            self._remove(key)
            self.paths[key] = self._new(e.kind, e.mtime_ns, e.link.decode())

    def flat(self) -> dict[str, tuple[str, int]]:
        return {"/".join(p): (r.kind.value, r.tag) for p, r in self.paths.items()}

    def groups(self) -> set[frozenset[str]]:
        by: dict[int, set[str]] = {}
        for p, r in self.paths.items():
            if r.kind is not K.DIR:
                by.setdefault(r.inode, set()).add("/".join(p))
        return {frozenset(s) for s in by.values() if len(s) > 1}


NAMES = ["a", "b", "c"]
paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
targets = st.sampled_from(["a", "b", "a/b", "/c", "../a", "..", "c/../b", "x/y"])


@st.composite
def entries(draw: st.DrawFn, tag: int) -> Entry:
    kind = draw(
        st.sampled_from(
            [K.FILE, K.FILE, K.DIR, K.DIR, K.SYMLINK, K.HARDLINK, K.WHITEOUT, K.OPAQUE, K.FIFO]
        )
    )
    path = draw(paths).encode()
    if kind is K.SYMLINK:
        return Entry(path, kind, mtime_ns=tag, link=draw(targets).encode())
    if kind is K.HARDLINK:
        return Entry(path, kind, link=draw(paths).encode())
    if kind in (K.WHITEOUT, K.OPAQUE):
        return Entry(path, kind)
    return Entry(path, kind, mtime_ns=tag)


@st.composite
def layer_lists(draw: st.DrawFn) -> list[list[Entry]]:
    tag = iter(range(1, 10_000))
    n = draw(st.integers(min_value=1, max_value=4))
    return [[draw(entries(next(tag))) for _ in range(draw(st.integers(0, 8)))] for _ in range(n)]


@settings(max_examples=400, deadline=None)
@given(layer_lists())
def test_merge_matches_reference_model(layers: list[list[Entry]]) -> None:
    model = Model()
    model_error = None
    try:
        for layer in layers:
            model.apply(layer)
    except SourceError as exc:
        model_error = exc
    if model_error is not None:
        with pytest.raises(SourceError):
            merge_layers(layers)
        return
    root = merge_layers(layers)
    assert flat(root) == model.flat()
    assert groups(root) == model.groups()
    # inode numbering is a bijection onto the tree's distinct nodes, root first
    nodes = number_inodes(root)
    assert nodes[0] is root
    assert len({id(n) for n in nodes}) == len(nodes)
    assert {id(n) for _, n in walk_tree(root)} == {id(n) for n in nodes}
