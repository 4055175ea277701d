"""Helpers for the imagefs unit tests: build small images in memory, and hypothesis
strategies for random trees (with an independent model of what a reader must see)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from hypothesis import strategies as st

from imagefs.digest import ChunkDigest, Digest
from imagefs.format import (
    MAX_CHUNK_SIZE,
    MAX_NAME,
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

U32 = 2**32 - 1
U64 = 2**64 - 1
MTIME_MIN = -(2**63) * 10**9
MTIME_MAX = (2**63 - 1) * 10**9 + 999_999_999


# --------------------------------------------------------------------------- real blobs


@dataclass(frozen=True)
class PackedBlobs:
    blobs: dict[Digest, bytes]
    infos: list[BlobInfo]
    refs: list[ChunkRef]  # one per payload, in the order given (blob by blob)


def pack_blobs(payloads_by_blob: Sequence[Sequence[bytes]], *, gap: int = 0) -> PackedBlobs:
    """Write each list of payloads as one imagefs blob (frames back to back, `gap` filler
    bytes between them), and return the blobs with a ChunkRef per payload."""
    codec = ChunkCodec()
    blobs: dict[Digest, bytes] = {}
    infos: list[BlobInfo] = []
    refs: list[ChunkRef] = []
    for payloads in payloads_by_blob:
        data = bytearray()
        table: list[BlobChunk] = []
        for payload in payloads:
            compression, stored = codec.encode(payload)
            table.append(
                BlobChunk(
                    ChunkDigest.of(payload), len(data), len(stored), len(payload), compression
                )
            )
            data += stored + b"\xee" * gap
        blob = bytes(data) + encode_blob_tail(table, len(data))
        digest = Digest.of(blob)
        blobs[digest] = blob
        infos.append(BlobInfo(digest, len(blob)))
        refs.extend(
            ChunkRef(c.digest, digest, c.offset, c.stored_size, c.size, c.compression)
            for c in table
        )
    return PackedBlobs(blobs, infos, refs)


@dataclass
class TreeBuilder:
    """Build InodeSpecs by path: parents first; the root is inode 0."""

    specs: list[InodeSpec] = field(
        default_factory=lambda: [InodeSpec(Kind.DIR, 0o755, 0, 0, 1_700_000_000_000_000_000)]
    )
    _entries: dict[int, dict[bytes, int]] = field(default_factory=lambda: {0: {}})

    def _parent(self, path: bytes) -> tuple[int, bytes]:
        head, _, name = path.strip(b"/").rpartition(b"/")
        at = 0
        for part in filter(None, head.split(b"/")):
            at = self._entries[at][part]
        return at, name

    def add(self, path: bytes, spec: InodeSpec) -> int:
        parent, name = self._parent(path)
        self.specs.append(spec)
        index = len(self.specs) - 1
        self._entries[parent][name] = index
        if spec.kind is Kind.DIR:
            self._entries[index] = {}
        return index

    def dir(
        self, path: bytes, mode: int = 0o755, xattrs: tuple[tuple[bytes, bytes], ...] = ()
    ) -> int:
        return self.add(path, InodeSpec(Kind.DIR, mode, 0, 0, 1, xattrs=xattrs))

    def file(self, path: bytes, chunks: Sequence[ChunkRef], all_refs: Sequence[ChunkRef]) -> int:
        indices = tuple(all_refs.index(c) for c in chunks)
        size = sum(c.size for c in chunks)
        return self.add(path, InodeSpec(Kind.REG, 0o644, 0, 0, 2, size=size, chunks=indices))

    def link(self, path: bytes, index: int) -> None:
        parent, name = self._parent(path)
        self._entries[parent][name] = index

    def build(self) -> list[InodeSpec]:
        return [
            replace(spec, entries=tuple(sorted(self._entries[i].items())))
            if spec.kind is Kind.DIR
            else spec
            for i, spec in enumerate(self.specs)
        ]


# --------------------------------------------------------------------------- random trees


@dataclass(frozen=True)
class TreeCase:
    """A random tree, its encoding inputs, and the nlink/parent a reader must see."""

    inodes: list[InodeSpec]
    chunks: list[ChunkRef]
    blobs: list[BlobInfo]
    prefetch: list[int]
    nlink: list[int]
    parent: list[int]

    def encode(self) -> bytes:
        return encode_bootstrap(self.inodes, self.chunks, self.blobs, prefetch=self.prefetch)


def names() -> st.SearchStrategy[bytes]:
    """Valid entry names: any bytes but `/` and NUL (so also non-UTF-8), 1..255 bytes."""
    short = st.binary(min_size=1, max_size=12)
    long = st.binary(min_size=MAX_NAME - 2, max_size=MAX_NAME)
    return st.one_of(short, short, short, long).map(_as_name)


def _as_name(raw: bytes) -> bytes:
    name = raw.replace(b"/", b"_").replace(b"\0", b"~")
    return name + b"~" if name in (b".", b"..") else name


@st.composite
def chunk_tables(draw: st.DrawFn) -> tuple[list[ChunkRef], list[BlobInfo]]:
    raws = draw(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=3, unique=True))
    digests = [Digest.from_raw(r) for r in raws]
    chunks = [
        ChunkRef(
            ChunkDigest(draw(st.binary(min_size=32, max_size=32))),
            draw(st.sampled_from(digests)),
            draw(st.integers(0, 2**40)),
            draw(st.integers(0, U32)),
            draw(st.integers(1, MAX_CHUNK_SIZE)),
            draw(st.sampled_from(Compression)),
        )
        for _ in range(draw(st.integers(0, 6)))
    ]
    blobs = []
    for d in digests:
        end = max((c.offset + c.stored_size for c in chunks if c.blob == d), default=0)
        blobs.append(BlobInfo(d, end + draw(st.integers(0, 1000))))
    return chunks, blobs


def _xattrs() -> st.SearchStrategy[tuple[tuple[bytes, bytes], ...]]:
    return st.dictionaries(
        st.binary(min_size=1, max_size=16), st.binary(max_size=40), max_size=3
    ).map(lambda d: tuple(sorted(d.items())))


@st.composite
def tree_cases(draw: st.DrawFn, max_inodes: int = 16) -> TreeCase:
    chunks, blobs = draw(chunk_tables())
    n = draw(st.integers(1, max_inodes))
    kinds = [Kind.DIR, *draw(st.lists(st.sampled_from(Kind), min_size=n - 1, max_size=n - 1))]
    # Each inode is first named in a directory created before it; then a few hard links.
    creator = [0] * n
    for i in range(1, n):
        creator[i] = draw(st.sampled_from([d for d in range(i) if kinds[d] is Kind.DIR]))
    named: dict[int, list[int]] = {d: [] for d in range(n) if kinds[d] is Kind.DIR}
    for i in range(1, n):
        named[creator[i]].append(i)
    files = [i for i in range(n) if kinds[i] is not Kind.DIR]
    if files:
        for _ in range(draw(st.integers(0, 3))):
            named[draw(st.sampled_from(sorted(named)))].append(draw(st.sampled_from(files)))
    # Shuffle the inode order (the root stays at index 0).
    order = [0, *draw(st.permutations(range(1, n)))]
    new = {old: at for at, old in enumerate(order)}

    specs: list[InodeSpec | None] = [None] * n
    for old in range(n):
        kind = kinds[old]
        spec = InodeSpec(
            kind,
            draw(st.integers(0, 0o7777)),
            draw(st.integers(0, U32)),
            draw(st.integers(0, U32)),
            draw(st.integers(MTIME_MIN, MTIME_MAX)),
            xattrs=draw(_xattrs()),
        )
        if kind is Kind.DIR:
            children = named[old]
            entry_names = draw(
                st.lists(names(), min_size=len(children), max_size=len(children), unique=True)
            )
            entries = tuple(sorted(zip(entry_names, (new[c] for c in children), strict=True)))
            spec = replace(spec, entries=entries)
        elif kind is Kind.REG:
            picked: tuple[int, ...] = ()
            if chunks:
                picked = tuple(draw(st.lists(st.integers(0, len(chunks) - 1), max_size=5)))
            spec = replace(spec, chunks=picked, size=sum(chunks[c].size for c in picked))
        elif kind is Kind.LNK:
            spec = replace(spec, target=draw(st.binary(min_size=1, max_size=64)))
        elif kind in (Kind.CHR, Kind.BLK):
            spec = replace(
                spec,
                rdev_major=draw(st.integers(0, U32)),
                rdev_minor=draw(st.integers(0, U32)),
            )
        specs[new[old]] = spec
    inodes = [s for s in specs if s is not None]
    assert len(inodes) == n

    # The model of derived fields: written from the rules in FORMAT.md.
    nlink = [0] * n
    parent = [0] * n
    for index, spec in enumerate(inodes):
        if spec.kind is Kind.DIR:
            nlink[index] += 2
            for _, child in spec.entries:
                if inodes[child].kind is Kind.DIR:
                    nlink[index] += 1
                    parent[child] = index
    for index in range(n):
        if inodes[index].kind is not Kind.DIR:
            holders = [d for d, s in enumerate(inodes) if any(c == index for _, c in s.entries)]
            nlink[index] = max(1, sum(c == index for s in inodes for _, c in s.entries))
            parent[index] = min(holders, default=0)
    prefetch = draw(st.lists(st.integers(0, n - 1), max_size=4))
    return TreeCase(inodes, chunks, blobs, prefetch, nlink, parent)
