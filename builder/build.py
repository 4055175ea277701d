"""Building an imagefs image from a `LayerSource` into a `BlobSink`: read each layer's
members, cut and dedup file chunks (first occurrence in the image wins), write one data blob
per layer that adds new chunks, merge the layers, then write bootstrap, config and manifest.

Deterministic: the same source and config give byte-identical blobs and manifest."""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from builder.blobs import BlobSink, DataBlobWriter
from builder.bootstrap import inode_specs
from builder.chunker import ChunkParams, FileReader, Readable, cut_file, make_fastcdc, read_exactly
from builder.entries import Entry, EntryKind, show, with_content
from builder.merge import Merger, Node, number_inodes
from builder.pipeline import ChunkPipeline, Chunks, Hashed, Job, ReadWhole, Whole
from builder.sources import LayerSource, diff_ids
from builder.tarlayer import ByteCounter, Member
from builder.tensors import cut_model_file, is_model_file
from imagefs.chunkdict import ChunkDictionary, KnownChunk
from imagefs.config import Config
from imagefs.digest import ChunkDigest, Digest
from imagefs.errors import FormatError, SourceError, UsageError
from imagefs.format import (
    ANNOTATION_SOURCE_CONFIG,
    ANNOTATION_SOURCE_DIFF_IDS,
    MEDIA_TYPE_OCI_CONFIG,
    BlobChunk,
    BlobInfo,
    ChunkCodec,
    ChunkRef,
    blob_descriptor,
    bootstrap_descriptor,
    build_config,
    build_manifest,
    compress_bootstrap,
    encode_bootstrap,
)
from imagefs.oci import MEDIA_TYPE_OCI_MANIFEST, Descriptor, Manifest

Progress = Callable[[int, int | None], None]
# fetches a reused chunk's stored bytes from the image that stores it (ref, that image)
FetchStored = Callable[[ChunkRef, str], bytes]
SPARSE_FRACTION = 0.1
SPARSE_MIN_BLOB = 1 << 20
BATCH_BYTES = 4 << 20  # chunk bytes handed to a worker at a time


@dataclass(frozen=True, slots=True)
class BuildStats:
    bytes_in: int  # uncompressed file bytes read
    chunks_total: int  # chunk occurrences, duplicates included
    chunks_unique: int  # chunks stored
    bytes_stored: int  # bytes of the data blobs written
    blobs: int  # data blobs written
    chunks_reused: int = 0  # chunks referenced in other images' blobs (the dictionary)
    bytes_reused: int = 0  # their uncompressed bytes


@dataclass(frozen=True, slots=True)
class BuiltImage:
    manifest: Manifest
    manifest_descriptor: Descriptor
    manifest_bytes: bytes  # not in the sink: the caller stores it last, as it tags the image
    bootstrap_bytes: bytes  # the stored (compressed) bootstrap, also in the sink
    config: Descriptor
    blobs: tuple[Descriptor, ...]  # data blobs this build wrote
    bootstrap: Descriptor
    stats: BuildStats
    # blobs of other images that hold reused chunks, each with the image that has it
    external: tuple[tuple[Descriptor, str], ...] = ()


def worker_threads(config: Config) -> int:
    if config.convert_threads > 0:
        return config.convert_threads
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


class _Builder:
    def __init__(
        self,
        sink: BlobSink,
        config: Config,
        progress: Progress | None,
        prefetch_paths: Sequence[str] = (),
        dictionary: ChunkDictionary | None = None,
        fetch: FetchStored | None = None,
    ) -> None:
        self.sink = sink
        self.dictionary = dictionary
        self.fetch = fetch
        # blobs of other images holding chunks this image references, in first-use order
        self.external: list[KnownChunk] = []  # one entry (the first chunk seen) per blob
        self.external_index: dict[Digest, int] = {}
        self.chunks_reused = 0
        self.bytes_reused = 0
        self.prefetch_paths = tuple(prefetch_paths)
        self.params = ChunkParams.from_config(config)
        self.cdc = make_fastcdc(self.params)
        self.pipeline: ChunkPipeline[list[int]] = ChunkPipeline(
            threads=worker_threads(config),
            level=config.zstd_level,
            min_saving=config.compress_min_saving,
            params=self.params,
        )
        self.progress = progress
        self.counter = ByteCounter()
        self.total: int | None = None
        # chunk table, in order of first occurrence: (blob ordinal, where in that blob)
        self.index: dict[bytes, int] = {}
        self.chunks: list[tuple[int, BlobChunk]] = []
        self.files: list[array[int]] = []  # content id -> chunk indices
        self.blobs: list[Descriptor] = []
        self.writer: DataBlobWriter | None = None
        self.jobs: list[Job] = []
        self.owners: list[int] = []
        self.batch_bytes = 0
        self.layer_name = ""
        self.bytes_in = 0
        self.chunks_total = 0
        self.bytes_stored = 0

    # -- chunks --------------------------------------------------------------------------

    def _add(self, job: Job, content: int, size: int) -> None:
        self.jobs.append(job)
        self.owners.append(content)
        self.batch_bytes += size
        if self.batch_bytes >= BATCH_BYTES:
            self._flush()

    def _read_file(self, member: Member, entry: Entry) -> None:
        """Queue a file's chunk work. Small files are cut (and, when they can be read from
        any thread, read) by the workers; large ones are streamed and cut here, block by
        block, so that no file is held whole in memory. safetensors and GGUF files, whatever
        their size, are cut here tensor by tensor (builder.tensors)."""
        size, content = entry.size, entry.content
        self.bytes_in += size
        model = is_model_file(entry.path)
        if size <= self.params.block_size and not model:
            if member.path is not None:
                self.counter.value += size
                self._add(ReadWhole(member.path, size), content, size)
                return
            if member.data is not None:
                whole = bytearray(size)
                read_exactly(member.data, memoryview(whole), entry.path)
                self._add(Whole(whole), content, size)
                return
        data: Readable | None = member.data
        if data is None and member.path is not None:
            data = FileReader(member.path, self.counter)
        if data is None:
            raise SourceError(f"{self.layer_name}: data of {show(entry.path)} is missing")
        try:
            cut = cut_model_file if model else cut_file
            for block in cut(self.cdc, self.params, data, size, entry.path):
                buf = memoryview(block.buf)
                views: list[memoryview] = []
                offset = 0
                for length in block.lengths:
                    views.append(buf[offset : offset + length])
                    offset += length
                self._add(Chunks(views), content, offset)
        finally:
            if isinstance(data, FileReader):
                data.close()

    def _flush(self) -> None:
        if self.jobs:
            for owners, results in self.pipeline.submit(self.jobs, self.owners):
                self._consume(owners, results)
            self.jobs, self.owners, self.batch_bytes = [], [], 0
        if self.progress is not None:
            self.progress(self.counter.value, self.total)

    def _consume(self, owners: list[int], results: list[list[Hashed]]) -> None:
        index, files = self.index, self.files
        for content, hashed_chunks in zip(owners, results, strict=True):
            chunk_list = files[content]
            for hashed in hashed_chunks:
                at = index.get(hashed.digest)
                if at is None and self.dictionary is not None:
                    at = self._reuse(hashed.digest)
                if at is None:
                    compression, stored = hashed.stored.wait()
                    if self.writer is None:
                        self.writer = DataBlobWriter(self.sink.begin())
                    chunk = self.writer.add(
                        ChunkDigest(hashed.digest), hashed.size, compression, stored
                    )
                    at = index[hashed.digest] = len(self.chunks)
                    self.chunks.append((len(self.blobs), chunk))
                    self.pipeline.release(hashed.digest)
                chunk_list.append(at)
            self.chunks_total += len(hashed_chunks)

    def _reuse(self, digest: bytes) -> int | None:
        """Reference a chunk another image already stores (found in the dictionary) in
        place: its blob joins this image's blob list, nothing is written."""
        assert self.dictionary is not None
        known = self.dictionary.get(ChunkDigest(digest))
        if known is None:
            return None
        ref = known.ref
        ext = self.external_index.get(ref.blob)
        if ext is None:
            ext = self.external_index[ref.blob] = len(self.external)
            self.external.append(known)
        at = self.index[digest] = len(self.chunks)
        # a negative ordinal marks an external blob (numbered after this image's own)
        chunk = BlobChunk(ref.digest, ref.offset, ref.stored_size, ref.size, ref.compression)
        self.chunks.append((-1 - ext, chunk))
        self.pipeline.release(digest)
        self.chunks_reused += 1
        self.bytes_reused += ref.size
        return at

    def _finish_layer(self) -> None:
        self._flush()
        for owners, results in self.pipeline.drain():
            self._consume(owners, results)
        if self.writer is not None:
            digest, size = self.writer.finish()
            self.writer = None
            self.blobs.append(blob_descriptor(digest, size))
            self.bytes_stored += size

    # -- layers --------------------------------------------------------------------------

    def _read_layer(self, members: Iterator[Member]) -> list[Entry]:
        entries: list[Entry] = []
        files = self.files
        for member in members:
            entry = member.entry
            if entry.kind is EntryKind.FILE:
                entry = with_content(entry, len(files))
                files.append(array("I"))
                if entry.size:
                    self._read_file(member, entry)
            entries.append(entry)
        return entries

    def run(self, source: LayerSource) -> BuiltImage:
        layers = source.layers
        sizes = [layer.size for layer in layers]
        self.total = None if None in sizes else sum(s or 0 for s in sizes)
        merger = Merger()
        try:
            for layer in layers:
                self.layer_name = layer.name
                members = layer.members(self.counter)
                try:
                    entries = self._read_layer(members)
                finally:
                    close = getattr(members, "close", None)
                    if close is not None:
                        close()  # stops a layer's reader thread at once on errors
                self._finish_layer()
                merger.apply(entries)
        finally:
            if self.writer is not None:
                self.writer.abort()
            self.pipeline.close()
        self._restore_sparse()
        return self._write_image(source, merger)

    def _restore_sparse(self) -> None:
        """An image should not list another image's big blob for a few of its chunks (a
        registry keeps, and a copy moves, the whole blob): chunks reused from an external
        blob of at least SPARSE_MIN_BLOB bytes of which they are under SPARSE_FRACTION are
        fetched (verified) and stored again, in one more blob of this image."""
        if not self.external or self.fetch is None:
            return
        used = [0] * len(self.external)
        for b, c in self.chunks:
            if b < 0:
                used[-1 - b] += c.stored_size
        sparse = {
            i
            for i, known in enumerate(self.external)
            if known.blob_size >= SPARSE_MIN_BLOB and used[i] < SPARSE_FRACTION * known.blob_size
        }
        if not sparse:
            return
        codec = ChunkCodec()
        writer = DataBlobWriter(self.sink.begin())
        ordinal = len(self.blobs)
        try:
            for at, (b, c) in enumerate(self.chunks):
                if b >= 0 or -1 - b not in sparse:
                    continue
                known = self.external[-1 - b]
                ref = ChunkRef(
                    c.digest, known.ref.blob, c.offset, c.stored_size, c.size, c.compression
                )
                stored = self.fetch(ref, known.home)
                codec.decode(stored, ref)  # verified before it is stored again
                self.chunks[at] = (ordinal, writer.add(c.digest, c.size, c.compression, stored))
                self.chunks_reused -= 1
                self.bytes_reused -= c.size
            digest, size = writer.finish()
        except BaseException:
            writer.abort()
            raise
        self.blobs.append(blob_descriptor(digest, size))
        self.bytes_stored += size
        keep = [i for i in range(len(self.external)) if i not in sparse]
        moved = {old: new for new, old in enumerate(keep)}
        self.chunks = [(b if b >= 0 else -1 - moved[-1 - b], c) for b, c in self.chunks]
        self.external = [self.external[i] for i in keep]
        self.external_index = {k.ref.blob: i for i, k in enumerate(self.external)}

    def _write_image(self, source: LayerSource, merger: Merger) -> BuiltImage:
        external = tuple(blob_descriptor(k.ref.blob, k.blob_size) for k in self.external)
        all_blobs = [*self.blobs, *external]
        blob_digests = [b.digest for b in all_blobs]
        own = len(self.blobs)
        refs = [
            ChunkRef(
                c.digest,
                blob_digests[b if b >= 0 else own - 1 - b],
                c.offset,
                c.stored_size,
                c.size,
                c.compression,
            )
            for b, c in self.chunks
        ]
        files = self.files
        specs = inode_specs(merger.root, lambda content: files[content])
        infos = [BlobInfo(b.digest, b.size) for b in all_blobs]
        prefetch = prefetch_indices(merger, self.prefetch_paths)
        stored = compress_bootstrap(encode_bootstrap(specs, refs, infos, prefetch=prefetch))
        boot = bootstrap_descriptor(stored)
        self.sink.put(stored)
        try:
            config_bytes = build_config(source.config, [*all_blobs, boot])
        except FormatError as exc:
            raise SourceError(str(exc)) from None
        config = Descriptor(MEDIA_TYPE_OCI_CONFIG, Digest.of(config_bytes), len(config_bytes))
        self.sink.put(config_bytes)
        annotations = {ANNOTATION_SOURCE_CONFIG: str(Digest.of(source.config))}
        ids = diff_ids(source.config)
        if ids:
            annotations[ANNOTATION_SOURCE_DIFF_IDS] = ",".join(ids)
        manifest = build_manifest(
            config, all_blobs, boot, subject=source.subject, annotations=annotations
        )
        raw = manifest.encode()
        if self.progress is not None:
            self.progress(self.counter.value, self.total)
        return BuiltImage(
            manifest=manifest,
            manifest_descriptor=Descriptor(MEDIA_TYPE_OCI_MANIFEST, Digest.of(raw), len(raw)),
            manifest_bytes=raw,
            bootstrap_bytes=stored,
            config=config,
            blobs=tuple(self.blobs),
            external=tuple((d, k.home) for d, k in zip(external, self.external, strict=True)),
            bootstrap=boot,
            stats=BuildStats(
                bytes_in=self.bytes_in,
                chunks_total=self.chunks_total,
                chunks_unique=len(self.chunks),
                bytes_stored=self.bytes_stored,
                blobs=len(self.blobs),
                chunks_reused=self.chunks_reused,
                bytes_reused=self.bytes_reused,
            ),
        )


def prefetch_indices(merger: Merger, paths: Sequence[str]) -> list[int]:
    """Inode indices of `paths` (absolute image paths of regular files) in the merged tree,
    in order, duplicates dropped. A missing path or a non-regular file is a UsageError."""
    if not paths:
        return []
    index = {id(node): i for i, node in enumerate(number_inodes(merger.root))}
    out: list[int] = []
    seen: set[int] = set()
    for path in paths:
        parts = [p for p in path.split("/") if p not in ("", ".")]
        node: Node | None = merger.lookup("/".join(parts).encode("utf-8", "surrogateescape"))
        if node is None or ".." in parts:
            raise UsageError(f"prefetch path {path!r} is not in the image")
        if node.entry.kind is not EntryKind.FILE:
            raise UsageError(f"prefetch path {path!r} is not a regular file")
        at = index[id(node)]
        if at not in seen:
            seen.add(at)
            out.append(at)
    return out


def build_image(
    source: LayerSource,
    sink: BlobSink,
    config: Config,
    *,
    progress: Progress | None = None,
    prefetch_paths: Sequence[str] = (),
    dictionary: ChunkDictionary | None = None,
    fetch: FetchStored | None = None,
) -> BuiltImage:
    """Convert `source` into an imagefs image whose blobs go to `sink`; `prefetch_paths`
    (absolute image paths of regular files) become the bootstrap's prefetch list. Chunks the
    `dictionary` knows are referenced where they are stored, not written again, unless
    they would be a small part of a big blob: those are fetched with `fetch` and stored
    again (without `fetch`, every known chunk is referenced)."""
    return _Builder(sink, config, progress, prefetch_paths, dictionary, fetch).run(source)
