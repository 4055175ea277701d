"""Merged tree -> InodeSpecs: kinds, metadata, sorted entries, chunk lists, shared inodes."""

from __future__ import annotations

from builder.bootstrap import inode_specs
from builder.entries import Entry, EntryKind
from builder.merge import merge_layers
from imagefs.format import Kind

K = EntryKind


def test_inode_specs() -> None:
    root = merge_layers(
        [
            [
                Entry(b"", K.DIR, mode=0o700, mtime_ns=5),
                Entry(b"z", K.FILE, mode=0o4755, uid=1, gid=2, mtime_ns=7, size=10, content=0),
                Entry(b"a", K.DIR, xattrs=((b"user.x", b"\xff"),)),
                Entry(b"a/link", K.HARDLINK, link=b"z"),
                Entry(b"a/sym", K.SYMLINK, mode=0o777, link=b"../z"),
                Entry(b"a/null", K.CHAR, mode=0o666, rdev_major=1, rdev_minor=3),
                Entry(b"a/sda", K.BLOCK, rdev_major=8, rdev_minor=1),
                Entry(b"a/pipe", K.FIFO),
                Entry(b"a/empty", K.FILE, content=1),
            ]
        ]
    )
    chunks = {0: [3, 4, 3], 1: []}
    specs = inode_specs(root, lambda content: chunks[content])
    assert specs[0].kind is Kind.DIR and (specs[0].mode, specs[0].mtime_ns) == (0o700, 5)
    names = [name for name, _ in specs[0].entries]
    assert names == [b"a", b"z"]
    a = specs[dict(specs[0].entries)[b"a"]]
    assert a.xattrs == ((b"user.x", b"\xff"),)
    assert [name for name, _ in a.entries] == [b"empty", b"link", b"null", b"pipe", b"sda", b"sym"]
    by = {name: specs[i] for name, i in a.entries}
    assert dict(a.entries)[b"link"] == dict(specs[0].entries)[b"z"]  # one inode, two names
    z = by[b"link"]
    assert (z.kind, z.mode, z.uid, z.gid, z.size, z.chunks) == (
        Kind.REG,
        0o4755,
        1,
        2,
        10,
        (3, 4, 3),
    )
    assert (by[b"sym"].kind, by[b"sym"].target) == (Kind.LNK, b"../z")
    assert (by[b"null"].kind, by[b"null"].rdev_major, by[b"null"].rdev_minor) == (Kind.CHR, 1, 3)
    assert (by[b"sda"].kind, by[b"sda"].rdev_major) == (Kind.BLK, 8)
    assert by[b"pipe"].kind is Kind.FIFO
    assert (by[b"empty"].size, by[b"empty"].chunks) == (0, ())
    assert len(specs) == 8  # root, a, z (= a/link), empty, null, pipe, sda, sym
