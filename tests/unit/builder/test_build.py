"""Building images through the seams (MemorySource/TarLayer -> MemoryBlobSink), decoded
back with the format's decoders: the tree, contents, dedup, blob layout, determinism."""

from __future__ import annotations

import functools
import io
import json
import random

import pytest

from builder.blobs import MemoryBlobSink
from builder.build import BuiltImage, build_image
from builder.entries import Entry, EntryKind
from builder.sources import MemoryLayer, MemorySource, TarLayer
from imagefs.config import Config
from imagefs.digest import ChunkDigest, Digest
from imagefs.format import (
    ANNOTATION_SOURCE_CONFIG,
    ANNOTATION_SOURCE_DIFF_IDS,
    MEDIA_TYPE_BLOB,
    MEDIA_TYPE_BOOTSTRAP,
)
from imagefs.oci import MEDIA_TYPE_OCI_MANIFEST, Descriptor
from tests.support import samples
from tests.support.converted import ConvertedImage

K = EntryKind
CONFIG = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"diff_ids": []}}).encode()


def rand(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def sample_source(compression: samples.SampleCompression = "mixed") -> MemorySource:
    blobs = samples.every_entry_type_blobs(compression)
    layers = [
        TarLayer(
            name=f"layer {i + 1}",
            open_raw=functools.partial(io.BytesIO, b.data),
            media_type=b.media_type,
            size=b.size,
            digest=Digest.parse(b.digest),
        )
        for i, b in enumerate(blobs)
    ]
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [b.diff_id for b in blobs]}})
    subject = Descriptor(MEDIA_TYPE_OCI_MANIFEST, Digest.of(b"source manifest"), 15)
    return MemorySource(config.encode(), layers, subject)


def build(source: MemorySource, **config: object) -> tuple[BuiltImage, MemoryBlobSink]:
    sink = MemoryBlobSink()
    image = build_image(source, sink, Config(**config))  # type: ignore[arg-type]
    assert image.manifest_bytes == image.manifest.encode()
    assert image.manifest_descriptor.digest == Digest.of(image.manifest_bytes)
    assert image.manifest_descriptor.digest not in sink.blobs  # the caller stores it, last
    return image, sink


def decode(image: BuiltImage, sink: MemoryBlobSink) -> ConvertedImage:
    converted = ConvertedImage.from_blobs(image.manifest, sink.blobs)
    converted.bootstrap.validate()
    converted.check_blobs()
    return converted


def file_layer(name: str, files: dict[str, bytes], tag: int = 1) -> MemoryLayer:
    return MemoryLayer(
        name, [(Entry(p.encode(), K.FILE, size=len(d), mtime_ns=tag), d) for p, d in files.items()]
    )


def test_every_entry_type_sample() -> None:
    image, sink = build(sample_source())
    img = decode(image, sink)
    snap = img.snapshot()
    for path, content in samples.EXPECTED_CONTENT.items():
        assert img.read(path) == content, path
    for path, mode in samples.EXPECTED_MODES.items():
        assert snap[path].mode == mode, path
    for path, (uid, gid) in samples.EXPECTED_OWNERS.items():
        assert (snap[path].uid, snap[path].gid) == (uid, gid), path
    for path, target in samples.EXPECTED_SYMLINKS.items():
        assert snap[path].link_target == target, path
    for path, xattrs in samples.EXPECTED_XATTRS.items():
        assert dict(snap[path].xattrs) == xattrs, path
    for path, (kind, major, minor) in samples.EXPECTED_DEVICES.items():
        assert (snap[path].kind, snap[path].rdev) == (kind, (major, minor)), path
    assert snap["dev/fifo"].kind == "fifo"
    assert not samples.EXPECTED_ABSENT & snap.keys()
    under_opaque = {p for p in snap if p.startswith(samples.OPAQUE_DIR + "/")}
    assert under_opaque == samples.OPAQUE_EXPECTED
    assert img.hardlink_groups() == samples.EXPECTED_HARDLINK_GROUPS
    assert snap["etc/hostname"].mtime == 1_700_000_000
    # manifest: blobs then bootstrap, subject and annotations from the source
    m = image.manifest
    assert [layer.media_type for layer in m.layers] == [MEDIA_TYPE_BLOB] * 3 + [
        MEDIA_TYPE_BOOTSTRAP
    ]
    assert m.subject == sample_source().subject
    src_config = sample_source().config
    assert m.annotations[ANNOTATION_SOURCE_CONFIG] == str(Digest.of(src_config))
    diff_ids = json.loads(src_config)["rootfs"]["diff_ids"]
    assert m.annotations[ANNOTATION_SOURCE_DIFF_IDS] == ",".join(diff_ids)
    config = json.loads(sink.blobs[m.config.digest])
    assert config["rootfs"]["diff_ids"] == [str(layer.digest) for layer in m.layers]


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_same_tree_whatever_the_compression(compression: samples.SampleCompression) -> None:
    mixed = decode(*build(sample_source("mixed"))).snapshot(include_root=True)
    other = decode(*build(sample_source(compression))).snapshot(include_root=True)
    assert mixed == other


def test_reproducible_across_runs_and_thread_counts() -> None:
    first, sink1 = build(sample_source(), convert_threads=1)
    second, sink2 = build(sample_source(), convert_threads=4)
    assert first.manifest_descriptor == second.manifest_descriptor
    assert sink1.blobs == sink2.blobs


def test_dedup_within_files_across_files_and_layers() -> None:
    big = rand(1, 1 << 20)
    source = MemorySource(
        CONFIG,
        [
            file_layer("l1", {"a": big, "b": big, "c": big * 3}),
            file_layer("l2", {"copy/a": big}, 2),  # adds no new chunks: no blob
            file_layer("l3", {"new": rand(2, 100_000) + big}, 3),
        ],
    )
    image, sink = build(source)
    stats = image.stats
    img = decode(image, sink)
    assert stats.blobs == len(image.blobs) == 2  # layers 1 and 3
    assert stats.bytes_in == 7 * len(big) + 100_000
    unique = {ref.digest for ref in img.bootstrap.chunks()}
    assert len(unique) == stats.chunks_unique == img.bootstrap.chunk_count
    per_copy = sum(1 for _ in img.bootstrap.file_chunks(img.paths()["a"]))
    # "c" repeats big three times: its chunks after the first copy mostly recur
    assert stats.chunks_unique < per_copy * 2 + 10
    assert stats.chunks_total > 5 * per_copy
    for path in ("a", "b", "copy/a"):
        assert img.read(path) == big
    assert img.read("c") == big * 3
    # identical files share every chunk reference
    refs = [
        [r.digest for _, r in img.bootstrap.file_chunks(img.paths()[p])] for p in ("a", "copy/a")
    ]
    assert refs[0] == refs[1]
    assert stats.bytes_stored == sum(b.size for b in image.blobs)


def test_chunk_table_in_order_of_first_occurrence() -> None:
    source = MemorySource(
        CONFIG,
        [
            file_layer("l1", {"z-first": rand(3, 300_000), "a-second": rand(4, 300_000)}),
            file_layer("l2", {"m": rand(5, 200_000) + rand(3, 300_000)}, 2),
        ],
    )
    image, sink = build(source)
    img = decode(image, sink)
    chunks = list(img.bootstrap.chunks())
    blob_order = [b.digest for b in image.blobs]
    assert [(blob_order.index(c.blob), c.offset) for c in chunks] == sorted(
        (blob_order.index(c.blob), c.offset) for c in chunks
    )
    # the first file read ("z-first", not first by name) owns chunk 0
    first = next(iter(img.bootstrap.file_chunks(img.paths()["z-first"])))[1]
    assert first == chunks[0]


def test_small_empty_and_incompressible_files() -> None:
    incompressible = rand(6, 40_000)
    source = MemorySource(
        CONFIG,
        [
            file_layer(
                "l", {"empty": b"", "tiny": b"x", "text": b"ab" * 30_000, "r": incompressible}
            )
        ],
    )
    image, sink = build(source)
    img = decode(image, sink)
    paths = img.paths()
    assert list(img.bootstrap.file_chunks(paths["empty"])) == []
    assert [r.size for _, r in img.bootstrap.file_chunks(paths["tiny"])] == [1]
    text = [r for _, r in img.bootstrap.file_chunks(paths["text"])]
    assert [r.compression.name for r in text] == ["ZSTD"]
    raw = [r for _, r in img.bootstrap.file_chunks(paths["r"])]
    assert [r.compression.name for r in raw] == ["RAW"]
    assert raw[0].digest == ChunkDigest.of(incompressible)
    assert img.read("r") == incompressible


def test_empty_image_has_only_a_bootstrap() -> None:
    image, sink = build(MemorySource(CONFIG, []))
    assert image.blobs == ()
    assert image.stats.blobs == 0
    img = decode(image, sink)
    assert img.paths() == {"": 0}
    assert image.manifest.subject is None
    assert ANNOTATION_SOURCE_DIFF_IDS not in image.manifest.annotations


def test_progress_reports_source_bytes() -> None:
    calls: list[tuple[int, int | None]] = []
    big = rand(7, 9 << 20)
    source = MemorySource(CONFIG, [file_layer("l", {"a": big, "b": b"x"})])
    build_image(source, MemoryBlobSink(), Config(), progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (len(big) + 1, len(big) + 1)
    done = [d for d, _ in calls]
    assert done == sorted(done) and len(calls) >= 2


def test_hard_links_share_one_inode() -> None:
    layer = MemoryLayer(
        "l",
        [
            (Entry(b"f", K.FILE, size=3, mode=0o640), b"abc"),
            (Entry(b"g", K.HARDLINK, link=b"f"), None),
            (Entry(b"d", K.DIR), None),
            (Entry(b"d/h", K.HARDLINK, link=b"f"), None),
        ],
    )
    image, sink = build(MemorySource(CONFIG, [layer]))
    img = decode(image, sink)
    paths = img.paths()
    assert paths["f"] == paths["g"] == paths["d/h"]
    node = img.bootstrap.inode(paths["f"])
    assert (node.nlink, node.mode & 0o7777) == (3, 0o640)
    assert img.bootstrap.inode_count == 3  # root, d, the file


def test_errors_leave_nothing_half_done() -> None:
    layer = MemoryLayer("l", [(Entry(b"link", K.HARDLINK, link=b"missing"), None)])
    sink = MemoryBlobSink()
    with pytest.raises(Exception, match="missing"):
        build_image(MemorySource(CONFIG, [layer]), sink, Config())
    assert not any(d for d in sink.blobs if sink.blobs[d].startswith(b"{"))  # no manifest
