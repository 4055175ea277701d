"""Blob sinks (in memory, OCI layout with rollback) and the data blob layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.blobs import (
    BlobSink,
    DataBlobWriter,
    LayoutBlobSink,
    MemoryBlobSink,
    SpoolingBlobSink,
)
from imagefs.digest import ChunkDigest, Digest
from imagefs.errors import TargetError
from imagefs.format import (
    BLOB_FOOTER_SIZE,
    ChunkCodec,
    decode_blob_footer,
    decode_blob_table,
)
from imagefs.oci import OciLayout
from imagefs.target import LayoutTarget


def layout_sink(tmp_path: Path) -> LayoutBlobSink:
    return LayoutBlobSink(LayoutTarget(OciLayout.create(tmp_path / "layout"), "latest"))


def read(sink: BlobSink, digest: Digest) -> bytes:
    if isinstance(sink, MemoryBlobSink):
        return sink.blobs[digest]
    if isinstance(sink, SpoolingBlobSink):
        assert isinstance(sink.target, LayoutTarget)
        return sink.target.layout.read_blob(digest)
    assert isinstance(sink, LayoutBlobSink)
    return sink.layout.read_blob(digest)


@pytest.fixture(params=["memory", "layout", "spooled"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> BlobSink:
    if request.param == "memory":
        return MemoryBlobSink()
    if request.param == "layout":
        return layout_sink(tmp_path)
    # any ImageTarget (a registry in production) behind the spooling sink
    return SpoolingBlobSink(LayoutTarget(OciLayout.create(tmp_path / "spooled"), "latest"))


def test_sink_conformance(sink: BlobSink) -> None:
    digest = sink.put(b"small blob")
    assert digest == Digest.of(b"small blob")
    assert read(sink, digest) == b"small blob"
    writer = sink.begin()
    for piece in (b"a" * 3_000_000, memoryview(b"b" * 10), b""):
        writer.write(piece)
    streamed, size = writer.commit()
    assert (streamed, size) == (Digest.of(b"a" * 3_000_000 + b"b" * 10), 3_000_010)
    assert read(sink, streamed) == b"a" * 3_000_000 + b"b" * 10
    aborted = sink.begin()
    aborted.write(b"never")
    aborted.abort()
    assert sink.put(b"small blob") == digest  # idempotent


def test_data_blob_layout(sink: BlobSink) -> None:
    codec = ChunkCodec()
    datas = [b"compressible " * 1000, bytes(range(256)) * 3, b"x"]
    writer = DataBlobWriter(sink.begin())
    written = []
    for data in datas:
        compression, stored = codec.encode(data)
        written.append(writer.add(ChunkDigest.of(data), len(data), compression, stored))
    digest, size = writer.finish()
    blob = read(sink, digest)
    assert len(blob) == size
    footer = decode_blob_footer(blob[-BLOB_FOOTER_SIZE:], len(blob))
    table = decode_blob_table(
        blob[footer.table_offset : footer.table_offset + footer.table_size], footer
    )
    assert table == written
    for chunk, data in zip(table, datas, strict=True):
        assert codec.decode(blob[chunk.offset : chunk.offset + chunk.stored_size], chunk) == data
    assert [c.offset for c in table] == [
        0,
        table[0].stored_size,
        table[0].stored_size + table[1].stored_size,
    ]


def test_layout_rollback_removes_only_added_blobs(tmp_path: Path) -> None:
    sink = layout_sink(tmp_path)
    old = sink.put(b"was there before")
    target = sink.target
    target.added.clear()  # as if written by an earlier run
    new = sink.put(b"added by this run")
    again = sink.put(b"was there before")
    streamed = sink.begin()
    streamed.write(b"streamed by this run")
    newer, _ = streamed.commit()
    assert again == old and target.added == [new, newer]
    target.rollback()
    assert sink.layout.has_blob(old) and not sink.layout.has_blob(new)
    assert not sink.layout.has_blob(newer)
    leftovers = [p.name for p in (sink.layout.root / "blobs" / "sha256").iterdir()]
    assert leftovers == [old.hex]  # no temp files either


def test_layout_write_errors_are_target_errors(tmp_path: Path) -> None:
    sink = layout_sink(tmp_path)
    blobs = sink.layout.root / "blobs" / "sha256"
    blobs.rmdir()
    blobs.write_bytes(b"not a directory")
    with pytest.raises(TargetError):
        sink.put(b"data")
