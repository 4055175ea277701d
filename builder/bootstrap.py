"""The merged tree as bootstrap records: deterministic inode numbering and `InodeSpec`s. Pure."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from builder.entries import EntryKind
from builder.merge import Node, number_inodes
from imagefs.errors import SourceError
from imagefs.format import InodeSpec, Kind

_KINDS = {
    EntryKind.FILE: Kind.REG,
    EntryKind.DIR: Kind.DIR,
    EntryKind.SYMLINK: Kind.LNK,
    EntryKind.CHAR: Kind.CHR,
    EntryKind.BLOCK: Kind.BLK,
    EntryKind.FIFO: Kind.FIFO,
}


def inode_specs(root: Node, file_chunks: Callable[[int], Sequence[int]]) -> list[InodeSpec]:
    """One InodeSpec per inode of the tree, root first (see `number_inodes`).

    `file_chunks(content)` gives the chunk-table indices of a regular file's content."""
    nodes = number_inodes(root)
    index = {id(node): i for i, node in enumerate(nodes)}
    specs = []
    for node in nodes:
        e = node.entry
        kind = _KINDS.get(e.kind)
        if kind is None:  # whiteouts and hard links never become nodes
            raise SourceError(f"internal: a {e.kind.value} entry reached the merged tree")
        entries: tuple[tuple[bytes, int], ...] = ()
        if node.children is not None:
            kids = node.children
            entries = tuple((name, index[id(kids[name])]) for name in sorted(kids))
        specs.append(
            InodeSpec(
                kind=kind,
                mode=e.mode & 0o7777,
                uid=e.uid,
                gid=e.gid,
                mtime_ns=e.mtime_ns,
                size=e.size if kind is Kind.REG else 0,
                rdev_major=e.rdev_major,
                rdev_minor=e.rdev_minor,
                target=e.link if kind is Kind.LNK else b"",
                chunks=tuple(file_chunks(e.content)) if kind is Kind.REG and e.size else (),
                entries=entries,
                xattrs=e.xattrs,
            )
        )
    return specs
