"""Tensor-aware chunking through the builder: chunk boundaries on tensor boundaries, and the
chunks a re-ordered, extended, re-sharded or fine-tuned model shares with its base; the
model-header prefetch of a mount over such an image."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.blobs import MemoryBlobSink
from builder.build import build_image
from builder.chunker import ChunkParams, cut_file, make_fastcdc
from builder.entries import Entry, EntryKind
from builder.sources import MemoryLayer, MemorySource, open_directory
from builder.tensors import cut_model_file
from imagefs.chunks import MemoryBlobReader, ReadStats, build_chunk_source
from imagefs.config import Config
from imagefs.digest import ChunkDigest
from imagefs.prefetch import model_header_ranges, prefetch_model_headers
from imagefs.tensors import tensor_layout
from imagefs.view import FileSystemView
from tests.support.converted import ConvertedImage
from tests.support.models import Tensors, gguf_file, model, safetensors_bytes, tensor

KIB = 1024
MIB = 1024 * KIB
CONFIG = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
# float32 tensors of mixed sizes: small ones (one chunk, below the minimum) and ones of
# several MiB that FastCDC cuts inside; 20 tensors, ~17 MiB
SIZES = [
    4 * KIB,
    3 * MIB,
    4 * KIB,
    4 * KIB,
    5 * MIB + 12,
    40 * KIB,
    4 * KIB,
    1536 * KIB,
    4 * KIB,
    600 * KIB + 8,
    4 * KIB,
    2 * MIB + 4,
    4 * KIB,
    300 * KIB,
    4 * KIB,
    4 * MIB,
    4 * KIB,
    100 * KIB,
    4 * KIB,
    16 * KIB,
]
BASE = model(SIZES)
Writer = Callable[[Tensors, Path], bytes]


def write_safetensors(tensors: Tensors, path: Path) -> bytes:
    data, _ = safetensors_bytes(tensors, {"format": "pt"})
    path.write_bytes(data)
    return data


def write_gguf(tensors: Tensors, path: Path) -> bytes:
    return gguf_file(path, tensors, vocab=3000)


WRITERS: dict[str, Writer] = {"safetensors": write_safetensors, "gguf": write_gguf}


@dataclass
class Built:
    image: ConvertedImage
    files: dict[str, bytes]

    def chunks(self, path: str) -> list[tuple[int, int, ChunkDigest]]:
        """(offset, size, digest) of a file's chunks."""
        index = self.image.paths()[path]
        return [(o, r.size, r.digest) for o, r in self.image.bootstrap.file_chunks(index)]

    def digests(self) -> dict[ChunkDigest, int]:
        return {r.digest: r.size for r in self.image.bootstrap.chunks()}

    def range_digests(self, path: str, begin: int, end: int) -> list[ChunkDigest]:
        index = self.image.paths()[path]
        return [r.digest for _, r in self.image.bootstrap.file_chunks(index, begin, end)]


def build(files: dict[str, bytes], **config: object) -> Built:
    layer = MemoryLayer(
        "models",
        [(Entry(p.encode(), EntryKind.FILE, size=len(d)), d) for p, d in sorted(files.items())],
    )
    sink = MemoryBlobSink()
    built = build_image(MemorySource(CONFIG, [layer]), sink, Config(**config))  # type: ignore[arg-type]
    image = ConvertedImage.from_blobs(built.manifest, sink.blobs)
    image.bootstrap.validate()
    for path, data in files.items():
        assert image.read(path) == data
    return Built(image, files)


def starts_of(data: bytes, name: str) -> tuple[int, ...]:
    layout = tensor_layout(name.encode(), lambda n: data[:n], len(data))
    assert layout is not None
    return layout.starts


def new_bytes(variant: Built, base: Built) -> int:
    known = base.digests()
    return sum(size for digest, size in variant.digests().items() if digest not in known)


@pytest.fixture(scope="module", params=["safetensors", "gguf"])
def fmt(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def base(fmt: str, tmp_path_factory: pytest.TempPathFactory) -> Built:
    tmp = tmp_path_factory.mktemp("base")
    return build({f"m.{fmt}": WRITERS[fmt](BASE, tmp / f"m.{fmt}")})


def locate(files: dict[str, bytes], tensors: Tensors) -> dict[str, tuple[str, int, int]]:
    """Where each tensor's bytes are: (file, begin, end), found by content (all distinct)."""
    out = {}
    for tname, array in tensors:
        raw = array.tobytes()
        hits = [(name, data.find(raw)) for name, data in files.items() if raw in data]
        assert len(hits) == 1, tname
        name, at = hits[0]
        assert at > 0 and files[name].find(raw, at + 1) == -1
        out[tname] = (name, at, at + len(raw))
    return out


def tensor_digests(built: Built, tensors: Tensors) -> dict[str, list[ChunkDigest]]:
    return {t: built.range_digests(*where) for t, where in locate(built.files, tensors).items()}


def test_chunk_boundaries_fall_on_tensor_boundaries(fmt: str, base: Built) -> None:
    name = f"m.{fmt}"
    data = base.files[name]
    starts = starts_of(data, name)
    chunk_starts = {o for o, _, _ in base.chunks(name)}
    assert set(starts) <= chunk_starts
    assert {b for _, b, _ in locate(base.files, BASE).values()} <= set(starts)
    assert len(chunk_starts) > len(starts)  # the large tensors are cut inside
    sizes = [s for _, s, _ in base.chunks(name)]
    assert max(sizes) <= 256 * KIB
    if fmt == "safetensors":
        first = base.chunks(name)[0]
        assert first[0] == 0 and first[1] == starts[1]  # the header is one chunk


def variant_files(fmt: str, kind: str, tmp: Path) -> tuple[dict[str, bytes], Tensors]:
    """A variant's files and the tensors of BASE whose chunks it must share."""
    write = WRITERS[fmt]
    if kind == "reordered":
        order = list(BASE)
        random.Random(5).shuffle(order)
        return {f"m.{fmt}": write(order, tmp / f"m.{fmt}")}, BASE
    if kind == "inserted":
        extra = [("extra.bias", tensor(777, 8 * KIB)), *BASE]
        return {f"m.{fmt}": write(extra, tmp / f"m.{fmt}")}, BASE
    if kind == "resharded":
        one = write(BASE[:11], tmp / f"a.{fmt}")
        two = write(BASE[11:], tmp / f"b.{fmt}")
        return {f"model-00001-of-00002.{fmt}": one, f"model-00002-of-00002.{fmt}": two}, BASE
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["reordered", "inserted", "resharded"])
def test_variants_share_every_tensor_chunk(
    fmt: str, base: Built, kind: str, tmp_path: Path
) -> None:
    files, shared = variant_files(fmt, kind, tmp_path)
    variant = build(files)
    assert tensor_digests(variant, shared) == tensor_digests(base, shared)
    total = sum(len(d) for d in files.values())
    fresh = new_bytes(variant, base)
    assert 0 < fresh < total // 100, (kind, fresh, total)


def test_fine_tune_shares_the_unchanged_tensors(fmt: str, base: Built, tmp_path: Path) -> None:
    changed = set(random.Random(7).sample(range(len(BASE)), len(BASE) // 5))
    assert len(changed) == 4
    tuned = [
        (n, tensor(9000 + i, a.nbytes) if i in changed else a) for i, (n, a) in enumerate(BASE)
    ]
    name = f"m.{fmt}"
    data = WRITERS[fmt](tuned, tmp_path / name)
    variant = build({name: data})
    mine = tensor_digests(variant, tuned)
    theirs = tensor_digests(base, BASE)
    base_all = base.digests()
    for i, (tname, _) in enumerate(tuned):
        if i in changed:
            assert not set(mine[tname]) & set(base_all), tname
        else:
            assert mine[tname] == theirs[tname], tname
    changed_bytes = sum(BASE[i][1].nbytes for i in changed)
    fresh = new_bytes(variant, base)
    assert changed_bytes <= fresh <= changed_bytes + len(data) // 100


def test_plain_cutting_shares_less(tmp_path: Path) -> None:
    """The control: the same re-ordered model cut as plain files (FastCDC over the whole
    file) leaves the small tensors and the edges of the large ones unshared."""
    files, _ = variant_files("safetensors", "reordered", tmp_path)
    data = files["m.safetensors"]
    base_data, _ = safetensors_bytes(BASE, {"format": "pt"})
    aware = new_bytes(build({"m.safetensors": data}), build({"m.safetensors": base_data}))
    plain = new_bytes(build({"m.bin": data}), build({"m.bin": base_data}))
    assert plain > 4 * aware, (plain, aware)


def test_large_safetensors_header_is_one_chunk() -> None:
    meta = {"notes": "x" * (300 * KIB)}  # a header above max_chunk_bytes
    data, extents = safetensors_bytes(model([64 * KIB, 4 * KIB]), meta)
    built = build({"big.safetensors": data})
    chunks = built.chunks("big.safetensors")
    assert chunks[0][:2] == (0, extents[0][0])
    assert chunks[0][1] > 256 * KIB
    assert [o for o, _, _ in chunks] == [0, extents[0][0], extents[1][0]]


@pytest.mark.parametrize("name", ["junk.safetensors", "junk.gguf"])
def test_unparsable_model_files_are_cut_as_plain_files(name: str) -> None:
    junk = random.Random(3).randbytes(6 * MIB + 5)
    for data in (junk, junk[:100], b"GGUF" + junk, (50).to_bytes(8, "little") + junk):
        model_chunks = [c[1:] for c in build({name: data}).chunks(name)]
        plain_chunks = [c[1:] for c in build({"junk.bin": data}).chunks("junk.bin")]
        assert model_chunks == plain_chunks


def test_cut_model_file_streams_like_cut_file() -> None:
    """Segments are cut with `cut_file` (so in blocks of bounded size), and a file without a
    layout gives exactly `cut_file`'s chunks."""
    params = ChunkParams(16 * KIB, 64 * KIB, 256 * KIB)
    cdc = make_fastcdc(params)
    data, extents = safetensors_bytes(model([9 * MIB, 4 * KIB]))
    blocks = list(cut_model_file(cdc, params, _Reader(data), len(data), b"m.safetensors"))
    assert max(len(b.buf) for b in blocks) <= params.block_size
    assert b"".join(bytes(b.buf[: sum(b.lengths)]) for b in blocks) == data
    offsets = [0]
    for b in blocks:
        for n in b.lengths:
            offsets.append(offsets[-1] + n)
    assert {0, *[b for b, _ in extents]} <= set(offsets)
    junk = random.Random(1).randbytes(5 * MIB)
    got = [b.lengths for b in cut_model_file(cdc, params, _Reader(junk), len(junk), b"j.gguf")]
    want = [b.lengths for b in cut_file(cdc, params, _Reader(junk), len(junk), b"j.gguf")]
    assert got == want


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def readinto(self, buffer: bytearray | memoryview) -> int:
        n = min(len(buffer), len(self.data) - self.pos, 1 << 20)  # short reads, as pipes give
        buffer[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


def test_directory_source_gives_the_same_chunks(tmp_path: Path) -> None:
    """Files read from disk (the `dir:` source) are cut as those read from a stream."""
    root = tmp_path / "model"
    root.mkdir()
    files = {
        "small.safetensors": write_safetensors(BASE[:3], root / "small.safetensors"),
        "m.gguf": write_gguf(BASE[:6], root / "m.gguf"),
    }
    sink = MemoryBlobSink()
    built = build_image(open_directory(root), sink, Config())
    from_dir = ConvertedImage.from_blobs(built.manifest, sink.blobs)
    from_memory = build(files).image
    for name, data in files.items():
        assert from_dir.read(name) == data
        a = [r.digest for _, r in from_dir.bootstrap.file_chunks(from_dir.paths()[name])]
        b = [r.digest for _, r in from_memory.bootstrap.file_chunks(from_memory.paths()[name])]
        assert a == b
        assert len(a) >= len(starts_of(data, name))


def test_model_header_prefetch(tmp_path: Path) -> None:
    files = {
        "model-1.safetensors": write_safetensors(BASE[:8], tmp_path / "a.safetensors"),
        "model-2.safetensors": write_safetensors(BASE[8:], tmp_path / "b.safetensors"),
        "model.gguf": gguf_file(tmp_path / "m.gguf", BASE[:5], vocab=30_000),
        "notes/readme.md": b"# a model\n",
        "broken.safetensors": b"\xff" * 64,
    }
    layer = MemoryLayer(
        "m", [(Entry(p.encode(), EntryKind.FILE, size=len(d)), d) for p, d in files.items()]
    )
    sink = MemoryBlobSink()
    built = build_image(MemorySource(CONFIG, [layer]), sink, Config())
    image = ConvertedImage.from_blobs(built.manifest, sink.blobs)
    paths = image.paths()
    reader = MemoryBlobReader(dict(image.blobs))
    stats = ReadStats()
    view = FileSystemView(image.bootstrap, build_chunk_source(reader, stats), stats)
    ranges = model_header_ranges(view)
    headers = {
        name: starts_of(files[name], name)[1]
        for name in ("model-1.safetensors", "model-2.safetensors", "model.gguf")
    }
    assert sorted(ranges) == sorted((paths[n], end) for n, end in headers.items())
    assert headers["model.gguf"] > 256 * KIB  # the vocabulary: several chunks
    want = 0
    for name, end in headers.items():
        want += sum(r.size for _, r in image.bootstrap.file_chunks(paths[name], 0, end))
    broken = image.bootstrap.file_chunks(paths["broken.safetensors"])
    want += sum(r.size for _, r in broken)  # its first chunk was fetched to look at it
    assert stats.prefetch_bytes == want
    fetched = sum(length for _, _, length in reader.reads)
    total = sum(len(d) for d in files.values())
    assert fetched < want + 64 * KIB < total // 10
    # everything is cached now: a second pass fetches nothing
    reads = len(reader.reads)
    stop = threading.Event()
    assert prefetch_model_headers(view, stop) == 3
    assert len(reader.reads) == reads
    stop.set()
    assert prefetch_model_headers(view, stop) == 0


def test_builds_are_deterministic(tmp_path: Path) -> None:
    files = {
        "a.safetensors": write_safetensors(BASE[:10], tmp_path / "a.safetensors"),
        "b.gguf": write_gguf(BASE[10:], tmp_path / "b.gguf"),
    }
    digests = set()
    for threads in (1, 4):
        layer = MemoryLayer(
            "m", [(Entry(p.encode(), EntryKind.FILE, size=len(d)), d) for p, d in files.items()]
        )
        built = build_image(
            MemorySource(CONFIG, [layer]), MemoryBlobSink(), Config(convert_threads=threads)
        )
        digests.add(built.manifest_descriptor.digest)
    assert len(digests) == 1


def _reads_after_header_read(tell_view: bool, tmp_path: Path) -> int:
    data = write_safetensors(BASE[:6], tmp_path / "m.safetensors")
    layer = MemoryLayer("m", [(Entry(b"m.safetensors", EntryKind.FILE, size=len(data)), data)])
    sink = MemoryBlobSink()
    built = build_image(MemorySource(CONFIG, [layer]), sink, Config())
    image = ConvertedImage.from_blobs(built.manifest, sink.blobs)
    reader = MemoryBlobReader(dict(image.blobs))
    stats = ReadStats()
    chunks = build_chunk_source(reader, stats)
    view = FileSystemView(image.bootstrap, chunks, stats, readahead_bytes=4 * MIB)
    if tell_view:
        assert prefetch_model_headers(view, threading.Event()) == 1
    else:
        assert model_header_ranges(view)  # the same fetches, the view not told
    reads = len(reader.reads)
    ino = view.resolve(b"m.safetensors")
    assert view.read(ino, 0, 8) == data[:8]
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and len(reader.reads) == reads:
        time.sleep(0.01)
    view.close()
    return len(reader.reads) - reads


def test_a_header_read_starts_no_readahead_into_the_tensors(tmp_path: Path) -> None:
    assert _reads_after_header_read(False, tmp_path) > 0  # the control: readahead ran
    assert _reads_after_header_read(True, tmp_path) == 0
