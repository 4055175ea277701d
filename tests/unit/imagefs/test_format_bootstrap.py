"""The bootstrap codec: round trips of random trees, determinism, the encoder's checks, and
decoding of damaged or foreign bytes (only FormatError, never a decode crash)."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from dataclasses import replace

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagefs.digest import ChunkDigest, Digest
from imagefs.errors import FormatError, UnsupportedVersionError
from imagefs.format import (
    FORMAT_MAJOR,
    MAX_CHUNK_SIZE,
    BlobInfo,
    Bootstrap,
    ChunkRef,
    Compression,
    InodeSpec,
    Kind,
    compress_bootstrap,
    decompress_bootstrap,
    encode_bootstrap,
    load_bootstrap,
)
from imagefs.view import FileSystemView
from tests.unit.imagefs.trees import TreeBuilder, TreeCase, tree_cases

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- round trips


def expected_file_chunks(case: TreeCase, spec: InodeSpec) -> list[tuple[int, ChunkRef]]:
    out, at = [], 0
    for c in spec.chunks:
        out.append((at, case.chunks[c]))
        at += case.chunks[c].size
    return out


@PROPS
@given(tree_cases())
def test_random_trees_round_trip_every_field(case: TreeCase) -> None:
    data = case.encode()
    boot = Bootstrap.decode(data)
    boot.validate()
    assert boot.inode_count == len(case.inodes)
    assert boot.chunk_count == len(case.chunks)
    assert list(boot.chunks()) == case.chunks
    assert boot.blobs == tuple(case.blobs)
    assert boot.prefetch == tuple(case.prefetch)
    for index, spec in enumerate(case.inodes):
        node = boot.inode(index)
        assert node.index == index
        assert node.kind is spec.kind
        assert node.mode == int(spec.kind) | spec.mode
        assert (node.uid, node.gid, node.mtime_ns) == (spec.uid, spec.gid, spec.mtime_ns)
        assert (node.rdev_major, node.rdev_minor) == (spec.rdev_major, spec.rdev_minor)
        assert node.nlink == case.nlink[index]
        assert node.parent == case.parent[index]
        assert boot.xattrs(index) == list(spec.xattrs)
        assert list(boot.entries(index)) == list(spec.entries)
        if spec.kind is Kind.REG:
            assert node.size == spec.size
            assert list(boot.file_chunks(index)) == expected_file_chunks(case, spec)
        elif spec.kind is Kind.LNK:
            assert node.size == len(spec.target)
            assert boot.symlink_target(index) == spec.target
        else:
            assert node.size == 0
        for name, child in spec.entries:
            assert boot.lookup(index, name) == child
        if spec.kind is Kind.DIR:
            assert boot.lookup(index, b"\0not-a-valid-name") is None


@PROPS
@given(tree_cases())
def test_encode_is_deterministic_and_survives_compression(case: TreeCase) -> None:
    data = case.encode()
    assert case.encode() == data
    assert len(data) % 8 == 0
    assert decompress_bootstrap(compress_bootstrap(data)) == data
    assert load_bootstrap(compress_bootstrap(data)).data == data


@PROPS
@given(tree_cases(), st.data())
def test_file_chunks_window_matches_the_chunks_overlapping_it(
    case: TreeCase, data: st.DataObject
) -> None:
    boot = Bootstrap.decode(case.encode())
    files = [i for i, s in enumerate(case.inodes) if s.kind is Kind.REG and s.size]
    if not files:
        return
    index = data.draw(st.sampled_from(files))
    size = case.inodes[index].size
    start = data.draw(st.integers(0, size - 1))
    end = data.draw(st.integers(start + 1, size))
    every = expected_file_chunks(case, case.inodes[index])
    got = list(boot.file_chunks(index, start, end))
    # Exactly the file's chunks that hold bytes of the window, in file order.
    want = [(at, ref) for at, ref in every if at < end and at + ref.size > start]
    assert got == want


def test_files_may_not_reference_empty_chunks() -> None:
    empty = ChunkRef(ChunkDigest.of(b""), BLOB, 0, 0, 0, Compression.RAW)
    with pytest.raises(FormatError, match="must not be empty"):
        encode_bootstrap(
            [replace(ROOT, entries=((b"f", 1),)), replace(FILE, size=0, chunks=(0,))],
            [empty],
            [BlobInfo(BLOB, 100)],
        )


def test_string_heap_is_deduplicated_in_first_use_order() -> None:
    t = TreeBuilder()
    a = t.dir(b"same", xattrs=((b"user.k", b"same"),))
    t.add(b"same/link", InodeSpec(Kind.LNK, 0o777, 0, 0, 0, target=b"same"))
    t.add(b"zz", InodeSpec(Kind.LNK, 0o777, 0, 0, 0, target=b"user.k"))
    data = encode_bootstrap(t.build(), [], [])
    boot = Bootstrap.decode(data)
    heap = bytes(boot.sections[7])
    # root's names, then /same's entry, then its xattr (value reuses "same"); the two
    # symlink targets reuse earlier strings.
    assert heap == b"samezzlinkuser.k"
    assert boot.symlink_target(a + 1) == b"same"
    assert boot.xattrs(a) == [(b"user.k", b"same")]


# --------------------------------------------------------------------------- encoder checks

ROOT = InodeSpec(Kind.DIR, 0o755, 0, 0, 0)
FILE = InodeSpec(Kind.REG, 0o644, 0, 0, 0)
BLOB = Digest.of(b"blob")
CHUNK = ChunkRef(ChunkDigest.of(b"x"), BLOB, 0, 1, 1, Compression.RAW)


@pytest.mark.parametrize(
    ("inodes", "chunks", "blobs", "prefetch", "message"),
    [
        ([], [], [], [], "root"),
        ([FILE], [], [], [], "root"),
        ([replace(ROOT, entries=((b"a/b", 1),)), FILE], [], [], [], "invalid file name"),
        ([replace(ROOT, entries=((b"a\0", 1),)), FILE], [], [], [], "invalid file name"),
        ([replace(ROOT, entries=((b"", 1),)), FILE], [], [], [], "invalid file name"),
        ([replace(ROOT, entries=((b"x" * 256, 1),)), FILE], [], [], [], "invalid file name"),
        ([replace(ROOT, entries=((b"..", 1),)), FILE], [], [], [], "sorted"),
        ([replace(ROOT, entries=((b"b", 1), (b"a", 2))), FILE, FILE], [], [], [], "sorted"),
        ([replace(ROOT, entries=((b"a", 1), (b"a", 1))), FILE], [], [], [], "sorted"),
        ([replace(ROOT, entries=((b"a", 0),))], [], [], [], "bad inode"),
        ([replace(ROOT, entries=((b"a", 2),)), FILE], [], [], [], "bad inode"),
        (
            [replace(ROOT, entries=((b"a", 1), (b"b", 1))), ROOT],
            [],
            [],
            [],
            "linked twice",
        ),
        ([ROOT, replace(FILE, chunks=(0,), size=1)], [], [], [], "outside the chunk table"),
        ([ROOT, replace(FILE, chunks=(0,), size=2)], [CHUNK], [BlobInfo(BLOB, 9)], [], "size"),
        ([ROOT], [CHUNK], [], [], "unlisted blob"),
        ([ROOT], [replace(CHUNK, size=MAX_CHUNK_SIZE + 1)], [BlobInfo(BLOB, 9)], [], "larger"),
        ([ROOT], [], [BlobInfo(BLOB, 1), BlobInfo(BLOB, 1)], [], "listed twice"),
        ([ROOT], [], [], [1], "prefetch"),
        ([replace(ROOT, uid=2**32)], [], [], [], "out of range"),
        ([replace(ROOT, uid=-1)], [], [], [], "out of range"),
        ([replace(ROOT, mtime_ns=2**63 * 10**9)], [], [], [], "out of range"),
        ([ROOT], [], [BlobInfo(BLOB, 2**64)], [], "out of range"),
    ],
)
def test_encoder_rejects_impossible_trees(
    inodes: list[InodeSpec],
    chunks: list[ChunkRef],
    blobs: list[BlobInfo],
    prefetch: list[int],
    message: str,
) -> None:
    with pytest.raises(FormatError, match=message):
        encode_bootstrap(inodes, chunks, blobs, prefetch=prefetch)


def test_children_may_precede_their_parents_in_inode_order() -> None:
    """Regression: a directory numbered before its parent, with a subdirectory of its own,
    was refused as "linked twice" and its nlink lost its subdirectory."""
    inodes = [
        replace(ROOT, entries=((b"a", 2),)),
        replace(ROOT, entries=((b"c", 3),)),  # /a/b
        replace(ROOT, entries=((b"b", 1),)),  # /a
        ROOT,  # /a/b/c
    ]
    boot = Bootstrap.decode(encode_bootstrap(inodes, [], []))
    boot.validate()
    assert [boot.inode(i).nlink for i in range(4)] == [3, 3, 3, 2]
    assert [boot.inode(i).parent for i in range(4)] == [0, 2, 0, 1]


def test_only_symlinks_report_their_target_length_as_size() -> None:
    odd = replace(ROOT, entries=((b"f", 1),), target=b"ignored")
    boot = Bootstrap.decode(encode_bootstrap([odd, replace(FILE, target=b"x")], [], []))
    assert boot.inode(0).size == 0
    assert boot.inode(1).size == 0


# --------------------------------------------------------------------------- versions


def small_bootstrap() -> bytes:
    t = TreeBuilder()
    t.dir(b"d")
    t.add(b"d/f", FILE)
    t.add(b"l", InodeSpec(Kind.LNK, 0o777, 0, 0, 0, target=b"d/f"))
    return encode_bootstrap(t.build(), [], [], prefetch=[2])


def with_header(data: bytes, *, major: int | None = None, minor: int | None = None) -> bytes:
    out = bytearray(data)
    if major is not None:
        struct.pack_into("<H", out, 8, major)
    if minor is not None:
        struct.pack_into("<H", out, 10, minor)
    return bytes(out)


def with_extra_section(data: bytes, body: bytes, minor: int) -> bytes:
    """Re-lay a bootstrap with one more section, as a later 1.x writer would."""
    magic, major, _, flags, count = struct.unpack_from("<8sHHII", data)
    table = [struct.unpack_from("<QQ", data, 20 + 16 * i) for i in range(count)]
    bodies = [data[o : o + n] for o, n in table] + [body]
    out = bytearray((20 + 16 * len(bodies) + 7) // 8 * 8)
    entries = []
    for b in bodies:
        entries.append(struct.pack("<QQ", len(out), len(b)))
        out += b + bytes(-len(b) % 8)
    header = struct.pack("<8sHHII", magic, major, minor, flags, len(bodies)) + b"".join(entries)
    out[: len(header)] = header
    return bytes(out)


@pytest.mark.parametrize("major", [0, FORMAT_MAJOR + 1, 0xFFFF])
def test_unknown_major_version_is_a_clear_error(major: int) -> None:
    with pytest.raises(UnsupportedVersionError, match=r"format \d+\.\d+ is not supported"):
        Bootstrap.decode(with_header(small_bootstrap(), major=major))
    with pytest.raises(UnsupportedVersionError):
        load_bootstrap(compress_bootstrap(with_header(small_bootstrap(), major=major)))


def test_unknown_major_wins_over_a_changed_layout() -> None:
    """A 2.x bootstrap may look like anything after the version: still a version error."""
    future = with_header(small_bootstrap(), major=2)[:12] + b"\xff" * 40
    with pytest.raises(UnsupportedVersionError):
        Bootstrap.decode(future)


def test_newer_minor_with_an_extra_section_decodes_the_same() -> None:
    data = small_bootstrap()
    newer = with_extra_section(data, b"future section payload", minor=7)
    old, new = Bootstrap.decode(data), Bootstrap.decode(newer)
    new.validate()
    assert new.minor == 7
    assert new.inode_count == old.inode_count
    assert [new.inode(i) for i in range(3)] == [old.inode(i) for i in range(3)]
    assert list(new.entries(0)) == list(old.entries(0))
    assert new.symlink_target(3) == b"d/f"
    assert new.prefetch == (2,)


def test_bad_magic_and_short_input() -> None:
    data = small_bootstrap()
    with pytest.raises(FormatError, match="magic"):
        Bootstrap.decode(b"XXXXXXXX" + data[8:])
    with pytest.raises(FormatError, match="short"):
        Bootstrap.decode(data[:10])
    with pytest.raises(FormatError, match="truncated"):
        Bootstrap.decode(data[:100])


# --------------------------------------------------------------------------- damaged input


class _NoChunks:
    def get_chunks(self, refs: object) -> list[bytes]:
        raise AssertionError("not reached")


def exercise(data: bytes) -> None:
    """Decode and use `data` the way readers do. Only FormatError may escape."""
    try:
        boot = Bootstrap.decode(data)
    except FormatError:
        return
    calls: list[Callable[[int], object]] = [
        boot.inode,
        lambda i: list(boot.entries(i)),
        lambda i: boot.lookup(i, b"a"),
        boot.xattrs,
        boot.symlink_target,
        lambda i: list(boot.file_chunks(i)),
        lambda i: list(boot.file_chunks(i, 5, 10)),
    ]
    for index in range(min(boot.inode_count, 64)):
        for call in calls:
            with contextlib.suppress(FormatError):
                call(index)
    try:
        boot.validate()
    except FormatError:
        return
    # A bootstrap that validates is a tree whose every record reads: walk all of it.
    view = FileSystemView(boot, _NoChunks())
    seen = sum(1 for _ in view.walk())
    assert seen <= sum(1 for i in range(boot.inode_count) for _ in boot.entries(i))


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(tree_cases(max_inodes=8)).encode())
    how = draw(st.sampled_from(["truncate", "flip", "overwrite", "fields"]))
    if how == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if how == "overwrite":
        at = draw(st.integers(0, len(data) - 1))
        junk = draw(st.binary(min_size=1, max_size=16))
        data[at : at + len(junk)] = junk
        return bytes(data[: len(data)])
    # Overwrite aligned 32-bit fields with interesting values (counts, offsets, indices).
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data) // 4 - 1)) * 4
        value = draw(st.sampled_from([0, 1, 2, 7, 8, 0x7FFFFFFF, 0xFFFFFFFF, 0x10000]))
        struct.pack_into("<I", data, at, value)
    return bytes(data)


@PROPS
@given(damaged())
def test_damaged_bootstraps_raise_only_format_errors(data: bytes) -> None:
    exercise(data)


@PROPS
@given(st.binary(max_size=400))
def test_garbage_raises_only_format_errors(junk: bytes) -> None:
    exercise(junk)
    exercise(b"IFSBOOT\0" + struct.pack("<HHII", 1, 0, 0, 9) + junk)
    with pytest.raises(FormatError):
        decompress_bootstrap(junk)


def test_a_directory_cycle_is_rejected_by_validate() -> None:
    """A crafted bootstrap whose subdirectory names its parent again: validate must stop it
    (a reader that walks it would otherwise recurse forever)."""
    t = TreeBuilder()
    d = t.dir(b"d")
    t.dir(b"d/e")
    data = bytearray(encode_bootstrap(t.build(), [], []))
    boot = Bootstrap.decode(bytes(data))
    dirents_offset = struct.unpack_from("<Q", data, 20 + 16 * 1)[0]
    # Entry 1 is /d/e (the root has one entry, /d has one): point it back at /d.
    assert list(boot.entries(d)) == [(b"e", d + 1)]
    struct.pack_into("<I", data, dirents_offset + 12 * 1 + 8, d)
    cyclic = Bootstrap.decode(bytes(data))
    with pytest.raises(FormatError, match="linked twice"):
        cyclic.validate()


def test_a_chunk_outside_its_blob_is_rejected_by_validate() -> None:
    blob = Digest.of(b"the blob")
    ref = ChunkRef(ChunkDigest.of(b"x"), blob, 10, 5, 1, Compression.RAW)
    boot = Bootstrap.decode(encode_bootstrap([ROOT], [ref], [BlobInfo(blob, 14)]))
    with pytest.raises(FormatError, match="outside its blob"):
        boot.validate()


def test_decompress_rejects_a_frame_without_its_content_size() -> None:
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(small_bootstrap())
    with pytest.raises(FormatError, match="impossible size"):
        decompress_bootstrap(frame)


def test_decompress_rejects_a_frame_claiming_more_than_the_limit() -> None:
    # A zstd frame header claiming 2**40 bytes (single segment, 8-byte content size).
    frame = struct.pack("<I", 0xFD2FB528) + bytes([0xE0]) + struct.pack("<Q", 2**40)
    frame += (1 | (5 << 3)).to_bytes(3, "little") + b"hello"
    with pytest.raises(FormatError, match="impossible size"):
        decompress_bootstrap(frame)
