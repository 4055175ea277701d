"""Canonical sample images: the three-layer "every entry type" image and its expectations.

Layer 1 (PAX) holds every entry type, binary xattrs and PAX long names/links; layer 2 (GNU
format) adds GNU longname/longlink entries, a base-256 uid and a first whiteout; layer 3 (PAX)
whites out, opaques, replaces, re-creates and modifies. The constants below say what the
merged tree looks like, as checked against ``umoci raw unpack`` (umoci 0.4.7):

* A hard link keeps the inode it was given: rewriting ``HL_MODIFIED_TARGET`` in layer 3
  replaces that path with a new inode, so ``HL_MODIFIED_LINK`` keeps the *old* content and
  the pair is no longer a hard-link group. Whiting out ``HL_WHITEOUT_TARGET`` leaves
  ``HL_WHITEOUT_LINK`` (old content, nlink 1). A hard link to a lower-layer file
  (``CROSS_LAYER_HARDLINK``) joins that file's inode; the link entry's own mode, owner and
  (absent) xattrs are not applied to it.
* An opaque directory keeps the entries its own layer adds (even a same-named subdirectory,
  which comes back empty of lower entries) and loses everything from layers 1 and 2.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

from tests.support.layers import LayerBuilder
from tests.support.oci import (
    Compression,
    ImageRef,
    LayerBlob,
    write_docker_archive,
    write_oci_layout,
)

SampleCompression = Literal["gzip", "zstd", "none", "mixed"]

BLOCK = 64 * 1024
#: Per-layer compressions of the "mixed" variant.
MIXED_COMPRESSIONS: tuple[Compression, ...] = ("gzip", "zstd", "none")
EVERY_ENTRY_TAG = "every-entry"

#: VFS_CAP_REVISION_2 (magic 0x02000001, effective flag set), permitted = CAP_NET_BIND_SERVICE
#: (bit 10), inheritable 0, upper words 0: 20 bytes.
CAP_NET_BIND_SERVICE = b"\x01\x00\x00\x02" + b"\x00\x04\x00\x00" + bytes(12)
XATTR_COMMENT = b"every entry type"
XATTR_TRUSTED = b"bar\x00\xffbaz"  # NUL and a non-UTF-8 byte: exercises hdrcharset=BINARY


def _rand(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _blocks(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(BLOCK) for _ in range(count)]


_A, _B, _C = _blocks(1, 3)
#: 448 KiB made of 64 KiB blocks A B A C A B A (repeats inside one file).
REPEATED_BLOCKS = _A + _B + _A + _C + _A + _B + _A
RANDOM_1MIB = _rand(42, 1024 * 1024)
IDENTICAL = b"the same content in two directories\n" * 2000
_DEDUP_BLOCKS = _blocks(7, 16)
#: 1 MiB of 16 distinct blocks (layer 1) ...
DEDUP_V1 = b"".join(_DEDUP_BLOCKS)
#: ... and its layer-3 rewrite: block 5 replaced, one block appended; 15 of 17 blocks shared.
DEDUP_V2 = b"".join([*_DEDUP_BLOCKS[:5], _rand(8, BLOCK), *_DEDUP_BLOCKS[6:], _rand(9, BLOCK)])

# Long names: a 150+ char chain of 16-char components, and a single 120-char component.
_PAX_CHAIN = "long/pax/" + "/".join(f"segment{i:02d}-abcdef" for i in range(9))
_GNU_CHAIN = "long/gnu/" + "/".join(f"segment{i:02d}-uvwxyz" for i in range(9))
PAX_LONG_FILE = _PAX_CHAIN + "/pax-long-file.txt"
GNU_LONG_FILE = _GNU_CHAIN + "/gnu-long-file.txt"
PAX_LONG_COMPONENT = "long/" + "p" * 120
GNU_LONG_COMPONENT = "long/" + "g" * 120
PAX_LONG_SYMLINK = "long/pax-symlink"
GNU_LONG_SYMLINK = "long/gnu-symlink"
PAX_LONG_SYMLINK_TARGET = PAX_LONG_FILE.removeprefix("long/")
GNU_LONG_SYMLINK_TARGET = GNU_LONG_FILE.removeprefix("long/")
PAX_LONG_HARDLINK = "long/pax-hardlink"
GNU_LONG_HARDLINK = "long/gnu-hardlink"

HARDLINK_GROUP = frozenset({"data/hl/original", "data/hl/second", "etc/hl-third"})
HL_MODIFIED_TARGET = "hl-mod/target"
HL_MODIFIED_LINK = "hl-mod/link"
HL_WHITEOUT_TARGET = "hl-wh/target"
HL_WHITEOUT_LINK = "hl-wh/link"
CROSS_LAYER_HARDLINK = "bin/ping-link"
#: Hard-link groups of the merged tree (umoci semantics, see the module docstring).
EXPECTED_HARDLINK_GROUPS = frozenset(
    {
        HARDLINK_GROUP,
        frozenset({"bin/ping", CROSS_LAYER_HARDLINK}),
        frozenset({PAX_LONG_FILE, PAX_LONG_HARDLINK}),
        frozenset({GNU_LONG_FILE, GNU_LONG_HARDLINK}),
    }
)

OPAQUE_DIR = "opaque"
#: Everything under OPAQUE_DIR after layer 3 (only layer-3 entries).
OPAQUE_EXPECTED = frozenset({"opaque/new-file", "opaque/lowerdir", "opaque/lowerdir/y"})
#: Paths of layers 1-2 that must be gone from the merged tree.
EXPECTED_ABSENT = frozenset(
    {
        "etc/remove-me",
        "olddir",
        "olddir/a",
        "olddir/sub",
        "olddir/sub/b",
        "opaque/lower1",
        "opaque/lowerdir/x",
        "opaque/from-layer2",
        "replace/dir-to-file/child",
        HL_WHITEOUT_TARGET,
    }
)
#: Regular-file contents of the merged tree worth checking by value.
EXPECTED_CONTENT: dict[str, bytes] = {
    "etc/empty": b"",
    "etc/hostname": b"imagefs\n",
    "recreate/phoenix": b"reborn in layer 3\n",
    "replace/dir-to-file": b"was a directory\n",
    "replace/file-to-dir/child": b"inside the new directory\n",
    HL_MODIFIED_TARGET: b"target, rewritten in layer 3\n",
    HL_MODIFIED_LINK: b"target, layer 1\n",
    HL_WHITEOUT_LINK: b"shared with a whited-out path\n",
    "data/blocks.bin": REPEATED_BLOCKS,
    "data/random.bin": RANDOM_1MIB,
    "data/dedup.bin": DEDUP_V2,
    "etc/identical.txt": IDENTICAL,
    "home/identical.txt": IDENTICAL,
}
#: (kind, major, minor) of the device nodes.
EXPECTED_DEVICES = {
    "dev/null": ("chr", 1, 3),
    "dev/zero": ("chr", 1, 5),
    "dev/loop0": ("blk", 7, 0),
}
#: Permission bits (st_mode & 0o7777) worth checking.
EXPECTED_MODES = {
    "private": 0o700,
    "tmp": 0o1777,
    "bin/setuid": 0o4755,
    "bin/setgid": 0o2755,
    "bin/gnu-setuid": 0o4711,
    "dev/null": 0o666,
    "dev/fifo": 0o644,
    "opaque": 0o750,
}
EXPECTED_OWNERS = {
    "home/user": (1000, 1000),
    "home/user/notes.txt": (1000, 1000),
    "home/nobody.txt": (65534, 65534),
    "home/gnu-biguid": (3000000, 3000001),
}
EXPECTED_SYMLINKS = {
    "links/relative": "../etc/hostname",
    "links/absolute": "/etc/hostname",
    "links/dangling": "../does/not/exist",
    "links/to-dir": "../data",
    PAX_LONG_SYMLINK: PAX_LONG_SYMLINK_TARGET,
    GNU_LONG_SYMLINK: GNU_LONG_SYMLINK_TARGET,
}
EXPECTED_XATTRS: dict[str, dict[str, bytes]] = {
    "bin/ping": {"security.capability": CAP_NET_BIND_SERVICE},
    CROSS_LAYER_HARDLINK: {"security.capability": CAP_NET_BIND_SERVICE},
    "etc/xattrs.txt": {"user.comment": XATTR_COMMENT, "trusted.foo": XATTR_TRUSTED},
    "xattr-dir": {"user.comment": b"on a directory"},
}


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _layer1() -> LayerBuilder:
    b = LayerBuilder("pax")
    b.dirs("bin", "etc", "data", "data/hl", "home", "dev", "links", "long")
    b.dirs("olddir", "olddir/sub", "opaque", "opaque/lowerdir", "replace", "recreate")
    b.dirs("replace/dir-to-file", "hl-mod", "hl-wh")
    b.dir("private", mode=0o700)
    b.dir("tmp", mode=0o1777)
    b.dir("home/user", uid=1000, gid=1000)
    b.dir("xattr-dir", xattrs=EXPECTED_XATTRS["xattr-dir"])

    b.file("etc/empty", b"")
    b.file("etc/hostname", b"imagefs\n")
    b.file("data/blocks.bin", REPEATED_BLOCKS)
    b.file("data/random.bin", RANDOM_1MIB)
    b.file("data/dedup.bin", DEDUP_V1)
    b.file("etc/identical.txt", IDENTICAL)
    b.file("home/identical.txt", IDENTICAL, mode=0o600)
    b.file("bin/setuid", b"#!/bin/sh\necho setuid\n", mode=0o4755)
    b.file("bin/setgid", b"#!/bin/sh\necho setgid\n", mode=0o2755)
    b.file("bin/ping", b"\x7fELF not really\n", mode=0o755, xattrs=EXPECTED_XATTRS["bin/ping"])
    b.file("etc/xattrs.txt", b"has xattrs\n", xattrs=EXPECTED_XATTRS["etc/xattrs.txt"])
    b.file("home/user/notes.txt", b"user's notes\n", mode=0o640, uid=1000, gid=1000)
    b.file("home/nobody.txt", b"nobody\n", uid=65534, gid=65534)

    for path, target in EXPECTED_SYMLINKS.items():
        if path not in (PAX_LONG_SYMLINK, GNU_LONG_SYMLINK):
            b.symlink(path, target)

    b.file("data/hl/original", b"three names, one inode\n", mode=0o640)
    b.hardlink("data/hl/second", "data/hl/original")
    b.hardlink("etc/hl-third", "data/hl/original")

    b.chardev("dev/null", 1, 3, mode=0o666)
    b.blockdev("dev/loop0", 7, 0, mode=0o660, gid=6)
    b.fifo("dev/fifo", mode=0o644)

    b.dirs(*[p for p in _parents(PAX_LONG_FILE) if p != "long"])
    b.file(PAX_LONG_FILE, b"a long PAX path\n")
    b.file(PAX_LONG_COMPONENT, b"a 120-char PAX name\n")
    b.symlink(PAX_LONG_SYMLINK, PAX_LONG_SYMLINK_TARGET)
    b.hardlink(PAX_LONG_HARDLINK, PAX_LONG_FILE)

    # Material for layers 2 and 3.
    b.file("etc/remove-me", b"whited out in layer 3\n")
    b.file("olddir/a", b"a\n")
    b.file("olddir/sub/b", b"b\n")
    b.file("opaque/lower1", b"hidden by the opaque marker\n")
    b.file("opaque/lowerdir/x", b"hidden too\n")
    b.file("replace/file-to-dir", b"becomes a directory\n")
    b.file("replace/dir-to-file/child", b"goes with its directory\n")
    b.file("recreate/phoenix", b"layer 1 version\n")
    b.file(HL_MODIFIED_TARGET, b"target, layer 1\n")
    b.hardlink(HL_MODIFIED_LINK, HL_MODIFIED_TARGET)
    b.file(HL_WHITEOUT_TARGET, b"shared with a whited-out path\n")
    b.hardlink(HL_WHITEOUT_LINK, HL_WHITEOUT_TARGET)
    return b


def _layer2() -> LayerBuilder:
    b = LayerBuilder("gnu")
    b.dirs(*[p for p in _parents(GNU_LONG_FILE) if p != "long"])
    b.file(GNU_LONG_FILE, b"a long GNU path\n")
    b.file(GNU_LONG_COMPONENT, b"a 120-char GNU name\n")
    b.symlink(GNU_LONG_SYMLINK, GNU_LONG_SYMLINK_TARGET)
    b.hardlink(GNU_LONG_HARDLINK, GNU_LONG_FILE)
    b.file("bin/gnu-setuid", b"#!/bin/sh\n", mode=0o4711)
    b.file("home/gnu-biguid", b"uid beyond 7 octal digits\n", uid=3000000, gid=3000001)
    b.chardev("dev/zero", 1, 5, mode=0o666)
    b.hardlink(CROSS_LAYER_HARDLINK, "bin/ping")  # target (with xattrs) is in layer 1
    b.file("opaque/from-layer2", b"also hidden by layer 3's opaque marker\n")
    b.whiteout("recreate/phoenix")
    return b


def _layer3() -> LayerBuilder:
    b = LayerBuilder("pax")
    # Parents of changed entries, as `docker build` diffs include them.
    b.dirs("etc", "data", "replace", "recreate", "hl-mod", "hl-wh")
    b.whiteout("etc/remove-me")
    b.whiteout("olddir")
    b.dir("opaque", mode=0o750)
    b.opaque("opaque")
    b.file("opaque/new-file", b"added with the opaque marker\n")
    b.dir("opaque/lowerdir")
    b.file("opaque/lowerdir/y", b"new entry in a re-created directory\n")
    b.dir("replace/file-to-dir", mode=0o755)
    b.file("replace/file-to-dir/child", b"inside the new directory\n")
    b.file("replace/dir-to-file", b"was a directory\n")
    b.file("recreate/phoenix", b"reborn in layer 3\n")
    b.file(HL_MODIFIED_TARGET, b"target, rewritten in layer 3\n")
    b.whiteout(HL_WHITEOUT_TARGET)
    b.file("data/dedup.bin", DEDUP_V2)
    return b


def every_entry_type_layers() -> list[LayerBuilder]:
    """The three layer builders (layer 1 PAX, layer 2 GNU, layer 3 PAX), lowest first."""
    return [_layer1(), _layer2(), _layer3()]


def every_entry_type_blobs(compression: SampleCompression = "gzip") -> list[LayerBlob]:
    """The three layers as blobs; ``"mixed"`` uses gzip, zstd and none in that order."""
    blobs = []
    for i, builder in enumerate(every_entry_type_layers()):
        comp = MIXED_COMPRESSIONS[i] if compression == "mixed" else compression
        blobs.append(builder.blob(compression=comp))
    return blobs


def write_every_entry_type_image(
    root: Path, *, compression: SampleCompression = "gzip", tag: str = EVERY_ENTRY_TAG
) -> tuple[Path, str]:
    """Write the sample as an OCI layout at *root* (added to any layout already there).

    Returns ``(layout path, tag)``. umoci 0.4.7 cannot read zstd layers; ``umoci_raw_unpack``
    in ``tests.support.trees`` transcodes them to gzip first (same diff_ids, same tree)."""
    ref = write_every_entry_type_ref(root, compression=compression, tag=tag)
    return ref.layout, ref.tag


def write_every_entry_type_ref(
    root: Path, *, compression: SampleCompression = "gzip", tag: str = EVERY_ENTRY_TAG
) -> ImageRef:
    """Like :func:`write_every_entry_type_image` but returns the full :class:`ImageRef`."""
    return write_oci_layout(
        root,
        every_entry_type_blobs(compression),
        tag=tag,
        config_extra={"config": {"Cmd": ["/bin/ping"]}},
    )


def write_every_entry_type_docker_archive(
    path: Path, *, repo_tag: str = "imagefs/every-entry:latest"
) -> Path:
    """Write the sample as a classic ``docker save`` tarball (uncompressed layer.tar files)."""
    return write_docker_archive(
        path,
        every_entry_type_blobs("none"),
        repo_tag=repo_tag,
        config_extra={"config": {"Cmd": ["/bin/ping"]}},
    )
