"""Golden vectors: the fixed tree of golden/make_golden.py must encode to the checked-in
bytes, and the checked-in bytes must decode to the values in golden.json.

A failure here means the byte format changed. If that was intended, bump the format
version as FORMAT.md says and regenerate with
``.venv/bin/python -m tests.unit.imagefs.golden.make_golden``.

zstd output may differ between zstandard/libzstd versions, so the blob's zstd frame is
checked by decompressing it; everything else (raw chunk, chunk table, footer, the raw
bootstrap) is checked byte for byte on any version.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

import pytest
import zstandard

from imagefs.chunks import MemoryBlobReader, ReadStats, build_chunk_source, iter_blob_chunks
from imagefs.digest import ChunkDigest, Digest
from imagefs.format import (
    BLOB_FOOTER_SIZE,
    Bootstrap,
    ChunkCodec,
    Compression,
    compress_bootstrap,
    decode_blob_footer,
    decode_blob_table,
    load_bootstrap,
)
from imagefs.view import FileSystemView
from tests.unit.imagefs.golden import make_golden

GOLDEN: dict[str, Any] = json.loads(make_golden.JSON_FILE.read_text())
BLOB = make_golden.BLOB_FILE.read_bytes()
BOOTSTRAP = make_golden.BOOTSTRAP_FILE.read_bytes()
BLOB_JSON = GOLDEN["blob"]
BOOT_JSON = GOLDEN["bootstrap"]
INODES = BOOT_JSON["inodes"]


def stored_frame() -> bytes:
    first = BLOB_JSON["chunks"][0]
    assert first["compression"] == "zstd"
    return BLOB[first["offset"] : first["offset"] + first["stored_size"]]


# --------------------------------------------------------------------------- the files


def test_golden_files_match_their_recorded_sha256_and_stay_small() -> None:
    assert hashlib.sha256(BLOB).hexdigest() == BLOB_JSON["sha256"]
    assert hashlib.sha256(BOOTSTRAP).hexdigest() == BOOT_JSON["sha256"]
    assert len(BLOB) == BLOB_JSON["size"] < 4096
    assert len(BOOTSTRAP) == BOOT_JSON["size"] < 4096


def test_stored_zstd_frame_decompresses_to_the_text_chunk() -> None:
    frame = stored_frame()
    assert zstandard.get_frame_parameters(frame).content_size == len(make_golden.TEXT_CHUNK)
    assert zstandard.ZstdDecompressor().decompress(frame) == make_golden.TEXT_CHUNK


# --------------------------------------------------------------------------- encoding


def test_encoding_the_fixed_tree_reproduces_the_golden_bytes() -> None:
    g = make_golden.build(zstd_frame=stored_frame())
    assert g.blob == BLOB  # raw chunk, chunk table and footer, byte for byte
    assert g.bootstrap == BOOTSTRAP


def test_encoding_is_deterministic() -> None:
    a, b = make_golden.build(), make_golden.build()
    assert a.blob == b.blob
    assert a.bootstrap == b.bootstrap


def test_zstd_frame_reproduces_with_the_recorded_zstd_version() -> None:
    if zstandard.__version__ != GOLDEN["zstandard_version"]:
        pytest.skip(f"golden zstd frame was made by zstandard {GOLDEN['zstandard_version']}")
    compression, frame = ChunkCodec().encode(make_golden.TEXT_CHUNK)
    assert compression is Compression.ZSTD
    assert frame == stored_frame()
    assert make_golden.build().blob == BLOB


def test_compressed_bootstrap_round_trips() -> None:
    stored = compress_bootstrap(BOOTSTRAP)
    assert zstandard.get_frame_parameters(stored).content_size == len(BOOTSTRAP)
    assert load_bootstrap(stored).data == BOOTSTRAP


# --------------------------------------------------------------------------- blob decoding


def test_blob_footer_and_table_decode_to_the_expected_chunks() -> None:
    footer = decode_blob_footer(BLOB[-BLOB_FOOTER_SIZE:], len(BLOB))
    assert footer.table_offset == BLOB_JSON["table_offset"]
    assert footer.chunk_count == len(BLOB_JSON["chunks"])
    table = decode_blob_table(
        BLOB[footer.table_offset : footer.table_offset + footer.table_size], footer
    )
    got = [
        {
            "digest": str(c.digest),
            "offset": c.offset,
            "stored_size": c.stored_size,
            "size": c.size,
            "compression": c.compression.name.lower(),
        }
        for c in table
    ]
    assert got == BLOB_JSON["chunks"]
    blob_digest = Digest.of(BLOB)
    reader = MemoryBlobReader({blob_digest: BLOB})
    assert list(iter_blob_chunks(reader, blob_digest, len(BLOB))) == table
    codec = ChunkCodec()
    contents = [codec.decode(BLOB[c.offset : c.offset + c.stored_size], c) for c in table]
    assert contents == [make_golden.TEXT_CHUNK, make_golden.RAW_CHUNK]


def test_blob_layout_by_hand_matches_format_md() -> None:
    """Decode the footer and table with the offsets FORMAT.md documents, not the codec."""
    magic, major, minor, flags, table_offset, count, reserved = struct.unpack_from(
        "<8sHHIQII", BLOB, len(BLOB) - 32
    )
    assert (magic, major, minor, flags, reserved) == (b"IFSBLOB\x00", 1, 0, 0, 0)
    assert table_offset + 56 * count + 32 == len(BLOB)
    for i, want in enumerate(BLOB_JSON["chunks"]):
        rec = BLOB[table_offset + 56 * i : table_offset + 56 * (i + 1)]
        assert "blake3:" + rec[0:32].hex() == want["digest"]
        assert struct.unpack_from("<Q", rec, 32)[0] == want["offset"]
        assert struct.unpack_from("<I", rec, 40)[0] == want["stored_size"]
        assert struct.unpack_from("<I", rec, 44)[0] == want["size"]
        assert struct.unpack_from("<I", rec, 48)[0] == {"raw": 0, "zstd": 1}[want["compression"]]
        assert struct.unpack_from("<I", rec, 52)[0] == 0


# --------------------------------------------------------------------------- bootstrap decoding


def decoded_inode(boot: Bootstrap, index: int) -> dict[str, Any]:
    node = boot.inode(index)
    out: dict[str, Any] = {
        "mode": node.mode,
        "uid": node.uid,
        "gid": node.gid,
        "nlink": node.nlink,
        "size": node.size,
        "mtime_ns": node.mtime_ns,
        "rdev": [node.rdev_major, node.rdev_minor],
        "parent": node.parent,
        "xattrs_hex": [[k.hex(), v.hex()] for k, v in boot.xattrs(index)],
    }
    if node.is_dir:
        out["entries_hex"] = [[name.hex(), child] for name, child in boot.entries(index)]
    if node.is_symlink:
        out["target_hex"] = boot.symlink_target(index).hex()
    if node.is_reg:
        chunk_index = {c.digest: i for i, c in enumerate(boot.chunks())}
        out["chunks"] = [[at, chunk_index[ref.digest]] for at, ref in boot.file_chunks(index)]
    return out


@pytest.mark.parametrize("index", range(len(INODES)))
def test_bootstrap_decodes_every_inode_field(index: int) -> None:
    boot = Bootstrap.decode(BOOTSTRAP)
    want = {
        k: v
        for k, v in INODES[index].items()
        if k not in ("index", "path_hex", "type", "content_sha256")
    }
    assert decoded_inode(boot, index) == want


def test_bootstrap_tables_decode() -> None:
    boot = Bootstrap.decode(BOOTSTRAP)
    boot.validate()
    assert boot.minor == 0
    assert boot.inode_count == len(INODES)
    assert [[str(b.digest), b.size] for b in boot.blobs] == BOOT_JSON["blobs"]
    assert list(boot.prefetch) == BOOT_JSON["prefetch"]
    chunks = list(boot.chunks())
    assert [str(c.digest) for c in chunks] == [c["digest"] for c in BLOB_JSON["chunks"]]
    assert {c.blob for c in chunks} == {Digest.parse(BOOT_JSON["blobs"][0][0])}
    assert [(c.offset, c.stored_size, c.size) for c in chunks] == [
        (c["offset"], c["stored_size"], c["size"]) for c in BLOB_JSON["chunks"]
    ]


def test_bootstrap_layout_by_hand_matches_format_md() -> None:
    """Header, section table and inode records at the offsets FORMAT.md documents."""
    magic, major, minor, flags, count = struct.unpack_from("<8sHHII", BOOTSTRAP, 0)
    assert (magic, major, minor, flags, count) == (b"IFSBOOT\x00", 1, 0, 0, 9)
    sections = [struct.unpack_from("<QQ", BOOTSTRAP, 20 + 16 * i) for i in range(count)]
    assert sections[0][0] == 168  # first section right after the 8-aligned header
    for offset, length in sections:
        assert offset % 8 == 0 and offset + length <= len(BOOTSTRAP)
    assert len(BOOTSTRAP) % 8 == 0
    record_sizes = [64, 12, 4, 8, 56, 40, 16, 1, 4]
    for (_, length), size in zip(sections, record_sizes, strict=True):
        assert length % size == 0
    inodes_off, inodes_len = sections[0]
    assert inodes_len == 64 * len(INODES)
    strings_off, _ = sections[7]
    for want in INODES:
        rec = BOOTSTRAP[inodes_off + 64 * want["index"] :][:64]
        mode, uid, gid, nlink = struct.unpack_from("<IIII", rec, 0)
        (size,) = struct.unpack_from("<Q", rec, 16)
        (mtime_s,) = struct.unpack_from("<q", rec, 24)
        ns, major_, minor_, a, b, _xf, xc, parent = struct.unpack_from("<8I", rec, 32)
        assert (mode, uid, gid, nlink, size) == (
            want["mode"],
            want["uid"],
            want["gid"],
            want["nlink"],
            want["size"],
        )
        assert mtime_s * 1_000_000_000 + ns == want["mtime_ns"] and 0 <= ns < 1_000_000_000
        assert [major_, minor_] == want["rdev"]
        assert xc == len(want["xattrs_hex"])
        assert parent == want["parent"]
        if want["type"] == "l":  # a, b: the target in the string heap
            target = BOOTSTRAP[strings_off + a : strings_off + a + b]
            assert target.hex() == want["target_hex"] and b == size
        elif want["type"] == "d":
            assert b == len(want["entries_hex"])
        elif want["type"] == "-":
            assert b == len(want["chunks"])
        else:
            assert (a, b) == (0, 0)


def test_golden_files_read_through_the_view() -> None:
    boot = Bootstrap.decode(BOOTSTRAP)
    reader = MemoryBlobReader({Digest.of(BLOB): BLOB})
    view = FileSystemView(boot, build_chunk_source(reader, ReadStats()))
    for want in INODES:
        path = bytes.fromhex(want["path_hex"])
        ino = view.resolve(path)
        assert ino == want["index"] + 1
        if want["type"] == "-":
            data = view.read(ino, 0, 1 << 20)
            assert hashlib.sha256(data).hexdigest() == want["content_sha256"]
    for path_hex, index in BOOT_JSON["hard_links_hex"].items():
        assert view.resolve(bytes.fromhex(path_hex)) == index + 1
    assert ChunkDigest.of(view.read(view.resolve(b"hello.txt"), 0, 10_000)) == ChunkDigest.of(
        make_golden.TEXT_CHUNK
    )
