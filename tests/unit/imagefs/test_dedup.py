"""`imagefs dedup` core: shared/own/union figures at chunk and layer level from in-memory
facts (by hand and as hypothesis properties), the facts read from an encoded bootstrap and
an in-memory store, and the per-blob reference counts of `inspect`."""

from __future__ import annotations

import io
import random
from collections import Counter
from collections.abc import Mapping
from typing import BinaryIO

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagefs.chunks import BlobReader, MemoryBlobReader
from imagefs.config import Config
from imagefs.dedup import (
    ChunkFacts,
    ChunkSize,
    ImageFacts,
    chunk_facts,
    dedup_report,
    facts_of_opened,
    gather_facts,
)
from imagefs.digest import ChunkDigest, Digest
from imagefs.format import (
    BLOB_ENTRY_SIZE,
    BLOB_FOOTER_SIZE,
    MEDIA_TYPE_OCI_CONFIG,
    Bootstrap,
    blob_descriptor,
    bootstrap_descriptor,
    build_manifest,
    compress_bootstrap,
    encode_bootstrap,
    load_bootstrap,
)
from imagefs.image import open_image
from imagefs.inspect import inspect_image
from imagefs.oci import MEDIA_TYPE_OCI_MANIFEST, Descriptor, Manifest
from tests.unit.imagefs.trees import TreeBuilder, pack_blobs


def cd(n: int) -> ChunkDigest:
    return ChunkDigest(n.to_bytes(32, "big"))


def ld(n: int) -> Digest:
    return Digest.from_raw(n.to_bytes(32, "big"))


def imagefs_facts(
    name: str,
    chunks: Mapping[int, tuple[int, int]],
    layers: Mapping[int, int],
    logical: int,
    boot: int = 0,
) -> ImageFacts:
    return ImageFacts(
        name,
        ld(10_000 + len(name)),
        {ld(d): s for d, s in layers.items()},
        ChunkFacts({cd(d): ChunkSize(*s) for d, s in chunks.items()}, logical, boot),
    )


def plain_facts(name: str, layers: Mapping[int, int]) -> ImageFacts:
    return ImageFacts(name, ld(20_000), {ld(d): s for d, s in layers.items()}, None)


# --------------------------------------------------------------------------- by hand


def test_figures_by_hand() -> None:
    a = imagefs_facts("a", {1: (100, 50), 2: (200, 200), 3: (300, 10)}, {1: 1000, 2: 500}, 1000, 10)
    b = imagefs_facts("b", {2: (200, 200), 3: (300, 20), 4: (400, 400)}, {1: 1000, 3: 700}, 900, 20)
    c = plain_facts("c", {1: 1000, 4: 50})
    report = dedup_report([a, b, c])
    ra, rb, rc = report.images

    assert (ra.logical_bytes, ra.chunks, ra.unique_chunk_bytes, ra.stored_bytes) == (
        1000,
        3,
        600,
        260,
    )
    assert (ra.shared_bytes, ra.own_bytes) == (500, 100)  # chunks 2 and 3 are in b
    assert (rb.unique_chunk_bytes, rb.stored_bytes, rb.shared_bytes, rb.own_bytes) == (
        900,
        620,
        500,
        400,
    )
    # the plain image's chunks never count, for it or against the others (chunk 4 is not
    # shared just because a plain layer happens to have the same number)
    assert rc.chunks is rc.logical_bytes is rc.shared_bytes is rc.own_bytes is None
    assert not rc.imagefs and ra.imagefs

    # layer 1 is in all three, layer 2 only in a, 3 only in b, 4 only in c
    assert (ra.layer_bytes, ra.shared_layer_bytes, ra.own_layer_bytes) == (1500, 1000, 500)
    assert (rb.layer_bytes, rb.shared_layer_bytes, rb.own_layer_bytes) == (1700, 1000, 700)
    assert (rc.layer_bytes, rc.shared_layer_bytes, rc.own_layer_bytes) == (1050, 1000, 50)

    assert report.total_logical_bytes == 1900
    assert report.total_chunks == 4
    assert report.total_unique_chunk_bytes == 1000
    # chunk 3 is stored as 10 by a and 20 by b: a chunk-sharing registry keeps the smaller
    assert report.total_stored_bytes == 50 + 200 + 10 + 400
    assert report.sum_stored_bytes == 260 + 620
    assert report.total_bootstrap_bytes == 30
    assert report.total_layer_bytes == 1500 + 1700 + 1050
    assert report.union_layer_bytes == 1000 + 500 + 700 + 50
    assert report.imagefs_union_layer_bytes == 1000 + 500 + 700
    assert report.saving_vs_layers == pytest.approx(1 - (660 + 30) / 2200)

    doc = report.to_json()
    assert doc["images"][2]["unique_chunk_bytes"] is None
    assert doc["images"][2]["layer_bytes"] == 1050
    assert doc["images"][0]["shared_bytes"] == 500
    assert doc["total_stored_bytes"] == 660
    assert doc["saving_vs_layers"] == round(1 - 690 / 2200, 4)


def test_one_image_shares_nothing_and_the_same_image_twice_shares_everything() -> None:
    a = imagefs_facts("a", {1: (100, 50), 2: (200, 20)}, {1: 70, 2: 80}, 400)
    (alone,) = dedup_report([a]).images
    assert (alone.shared_bytes, alone.own_bytes, alone.shared_layer_bytes) == (0, 300, 0)

    twice = dedup_report([a, a])
    assert [i.shared_bytes for i in twice.images] == [300, 300]
    assert [i.own_bytes for i in twice.images] == [0, 0]
    assert twice.total_unique_chunk_bytes == 300 and twice.total_stored_bytes == 70
    assert twice.sum_stored_bytes == 140
    assert twice.union_layer_bytes == 150 and twice.total_layer_bytes == 300
    assert [i.shared_layer_bytes for i in twice.images] == [150, 150]
    assert [i.own_layer_bytes for i in twice.images] == [0, 0]


def test_no_imagefs_image_has_no_saving() -> None:
    report = dedup_report([plain_facts("p", {1: 5}), plain_facts("q", {1: 5, 2: 7})])
    assert report.saving_vs_layers is None and report.to_json()["saving_vs_layers"] is None
    assert report.total_stored_bytes == report.total_chunks == 0
    assert report.union_layer_bytes == 12 and report.total_layer_bytes == 17
    assert dedup_report([]).images == ()


# --------------------------------------------------------------------------- properties


@st.composite
def fact_sets(draw: st.DrawFn) -> list[ImageFacts]:
    """Images drawing chunks and layers from common pools (a digest has one uncompressed
    size; the stored size may differ from image to image)."""
    chunk_pool = draw(st.lists(st.integers(1, 5000), min_size=1, max_size=12))
    layer_pool = draw(st.lists(st.integers(0, 9000), min_size=1, max_size=6))
    out = []
    for n in range(draw(st.integers(1, 5))):
        layers = {
            ld(i): layer_pool[i] for i in draw(st.sets(st.sampled_from(range(len(layer_pool)))))
        }
        if draw(st.booleans()) and n:
            out.append(ImageFacts(f"p{n}", ld(n), layers, None))
            continue
        chosen = draw(st.sets(st.sampled_from(range(len(chunk_pool)))))
        chunks = {
            cd(i): ChunkSize(chunk_pool[i], draw(st.integers(1, chunk_pool[i]))) for i in chosen
        }
        logical = sum(c.size for c in chunks.values()) + draw(st.integers(0, 10_000))
        out.append(ImageFacts(f"i{n}", ld(n), layers, ChunkFacts(chunks, logical, 0)))
    return out


@given(fact_sets())
def test_report_properties(facts: list[ImageFacts]) -> None:
    report = dedup_report(facts)
    chunked = [i for i in report.images if i.imagefs]
    for i in chunked:
        assert i.shared_bytes is not None and i.own_bytes is not None
        assert i.shared_bytes + i.own_bytes == i.unique_chunk_bytes
        assert i.stored_bytes is not None and i.unique_chunk_bytes is not None
        assert i.stored_bytes <= i.unique_chunk_bytes  # every drawn stored size <= its size
    for i in report.images:
        assert i.shared_layer_bytes + i.own_layer_bytes == i.layer_bytes
    sums = [i.unique_chunk_bytes or 0 for i in chunked]
    assert report.total_unique_chunk_bytes <= sum(sums)
    assert report.total_unique_chunk_bytes >= max(sums, default=0)
    assert report.total_stored_bytes <= report.sum_stored_bytes
    assert report.union_layer_bytes <= report.total_layer_bytes
    assert report.imagefs_union_layer_bytes <= report.union_layer_bytes
    # the union is what no one else has, plus each shared chunk once
    held = [f.chunks.chunks for f in facts if f.chunks is not None]
    holders = Counter(d for chunks in held for d in chunks)
    sizes = {d: c.size for chunks in held for d, c in chunks.items()}
    shared_once = sum(size for d, size in sizes.items() if holders[d] > 1)
    assert report.total_unique_chunk_bytes == sum(i.own_bytes or 0 for i in chunked) + shared_once
    # likewise for layers
    layer_holders = Counter(d for f in facts for d in f.layers)
    layer_sizes = {d: size for f in facts for d, size in f.layers.items()}
    shared_layers_once = sum(s for d, s in layer_sizes.items() if layer_holders[d] > 1)
    own_layers = sum(i.own_layer_bytes for i in report.images)
    assert report.union_layer_bytes == own_layers + shared_layers_once
    assert report.total_logical_bytes == sum(f.chunks.logical_bytes for f in facts if f.chunks)


# --------------------------------------------------------------------------- facts of a bootstrap

A = random.Random(1).randbytes(3000)
B = b"compresses well " * 200
C = random.Random(2).randbytes(500)
GONE = random.Random(3).randbytes(700)  # in a blob, referenced by no file (a whited-out file)
OTHER = random.Random(4).randbytes(900)  # in the second blob, not listed by this bootstrap


class MemoryStore:
    """An ImageStore over in-memory blobs and one manifest."""

    def __init__(self, blobs: dict[Digest, bytes], manifest: Manifest) -> None:
        self.blobs = dict(blobs)
        self.manifest_bytes = manifest.encode()
        self.desc = Descriptor(
            MEDIA_TYPE_OCI_MANIFEST, Digest.of(self.manifest_bytes), len(self.manifest_bytes)
        )
        self.manifest = manifest
        self.reads: list[Digest] = []

    def resolve_manifest(
        self, platform: Mapping[str, str] | None = None
    ) -> tuple[Descriptor, Manifest]:
        return self.desc, self.manifest

    def read_manifest(self, desc: Descriptor) -> bytes:
        return self.manifest_bytes

    def read_blob(self, digest: Digest) -> bytes:
        self.reads.append(digest)
        return self.blobs[digest]

    def open_blob(self, digest: Digest) -> BinaryIO:
        return io.BytesIO(self.read_blob(digest))

    def blob_reader(self) -> BlobReader:
        return MemoryBlobReader(self.blobs)

    def describe(self) -> str:
        return "memory"


def imagefs_store() -> tuple[MemoryStore, Digest]:
    packed = pack_blobs([[A, B, C, GONE], [OTHER, C]])
    a, b, c, gone, _other, c2 = packed.refs
    table = [a, b, c, gone, c2]  # the second blob's OTHER is not in this image's table
    t = TreeBuilder()
    t.dir(b"bin")
    tool = t.file(b"bin/tool", [a, b, a, c], table)  # a twice in one file
    t.file(b"copy", [a, b, a, c], table)  # the same content again
    t.file(b"c2", [c2], table)  # C again, from the second blob
    t.file(b"empty", [], table)
    t.link(b"hard", tool)  # a hard link counts once
    raw = encode_bootstrap(t.build(), table, packed.infos)
    stored = compress_bootstrap(raw)
    boot_desc = bootstrap_descriptor(stored)
    config = Descriptor(MEDIA_TYPE_OCI_CONFIG, Digest.of(b"{}"), 2)
    blobs = [blob_descriptor(i.digest, i.size) for i in packed.infos]
    manifest = build_manifest(config, blobs, boot_desc, subject=None)
    store = MemoryStore({**packed.blobs, boot_desc.digest: stored, config.digest: b"{}"}, manifest)
    return store, boot_desc.digest


def test_chunk_facts_count_each_referenced_chunk_once() -> None:
    store, boot_digest = imagefs_store()
    boot: Bootstrap = load_bootstrap(store.blobs[boot_digest])
    facts = chunk_facts(boot, 123)
    assert set(facts.chunks) == {ChunkDigest.of(x) for x in (A, B, C)}  # not GONE, not OTHER
    assert facts.chunks[ChunkDigest.of(B)].size == len(B)
    assert facts.chunks[ChunkDigest.of(B)].stored_size < len(B)  # zstd
    assert facts.chunks[ChunkDigest.of(A)].stored_size == len(A)  # raw
    assert facts.logical_bytes == 2 * (2 * len(A) + len(B) + len(C)) + len(C)
    assert facts.bootstrap_bytes == 123


def test_gather_facts_reads_only_the_bootstrap() -> None:
    store, boot_digest = imagefs_store()
    facts = gather_facts("mem", store)
    assert store.reads == [boot_digest]  # no chunk data, no blob table
    assert facts.chunks is not None and len(facts.chunks.chunks) == 3
    assert facts.manifest_digest == store.desc.digest
    assert facts.layers == {d.digest: d.size for d in store.manifest.layers}
    assert facts.chunks.bootstrap_bytes == store.manifest.layers[-1].size
    opened = open_image(store, Config())
    assert facts_of_opened("mem", opened) == facts


def test_gather_facts_of_a_plain_image() -> None:
    layer = b"not really a tar"
    ldesc = Descriptor("application/vnd.oci.image.layer.v1.tar", Digest.of(layer), len(layer))
    config = Descriptor(MEDIA_TYPE_OCI_CONFIG, Digest.of(b"{}"), 2)
    store = MemoryStore({}, Manifest(MEDIA_TYPE_OCI_MANIFEST, config, (ldesc, ldesc)))
    facts = gather_facts("plain", store)
    assert facts.chunks is None and store.reads == []
    assert facts.layers == {ldesc.digest: len(layer)}  # a layer listed twice counts once
    (image,) = dedup_report([facts]).images
    assert image.layer_bytes == len(layer) and image.unique_chunk_bytes is None


# --------------------------------------------------------------------------- inspect per blob


def test_inspect_blob_reference_counts() -> None:
    store, _ = imagefs_store()
    info = inspect_image(open_image(store, Config()))
    first, second = info.to_json()["blobs"]
    stored = {x: len(x) for x in (A, C, GONE)}
    b_stored = next(
        c.stored_size for c in open_image(store, Config()).bootstrap.chunks() if c.size == len(B)
    )
    # blob 1 holds A, B, C, GONE; files reference A 4 times, B twice, C twice
    assert first["chunks_stored"] == 4
    assert first["chunks"] == first["referenced_chunks"] == 3
    assert first["references"] == 8
    assert first["referenced_bytes"] == 4 * len(A) + 2 * len(B) + 2 * len(C)
    assert first["uncompressed_bytes"] == len(A) + len(B) + len(C)
    assert first["stored_bytes"] == stored[A] + b_stored + stored[C]
    data = stored[A] + b_stored + stored[C] + stored[GONE]
    assert (
        first["chunk_data_bytes"] == data == first["size"] - BLOB_FOOTER_SIZE - 4 * BLOB_ENTRY_SIZE
    )
    assert first["referenced_fraction"] == round((data - len(GONE)) / data, 4)
    # blob 2 holds OTHER and C; this image lists (and references) only C, once
    assert (second["chunks_stored"], second["chunks"], second["references"]) == (1, 1, 1)
    assert second["referenced_bytes"] == len(C)
    # OTHER is unknown to the bootstrap: its bytes (and table entry) count as unreferenced
    assert second["chunk_data_bytes"] == len(OTHER) + len(C) + BLOB_ENTRY_SIZE
    assert 0 < second["referenced_fraction"] < len(C) / (len(OTHER) + len(C)) + 0.01
