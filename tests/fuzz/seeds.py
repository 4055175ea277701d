"""Valid seed inputs for the fuzz targets (built from the real builder), the seed corpus on
disk (`tests/fuzz/corpus/<target>/`) and the per-target drivers that exercise a decoder on
one input, shared by the hypothesis tests and the optional atheris harness.

Write the corpus anew with `python -m tests.fuzz.seeds` (small files, well under 64 KiB)."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path

from builder.blobs import MemoryBlobSink
from builder.build import build_image
from builder.sources import MemorySource, TarLayer
from builder.tarlayer import read_layer
from imagefs.config import Config
from imagefs.digest import Digest
from imagefs.errors import ImagefsError
from imagefs.format import (
    BLOB_FOOTER_SIZE,
    Bootstrap,
    decode_blob_footer,
    decode_blob_table,
    decompress_bootstrap,
    load_bootstrap,
    parse_imagefs_manifest,
)
from imagefs.oci import MEDIA_TYPE_OCI_MANIFEST, Descriptor, Index, Manifest, parse_json
from tests.support.layers import LayerBuilder
from tests.support.oci import Compression

CORPUS = Path(__file__).resolve().parent / "corpus"
TARGETS = ("bootstrap", "bootstrap-raw", "blob", "layer", "manifest", "index")
# caps that keep one example's walk over a (hostile) bootstrap or layer short
MAX_WALK = 2_000
MAX_MEMBER_BYTES = 1 << 20


# ---------------------------------------------------------------------------------------------
# seeds


def _layers() -> list[LayerBuilder]:
    one = (
        LayerBuilder("pax")
        .dirs("etc", "usr/bin")
        .file("etc/hosts", b"127.0.0.1 localhost\n" * 3, xattrs={"user.note": b"\x00\xffhi"})
        .file("usr/bin/tool", bytes(range(256)) * 40, mode=0o4755, uid=1000, gid=1000)
        .file("empty", b"")
        .symlink("usr/bin/alias", "tool")
        .hardlink("usr/bin/again", "usr/bin/tool")
        .chardev("dev-null", 1, 3)
        .fifo("pipe")
    )
    two = LayerBuilder("gnu").dir("etc").file("etc/motd", b"hello\n").whiteout("pipe")
    return [one, two]


@functools.cache
def layer_seeds() -> tuple[tuple[str, bytes], ...]:
    """(media type, blob) of real layers: pax and GNU tars, gzip / zstd / uncompressed."""
    out = []
    compressions: tuple[Compression, ...] = ("gzip", "zstd", "none")
    for builder in _layers():
        for compression in compressions:
            blob = builder.blob(compression=compression)
            out.append((blob.media_type, blob.data))
    return tuple(out)


@functools.cache
def image_seeds() -> tuple[bytes, bytes, tuple[bytes, ...], bytes]:
    """(stored bootstrap, raw bootstrap, data blobs, manifest) of a real conversion."""
    blobs = [b.blob(compression="gzip") for b in _layers()]
    layers = [
        TarLayer(
            name=f"layer {i + 1}",
            open_raw=functools.partial(io.BytesIO, b.data),
            media_type=b.media_type,
            size=len(b.data),
            digest=Digest.parse(b.digest),
        )
        for i, b in enumerate(blobs)
    ]
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [b.diff_id for b in blobs]}})
    subject = Descriptor(MEDIA_TYPE_OCI_MANIFEST, Digest.of(b"source manifest"), 15)
    sink = MemoryBlobSink()
    cfg = Config(min_chunk_bytes=256, avg_chunk_bytes=1024, max_chunk_bytes=4096)
    image = build_image(MemorySource(config.encode(), layers, subject), sink, cfg)
    stored = image.bootstrap_bytes
    data = tuple(sink.blobs[d.digest] for d in image.blobs)
    return stored, decompress_bootstrap(stored), data, image.manifest_bytes


def shared_runs_bootstrap(dirs: int, files: int) -> bytes:
    """A raw bootstrap whose `dirs` subdirectories all claim the same run of `files`
    directory entries (a valid tree re-pointed by hand): O(dirs x files) for a validate()
    that does not check the runs are disjoint; ~6 s at 1000 x 1000 before the fix."""
    import struct

    from imagefs.format import _HEADER, _INODE, _SECTION, InodeSpec, Kind, Section, encode_bootstrap

    entries = [(b"d%06d" % i, 1 + i) for i in range(dirs)]
    entries += [(b"f%06d" % i, 1 + dirs + i) for i in range(files)]
    inodes = [InodeSpec(Kind.DIR, 0o755, 0, 0, 0, entries=tuple(entries))]
    inodes += [InodeSpec(Kind.DIR, 0o755, 0, 0, 0) for _ in range(dirs)]
    inodes += [InodeSpec(Kind.REG, 0o644, 0, 0, 0) for _ in range(files)]
    data = bytearray(encode_bootstrap(inodes, [], []))
    at = struct.unpack_from("<Q", data, _HEADER.size + Section.INODES * _SECTION.size)[0]
    for i in range(1, dirs + 1):  # the (first, count) extent of each subdirectory
        struct.pack_into("<II", data, at + i * _INODE.size + 44, dirs, files)
    return bytes(data)


def index_seed() -> bytes:
    manifest = image_seeds()[3]
    desc = Descriptor(MEDIA_TYPE_OCI_MANIFEST, Digest.of(manifest), len(manifest))
    doc = {
        "schemaVersion": 2,
        "manifests": [
            {**desc.to_json(), "platform": {"os": "linux", "architecture": "amd64"}},
            {**desc.to_json(), "annotations": {"org.opencontainers.image.ref.name": "v1"}},
        ],
    }
    return json.dumps(doc).encode()


def fresh_seeds(target: str) -> list[bytes]:
    """Valid inputs for a target, built now (layers carry their media type in a prefix)."""
    stored, raw, blobs, manifest = image_seeds()
    if target == "bootstrap":
        return [stored]
    if target == "bootstrap-raw":
        return [raw]
    if target == "blob":
        return list(blobs)
    if target == "layer":
        return [encode_layer_input(mt, data) for mt, data in layer_seeds()]
    if target == "manifest":
        return [manifest]
    if target == "index":
        return [index_seed()]
    raise ValueError(target)


def corpus_inputs(target: str) -> list[bytes]:
    folder = CORPUS / target
    if not folder.is_dir():
        return []
    return [p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()]


def write_corpus() -> None:
    """Write the valid seeds of every target (the crash reproducers beside them are kept)."""
    for target in TARGETS:
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(fresh_seeds(target)):
            if target in ("layer", "blob") and len(data) > 8192:
                continue
            (folder / f"seed-{i}").write_bytes(data)


# ---------------------------------------------------------------------------------------------
# layer inputs: "<media type or empty>\n<blob>"


def encode_layer_input(media_type: str | None, blob: bytes) -> bytes:
    return (media_type or "").encode() + b"\n" + blob


def decode_layer_input(data: bytes) -> tuple[str | None, bytes]:
    head, sep, blob = data.partition(b"\n")
    if not sep:
        return None, data
    return head.decode("utf-8", "replace") or None, blob


# ---------------------------------------------------------------------------------------------
# drivers: run one decoder over one input, following every accessor; only ImagefsError may
# escape (the callers check the type)


def _exercise_bootstrap(boot: Bootstrap) -> None:
    def attempt(fn: Callable[..., object], *args: object) -> None:
        with contextlib.suppress(ImagefsError):
            fn(*args)

    def walk(items: Iterable[object]) -> None:
        for _ in zip(range(MAX_WALK), items, strict=False):
            pass

    attempt(boot.validate)
    attempt(walk, boot.chunks())
    for index in range(min(boot.inode_count, MAX_WALK)):
        attempt(boot.inode, index)
        attempt(boot.xattrs, index)
        attempt(boot.symlink_target, index)
        attempt(walk, boot.entries(index))
        attempt(boot.lookup, index, b"etc")
        attempt(boot.lookup, index, b"\xff" * 3)
        attempt(walk, boot.file_chunks(index))
        attempt(walk, boot.file_chunks(index, 1000, 5000))
    for bad in (-1, boot.inode_count, 1 << 40):
        attempt(boot.inode, bad)
        attempt(boot.chunk, bad)


def drive_bootstrap(data: bytes) -> None:
    """A stored (zstd) bootstrap, as a mount fetches it."""
    _exercise_bootstrap(load_bootstrap(data))


def drive_bootstrap_raw(data: bytes) -> None:
    """An uncompressed bootstrap (most mutations of the zstd frame end in its checksum)."""
    _exercise_bootstrap(Bootstrap.decode(data))


def drive_blob(data: bytes) -> None:
    """A data blob's footer and chunk table, read as the chunk source reads them."""
    footer = decode_blob_footer(data[-BLOB_FOOTER_SIZE:], len(data))
    table_end = len(data) - BLOB_FOOTER_SIZE
    table = data[table_end - footer.table_size : table_end]
    assert footer.table_size <= table_end, "footer accepted a table larger than the blob"
    decode_blob_table(table, footer)


def drive_layer(data: bytes) -> None:
    """A layer blob through `read_layer`, reading every member's data."""
    media_type, blob = decode_layer_input(data)
    digest = Digest.of(blob) if len(blob) % 2 else None
    buf = bytearray(1 << 16)
    for member in read_layer(io.BytesIO(blob), "fuzz layer", media_type=media_type, digest=digest):
        if member.data is None:
            continue
        total = 0
        while total <= MAX_MEMBER_BYTES:
            n = member.data.readinto(buf)
            if not n:
                break
            total += n


def drive_manifest(data: bytes) -> None:
    manifest = Manifest.parse(data)
    manifest.encode()
    parse_imagefs_manifest(manifest)


def drive_index(data: bytes) -> None:
    Index.parse(data).encode()
    doc = parse_json(data, "fuzz document")
    for value in doc.values():
        if isinstance(value, dict):
            Descriptor.parse(value).to_json()
        elif isinstance(value, list):
            for item in value[:64]:
                Descriptor.parse(item).to_json()


DRIVERS: dict[str, Callable[[bytes], None]] = {
    "bootstrap": drive_bootstrap,
    "bootstrap-raw": drive_bootstrap_raw,
    "blob": drive_blob,
    "layer": drive_layer,
    "manifest": drive_manifest,
    "index": drive_index,
}


def tar_members(data: bytes) -> list[tarfile.TarInfo]:
    """Header offsets are what the tar-aware mutations aim at (parsed with tarfile)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return tar.getmembers()


if __name__ == "__main__":
    os.chdir(Path(__file__).resolve().parents[2])
    write_corpus()
