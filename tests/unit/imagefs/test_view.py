"""FileSystemView over a small encoded tree and in-memory blobs: names, attributes, xattrs,
symlinks, reads at any offset and size, and the errno of every refusal."""

from __future__ import annotations

import errno
import random
import stat
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagefs.chunks import MemoryBlobReader, ReadStats, build_chunk_source
from imagefs.errors import FsError
from imagefs.format import Bootstrap, InodeSpec, Kind, encode_bootstrap
from imagefs.view import ROOT_INO, FileSystemView
from tests.unit.imagefs.trees import TreeBuilder, pack_blobs

A = b"text that compresses well. " * 40  # 1080 bytes, zstd
B = random.Random(1).randbytes(777)  # raw
C = b"!"  # one byte
D = random.Random(2).randbytes(3000)
TOOL = A + B + C + A + D
ONE = b"a file of a single chunk\n" * 3


@dataclass
class Image:
    view: FileSystemView
    reader: MemoryBlobReader
    stats: ReadStats


def make_image() -> Image:
    packed = pack_blobs([[A, B, C], [D, ONE]])
    a, b, c, d, one = packed.refs
    t = TreeBuilder()
    t.dir(b"bin")
    tool = t.file(b"bin/tool", [a, b, c, a, d], packed.refs)
    t.add(b"bin/link", InodeSpec(Kind.LNK, 0o777, 0, 0, 5, target=b"tool"))
    t.file(b"empty", [], packed.refs)
    t.file(b"one", [one], packed.refs)
    t.link(b"hard", tool)
    t.dir(b"dev", xattrs=((b"user.a", b"1"), (b"user.b", b"\x00\xff")))
    t.add(
        b"dev/null",
        InodeSpec(Kind.CHR, 0o666, 0, 0, 7, rdev_major=1, rdev_minor=3),
    )
    t.add(b"fifo", InodeSpec(Kind.FIFO, 0o600, 10, 20, 123_456_789_012))
    boot = Bootstrap.decode(encode_bootstrap(t.build(), packed.refs, packed.infos))
    boot.validate()
    reader = MemoryBlobReader(packed.blobs)
    stats = ReadStats()
    return Image(FileSystemView(boot, build_chunk_source(reader, stats), stats), reader, stats)


SHARED = make_image()


@pytest.fixture
def image() -> Image:
    return SHARED


def ino(image: Image, path: bytes) -> int:
    return image.view.resolve(path)


# --------------------------------------------------------------------------- names


def test_lookup_and_resolve(image: Image) -> None:
    v = image.view
    bin_ino = v.lookup(ROOT_INO, b"bin")
    assert v.lookup(bin_ino, b"tool") == v.resolve(b"/bin/tool") == v.resolve(b"bin//tool/")
    assert v.lookup(bin_ino, b".") == bin_ino
    assert v.lookup(bin_ino, b"..") == ROOT_INO
    assert v.lookup(ROOT_INO, b"..") == ROOT_INO
    assert v.resolve(b"") == v.resolve(b"/") == ROOT_INO
    assert v.resolve(b"hard") == v.resolve(b"bin/tool")  # one inode, two names


def test_readdir_is_sorted_without_dot_entries(image: Image) -> None:
    names = [name for name, _ in image.view.readdir(ROOT_INO)]
    assert names == [b"bin", b"dev", b"empty", b"fifo", b"hard", b"one"]
    assert list(image.view.readdir(ino(image, b"bin"))) == [
        (b"link", ino(image, b"bin/link")),
        (b"tool", ino(image, b"bin/tool")),
    ]


def test_walk_lists_every_path(image: Image) -> None:
    paths = [p for p, _ in image.view.walk()]
    assert paths == [
        b"bin",
        b"bin/link",
        b"bin/tool",
        b"dev",
        b"dev/null",
        b"empty",
        b"fifo",
        b"hard",
        b"one",
    ]


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda v: v.lookup(ROOT_INO, b"missing"), errno.ENOENT),
        (lambda v: v.resolve(b"bin/missing"), errno.ENOENT),
        (lambda v: v.lookup(v.resolve(b"one"), b"x"), errno.ENOTDIR),
        (lambda v: v.resolve(b"one/x"), errno.ENOTDIR),
        (lambda v: list(v.readdir(v.resolve(b"one"))), errno.ENOTDIR),
        (lambda v: v.read(v.resolve(b"bin"), 0, 1), errno.EISDIR),
        (lambda v: v.read(v.resolve(b"bin/link"), 0, 1), errno.EINVAL),
        (lambda v: v.read(v.resolve(b"fifo"), 0, 1), errno.EINVAL),
        (lambda v: v.read(v.resolve(b"one"), -1, 1), errno.EINVAL),
        (lambda v: v.read(v.resolve(b"one"), 0, -1), errno.EINVAL),
        (lambda v: v.readlink(v.resolve(b"one")), errno.EINVAL),
        (lambda v: v.readlink(ROOT_INO), errno.EINVAL),
        (lambda v: v.getxattr(ROOT_INO, b"user.a"), errno.ENODATA),
        (lambda v: v.getxattr(v.resolve(b"dev"), b"user.c"), errno.ENODATA),
        (lambda v: v.getattr(0), errno.ENOENT),
        (lambda v: v.getattr(1000), errno.ENOENT),
        (lambda v: v.read(-5, 0, 1), errno.ENOENT),
        (lambda v: list(v.readdir(99)), errno.ENOENT),
    ],
)
def test_refusals_carry_the_right_errno(image: Image, call: object, code: int) -> None:
    with pytest.raises(FsError) as info:
        call(image.view)  # type: ignore[operator]
    assert info.value.errno == code


# --------------------------------------------------------------------------- metadata


def test_getattr(image: Image) -> None:
    v = image.view
    tool = v.getattr(ino(image, b"bin/tool"))
    assert stat.S_ISREG(tool.mode) and tool.size == len(TOOL) and tool.nlink == 2
    assert tool.blocks == (len(TOOL) + 511) // 512
    root = v.getattr(ROOT_INO)
    assert root.ino == ROOT_INO and stat.S_ISDIR(root.mode) and root.nlink == 4  # bin, dev
    link = v.getattr(ino(image, b"bin/link"))
    assert stat.S_ISLNK(link.mode) and link.size == 4
    null = v.getattr(ino(image, b"dev/null"))
    assert stat.S_ISCHR(null.mode) and (null.rdev_major, null.rdev_minor) == (1, 3)
    fifo = v.getattr(ino(image, b"fifo"))
    assert stat.S_IMODE(fifo.mode) == 0o600 and (fifo.uid, fifo.gid) == (10, 20)
    assert fifo.mtime_ns == 123_456_789_012
    assert v.getattr(ino(image, b"empty")).size == 0


def test_readlink_and_xattrs(image: Image) -> None:
    v = image.view
    assert v.readlink(ino(image, b"bin/link")) == b"tool"
    dev = ino(image, b"dev")
    assert v.listxattr(dev) == [b"user.a", b"user.b"]
    assert v.getxattr(dev, b"user.b") == b"\x00\xff"
    assert v.listxattr(ROOT_INO) == []


# --------------------------------------------------------------------------- reads


def boundaries() -> list[int]:
    out, at = [], 0
    for part in (A, B, C, A, D):
        at += len(part)
        out.append(at)
    return out


@pytest.mark.parametrize("edge", boundaries()[:-1])
def test_reads_across_chunk_boundaries(image: Image, edge: int) -> None:
    tool = ino(image, b"bin/tool")
    for offset, size in ((edge - 1, 2), (edge, 1), (edge - 1, 1), (edge - 500, 1000)):
        offset = max(0, offset)
        assert image.view.read(tool, offset, size) == TOOL[offset : offset + size]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(TOOL) + 50), st.integers(0, len(TOOL) + 50))
def test_reads_at_any_offset_and_size(offset: int, size: int) -> None:
    image = SHARED
    tool = ino(image, b"bin/tool")
    assert image.view.read(tool, offset, size) == TOOL[offset : offset + size]


def test_whole_files_and_empty_reads(image: Image) -> None:
    v = image.view
    assert v.read(ino(image, b"bin/tool"), 0, 1 << 20) == TOOL
    assert v.read(ino(image, b"hard"), 0, 1 << 20) == TOOL
    assert v.read(ino(image, b"one"), 0, 1 << 20) == ONE
    assert v.read(ino(image, b"empty"), 0, 100) == b""
    assert v.read(ino(image, b"one"), len(ONE), 10) == b""
    assert v.read(ino(image, b"one"), 5, 0) == b""


def test_reads_are_counted_and_served_from_cache() -> None:
    image = make_image()
    tool = ino(image, b"bin/tool")
    assert image.view.read(tool, 0, 100) == TOOL[:100]
    reads = len(image.reader.reads)
    assert reads == 1
    assert image.view.read(tool, 10, 50) == TOOL[10:60]
    assert len(image.reader.reads) == reads
    assert image.stats.bytes_read == 150
    assert image.stats.cache_hits >= 1


def _readahead_image(readahead: int) -> Image:
    image = make_image()
    view = FileSystemView(
        image.view.bootstrap, image.view.chunks, image.stats, readahead_bytes=readahead
    )
    return Image(view, image.reader, image.stats)


def _wait_for(predicate: object, timeout_s: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.01)


def test_sequential_reader_gets_the_rest_fetched_ahead() -> None:
    image = _readahead_image(1 << 20)
    tool = ino(image, b"bin/tool")
    assert image.view.read(tool, 0, 10) == TOOL[:10]  # the first chunk only, synchronously
    _wait_for(lambda: image.stats.chunks_fetched >= 4)
    image.view.close()
    assert image.stats.chunks_fetched == 4  # A, B, C and D: the whole file, A once
    fetched = len(image.reader.reads)
    assert image.view.read(tool, 10, len(TOOL)) == TOOL[10:]  # served from the cache
    assert len(image.reader.reads) == fetched


def test_random_reads_trigger_no_readahead() -> None:
    image = _readahead_image(1 << 20)
    tool = ino(image, b"bin/tool")
    end = len(TOOL)
    assert image.view.read(tool, end - 10, 5) == TOOL[end - 10 : end - 5]  # in D
    image.view.close()
    assert image.stats.chunks_fetched == 1


def test_no_readahead_when_disabled() -> None:
    image = _readahead_image(0)
    tool = ino(image, b"bin/tool")
    assert image.view.read(tool, 0, 10) == TOOL[:10]
    assert image.stats.chunks_fetched == 1


def test_opening_a_file_fetches_its_blob_neighbours() -> None:
    image = make_image()
    view = FileSystemView(image.view.bootstrap, image.view.chunks, image.stats, locality_bytes=1)
    tool, one = ino(image, b"bin/tool"), ino(image, b"one")
    assert view.read(tool, 0, 10) == TOOL[:10]
    # tool's last chunk is D; ONE follows it in the same blob and is fetched in the background
    _wait_for(lambda: image.stats.chunks_fetched >= 2)
    view.close()
    assert image.stats.chunks_fetched == 2  # A (the read) and ONE (the neighbour), no more
    fetched = len(image.reader.reads)
    assert view.read(one, 0, 100) == ONE
    assert len(image.reader.reads) == fetched  # already cached
    assert view.read(tool, 0, 5) == TOOL[:5]  # a second open schedules nothing new
    assert image.stats.chunks_fetched == 2
