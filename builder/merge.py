"""The overlay merge: per-layer entry lists (no file data) -> one tree, with OCI whiteouts,
opaque directories, replacement, implicit parents and hard links applied. Pure.

Rules (the OCI image-spec changeset rules, as containerd and umoci apply them):

* A layer's whiteouts (`.wh.NAME`) and opaque markers (`.wh..wh..opq`) act on the tree the
  lower layers built, before any of the layer's own entries: entries of the same layer are
  never hidden by them, whatever their order in the tar.
* Entries then apply in order; a later entry for the same path wins. A directory entry over
  a directory updates its metadata and keeps its contents; anything else replaces what was
  there (a directory with its whole subtree).
* Parent components are resolved like `securejoin`: symlinks in them are followed, clamped
  to the root; a missing parent (or a non-directory in the way) becomes a 0755 root-owned
  directory. The last component is never followed.
* A hard link joins the inode its target path has at that point of the merge (same or lower
  layer); a missing target is a SourceError naming both paths.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from builder.entries import Entry, EntryKind, implicit_dir, join_path, show, split_path
from imagefs.errors import SourceError

MAX_SYMLINK_FOLLOWS = 40  # like Linux's MAXSYMLINKS


@dataclass(eq=False, slots=True)
class Node:
    """One inode of the merged tree. Hard-linked paths share one Node; `children` is a dict
    for directories and None otherwise."""

    entry: Entry
    children: dict[bytes, Node] | None = field(default=None)

    @property
    def is_dir(self) -> bool:
        return self.children is not None


class Merger:
    """Applies layers one after another (lowest first) to a tree that starts as an empty root."""

    def __init__(self) -> None:
        self.root = Node(implicit_dir(b""), {})

    def apply(self, entries: Sequence[Entry]) -> None:
        for e in entries:
            if e.kind is EntryKind.WHITEOUT:
                parent_path, name = split_path(e.path)
                parent = self._walk(parent_path, create=False)
                if parent is not None and parent.children is not None:
                    parent.children.pop(name, None)
            elif e.kind is EntryKind.OPAQUE:
                node = self._walk(e.path, create=False)
                if node is not None and node.children is not None:
                    node.children.clear()
        for e in entries:
            if e.kind is EntryKind.WHITEOUT:
                self._walk(split_path(e.path)[0], create=True)
            elif e.kind is EntryKind.OPAQUE:
                self._walk(e.path, create=True)
            else:
                self._put(e)

    # -- paths ---------------------------------------------------------------------------

    def _walk(self, path: bytes, *, create: bool) -> Node | None:
        """The directory at `path`, following symlinks in every component (clamped to the
        root). With `create`, missing or non-directory components become implicit dirs."""
        todo = [p for p in reversed(path.split(b"/")) if p]
        stack: list[tuple[bytes, Node]] = [(b"", self.root)]
        follows = 0
        while todo:
            name = todo.pop()
            if name == b".":
                continue
            if name == b"..":
                if len(stack) > 1:
                    stack.pop()
                continue
            here, node = stack[-1]
            assert node.children is not None
            child = node.children.get(name)
            if child is not None and child.entry.kind is EntryKind.SYMLINK:
                follows += 1
                if follows > MAX_SYMLINK_FOLLOWS:
                    raise SourceError(f"too many levels of symbolic links in {show(path)}")
                target = child.entry.link
                if target.startswith(b"/"):
                    del stack[1:]
                todo.extend(p for p in reversed(target.split(b"/")) if p)
                continue
            if child is None or child.children is None:
                if not create:
                    return None
                child = Node(implicit_dir(join_path(here, name)), {})
                node.children[name] = child
            stack.append((join_path(here, name), child))
        return stack[-1][1]

    def lookup(self, path: bytes) -> Node | None:
        """The node at `path` (parents resolved, the last component not followed)."""
        if not path:
            return self.root
        parent_path, name = split_path(path)
        parent = self._walk(parent_path, create=False)
        if parent is None or parent.children is None:
            return None
        return parent.children.get(name)

    def _put(self, e: Entry) -> None:
        if not e.path:
            if e.kind is not EntryKind.DIR:
                raise SourceError(f"the root entry is a {e.kind.value}, not a directory")
            self.root.entry = e
            return
        parent_path, name = split_path(e.path)
        if e.kind is EntryKind.HARDLINK:
            target = self.lookup(e.link)
            if target is None:
                raise SourceError(f"hard link {show(e.path)} points at missing {show(e.link)}")
            if target.is_dir:
                raise SourceError(f"hard link {show(e.path)} points at directory {show(e.link)}")
            parent = self._walk(parent_path, create=True)
            assert parent is not None and parent.children is not None
            parent.children[name] = target
            return
        parent = self._walk(parent_path, create=True)
        assert parent is not None and parent.children is not None
        existing = parent.children.get(name)
        if e.kind is EntryKind.DIR:
            if existing is not None and existing.children is not None:
                existing.entry = e
            else:
                parent.children[name] = Node(e, {})
        else:
            parent.children[name] = Node(e)


def merge_layers(layers: Iterable[Sequence[Entry]]) -> Node:
    """Merge layers (lowest first) into one tree; returns its root."""
    merger = Merger()
    for entries in layers:
        merger.apply(entries)
    return merger.root


def walk_tree(root: Node) -> Iterator[tuple[bytes, Node]]:
    """(path, node) for every path of the tree in depth-first sorted-name order, root first
    (path b""). Hard-linked nodes appear once per path."""
    stack: list[tuple[bytes, Node]] = [(b"", root)]
    while stack:
        path, node = stack.pop()
        yield path, node
        if node.children is not None:
            for name in sorted(node.children, reverse=True):
                stack.append((join_path(path, name), node.children[name]))


def number_inodes(root: Node) -> list[Node]:
    """The tree's inodes in index order: the root is 0, then depth-first by sorted name;
    hard-linked paths share the index of the first path that reaches them."""
    seen: set[int] = set()
    out: list[Node] = []
    for _path, node in walk_tree(root):
        if id(node) not in seen:
            seen.add(id(node))
            out.append(node)
    return out
