"""Generate the imagefs format golden vectors (run after an *intended* format change).

    .venv/bin/python -m tests.unit.imagefs.golden.make_golden

writes ``blob-v1.bin`` (one data blob: a zstd chunk, a raw chunk, table and footer),
``bootstrap-v1.bin`` (the bootstrap as `encode_bootstrap` returns it, before the zstd
wrapping) and ``golden.json`` (their sha256 and the decoded values a reader must see).

The tree covers every file type, binary xattrs, a hard link, symlinks (one with a non-UTF-8
name), both device kinds, a negative mtime and nanosecond mtimes. The expected nlink and
parent values are written out by hand below, not derived by the encoder.
"""

from __future__ import annotations

import hashlib
import json
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from imagefs.digest import ChunkDigest, Digest
from imagefs.format import (
    BlobChunk,
    BlobInfo,
    ChunkCodec,
    ChunkRef,
    Compression,
    InodeSpec,
    Kind,
    encode_blob_tail,
    encode_bootstrap,
)

HERE = Path(__file__).resolve().parent
BLOB_FILE = HERE / "blob-v1.bin"
BOOTSTRAP_FILE = HERE / "bootstrap-v1.bin"
JSON_FILE = HERE / "golden.json"

#: Chunk 0: text-like, so zstd (level 3) shrinks it well below 95%.
TEXT_CHUNK = b"imagefs golden vector: the quick brown fox jumps over the lazy dog.\n" * 8
#: Chunk 1: 64 bytes of hash output, which zstd cannot shrink: stored raw.
RAW_CHUNK = hashlib.sha256(b"imagefs golden raw 1").digest() + hashlib.sha256(b"raw 2").digest()

T0 = 1_700_000_000_123_456_789  # an mtime with nanoseconds
CAP = b"\x01\x00\x00\x02\x00\x04\x00\x00" + bytes(12)  # a binary security.capability value

# Inode index -> what a reader must see that the encoder derives (nlink, parent index).
EXPECTED_LINKS: dict[int, tuple[int, int]] = {
    0: (5, 0),  # /         2 + three subdirectories
    1: (2, 0),  # /bin
    2: (2, 0),  # /dev
    3: (2, 0),  # /etc
    4: (1, 0),  # /hello.txt
    5: (2, 1),  # /bin/tool, hard-linked as /etc/tool-link: first named in /bin
    6: (1, 1),  # /bin/sh -> tool
    7: (1, 2),  # /dev/null
    8: (1, 2),  # /dev/sda
    9: (1, 2),  # /dev/fifo
    10: (1, 2),  # /dev/sock
    11: (1, 3),  # /etc/empty
    12: (1, 3),  # /etc/caf\xe9 -> ../hello.txt
}

PATHS: dict[int, bytes] = {
    0: b"",
    1: b"bin",
    2: b"dev",
    3: b"etc",
    4: b"hello.txt",
    5: b"bin/tool",
    6: b"bin/sh",
    7: b"dev/null",
    8: b"dev/sda",
    9: b"dev/fifo",
    10: b"dev/sock",
    11: b"etc/empty",
    12: b"etc/caf\xe9",
}
HARD_LINKS = {b"etc/tool-link": 5}
PREFETCH = (5, 4)


@dataclass(frozen=True)
class Golden:
    blob: bytes
    bootstrap: bytes  # raw, before the zstd wrapping
    blob_digest: Digest
    blob_chunks: tuple[BlobChunk, ...]
    chunks: tuple[ChunkRef, ...]
    inodes: tuple[InodeSpec, ...]


def inode_specs(chunk_sizes: tuple[int, int]) -> tuple[InodeSpec, ...]:
    """The fixed tree; inode 0 is the root. `chunk_sizes` are those of chunks 0 and 1."""
    d, r = chunk_sizes
    return (
        InodeSpec(
            Kind.DIR,
            0o755,
            0,
            0,
            T0,
            entries=((b"bin", 1), (b"dev", 2), (b"etc", 3), (b"hello.txt", 4)),
        ),
        InodeSpec(Kind.DIR, 0o755, 0, 0, T0 + 1, entries=((b"sh", 6), (b"tool", 5))),
        InodeSpec(
            Kind.DIR,
            0o755,
            0,
            0,
            T0 + 2,
            entries=((b"fifo", 9), (b"null", 7), (b"sda", 8), (b"sock", 10)),
        ),
        InodeSpec(
            Kind.DIR,
            0o1777,
            0,
            0,
            T0 + 3,
            entries=((b"caf\xe9", 12), (b"empty", 11), (b"tool-link", 5)),
            xattrs=((b"trusted.overlay.opaque", b"y"), (b"user.comment", b"bar\x00\xffbaz")),
        ),
        InodeSpec(
            Kind.REG,
            0o644,
            1000,
            1000,
            T0 + 4,
            size=d,
            chunks=(0,),
            xattrs=((b"security.capability", CAP), (b"user.mime", b"text/plain")),
        ),
        InodeSpec(Kind.REG, 0o4755, 0, 0, T0 + 5, size=d + r + d, chunks=(0, 1, 0)),
        InodeSpec(Kind.LNK, 0o777, 0, 0, T0 + 6, target=b"tool"),
        InodeSpec(Kind.CHR, 0o666, 0, 0, T0 + 7, rdev_major=1, rdev_minor=3),
        InodeSpec(Kind.BLK, 0o660, 0, 6, T0 + 8, rdev_major=8, rdev_minor=0),
        InodeSpec(Kind.FIFO, 0o644, 0, 0, -1_500_000_000),  # before 1970, with nanoseconds
        InodeSpec(Kind.SOCK, 0o755, 65534, 65534, 0),
        InodeSpec(Kind.REG, 0o600, 0, 0, T0 + 11),  # empty file: no chunks
        InodeSpec(Kind.LNK, 0o777, 0, 0, T0 + 12, target=b"../hello.txt"),
    )


def build(zstd_frame: bytes | None = None) -> Golden:
    """Encode the fixed tree. `zstd_frame` replaces the freshly compressed text chunk (the
    golden test passes the stored one, so the rest is checked exactly on any zstd version)."""
    codec = ChunkCodec()
    compression, frame = codec.encode(TEXT_CHUNK)
    if compression is not Compression.ZSTD:
        raise AssertionError("the text chunk must compress")
    if zstd_frame is not None:
        frame = zstd_frame
    raw_compression, raw = codec.encode(RAW_CHUNK)
    if raw_compression is not Compression.RAW:
        raise AssertionError("the raw chunk must not compress")
    blob_chunks = (
        BlobChunk(ChunkDigest.of(TEXT_CHUNK), 0, len(frame), len(TEXT_CHUNK), Compression.ZSTD),
        BlobChunk(ChunkDigest.of(RAW_CHUNK), len(frame), len(raw), len(raw), Compression.RAW),
    )
    data = frame + raw
    blob = data + encode_blob_tail(blob_chunks, len(data))
    blob_digest = Digest.of(blob)
    chunks = tuple(
        ChunkRef(c.digest, blob_digest, c.offset, c.stored_size, c.size, c.compression)
        for c in blob_chunks
    )
    inodes = inode_specs((len(TEXT_CHUNK), len(RAW_CHUNK)))
    bootstrap = encode_bootstrap(
        inodes, chunks, [BlobInfo(blob_digest, len(blob))], prefetch=PREFETCH
    )
    return Golden(blob, bootstrap, blob_digest, blob_chunks, chunks, inodes)


def _content(spec: InodeSpec) -> bytes:
    parts = {0: TEXT_CHUNK, 1: RAW_CHUNK}
    return b"".join(parts[c] for c in spec.chunks)


def expected(g: Golden) -> dict[str, Any]:
    """What golden.json records: digests of the files and every decoded value."""
    inodes = []
    for index, spec in enumerate(g.inodes):
        nlink, parent = EXPECTED_LINKS[index]
        size = {Kind.REG: spec.size, Kind.LNK: len(spec.target)}.get(spec.kind, 0)
        node: dict[str, Any] = {
            "index": index,
            "path_hex": PATHS[index].hex(),
            "mode": int(spec.kind) | spec.mode,
            "type": stat.filemode(int(spec.kind) | spec.mode)[0],
            "uid": spec.uid,
            "gid": spec.gid,
            "nlink": nlink,
            "size": size,
            "mtime_ns": spec.mtime_ns,
            "rdev": [spec.rdev_major, spec.rdev_minor],
            "parent": parent,
            "xattrs_hex": [[k.hex(), v.hex()] for k, v in spec.xattrs],
        }
        if spec.kind is Kind.DIR:
            node["entries_hex"] = [[name.hex(), child] for name, child in spec.entries]
        if spec.kind is Kind.LNK:
            node["target_hex"] = spec.target.hex()
        if spec.kind is Kind.REG:
            offsets, at = [], 0
            for c in spec.chunks:
                offsets.append([at, c])
                at += g.chunks[c].size
            node["chunks"] = offsets  # [file offset, chunk index]
            node["content_sha256"] = hashlib.sha256(_content(spec)).hexdigest()
        inodes.append(node)
    return {
        "comment": "generated by make_golden.py; regenerate only for an intended format change",
        "zstandard_version": zstandard.__version__,
        "libzstd_version": ".".join(map(str, zstandard.ZSTD_VERSION)),
        "blob": {
            "file": BLOB_FILE.name,
            "sha256": hashlib.sha256(g.blob).hexdigest(),
            "size": len(g.blob),
            "table_offset": g.blob_chunks[-1].offset + g.blob_chunks[-1].stored_size,
            "chunks": [
                {
                    "digest": str(c.digest),
                    "offset": c.offset,
                    "stored_size": c.stored_size,
                    "size": c.size,
                    "compression": c.compression.name.lower(),
                }
                for c in g.blob_chunks
            ],
        },
        "bootstrap": {
            "file": BOOTSTRAP_FILE.name,
            "sha256": hashlib.sha256(g.bootstrap).hexdigest(),
            "size": len(g.bootstrap),
            "blobs": [[str(g.blob_digest), len(g.blob)]],
            "prefetch": list(PREFETCH),
            "hard_links_hex": {k.hex(): v for k, v in HARD_LINKS.items()},
            "inodes": inodes,
        },
    }


def render(doc: dict[str, Any]) -> str:
    """golden.json text: indented, with one line per inode so diffs stay readable."""
    inodes = doc["bootstrap"]["inodes"]
    text = json.dumps({**doc, "bootstrap": {**doc["bootstrap"], "inodes": "@"}}, indent=1)
    lines = ",\n   ".join(json.dumps(n, separators=(",", ":")) for n in inodes)
    return text.replace('"inodes": "@"', f'"inodes": [\n   {lines}\n  ]') + "\n"


def main() -> None:
    g = build()
    BLOB_FILE.write_bytes(g.blob)
    BOOTSTRAP_FILE.write_bytes(g.bootstrap)
    JSON_FILE.write_text(render(expected(g)))
    print(f"{BLOB_FILE.name}: {len(g.blob)} bytes; {BOOTSTRAP_FILE.name}: {len(g.bootstrap)} bytes")


if __name__ == "__main__":
    main()
