"""The imagefs on-disk format: blob layout, bootstrap layout, media types and annotations.

This module alone turns bytes into frozen objects and back; `FORMAT.md` beside it documents
every record. All integers are little-endian. Readers reject an unknown major version with
`UnsupportedVersionError` and any impossible size or offset with `FormatError`, never a
decode crash.
"""

from __future__ import annotations

import bisect
import enum
import stat
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import zstandard

from imagefs.digest import ChunkDigest, Digest
from imagefs.errors import FormatError, IntegrityError, UnsupportedVersionError
from imagefs.oci import MEDIA_TYPE_OCI_MANIFEST, Descriptor, Manifest, canonical_json, parse_json

# ---------------------------------------------------------------------------------------------
# Media types and annotations of an imagefs image (see FORMAT.md, "The imagefs image").

# Layers carry an ordinary OCI layer media type, so that containerd treats them as layers
# (and hands their `containerd.io/snapshot/` annotations to snapshotters as labels); the
# annotations below say which layer is what. Format 1.0 used media types of its own, which
# readers still accept.
MEDIA_TYPE_BLOB = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_BOOTSTRAP = "application/vnd.oci.image.layer.v1.tar"
LEGACY_MEDIA_TYPE_BLOB = "application/vnd.imagefs.blob.v1"
LEGACY_MEDIA_TYPE_BOOTSTRAP = "application/vnd.imagefs.bootstrap.v1+zstd"
MEDIA_TYPE_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"

ANNOTATION_FORMAT = "dev.imagefs.format"  # on the manifest: "1.0"
ANNOTATION_SOURCE_CONFIG = "dev.imagefs.source.config"  # source config digest, as converted
ANNOTATION_SOURCE_DIFF_IDS = "dev.imagefs.source.diff-ids"  # comma-separated, source order
# On layer descriptors; containerd forwards `containerd.io/snapshot/*` annotations as labels.
ANNOTATION_LAYER_BLOB = "containerd.io/snapshot/imagefs.blob"  # "true" on data blobs
ANNOTATION_LAYER_BOOTSTRAP = "containerd.io/snapshot/imagefs.bootstrap"  # "true" on bootstrap

FORMAT_MAJOR = 1
FORMAT_MINOR = 0

# ---------------------------------------------------------------------------------------------
# Chunks and blobs


class Compression(enum.IntEnum):
    """How a chunk's bytes are stored in its blob."""

    RAW = 0
    ZSTD = 1


@dataclass(frozen=True, slots=True)
class BlobChunk:
    """One chunk as it sits in a blob: where its stored bytes are, and how they are stored."""

    digest: ChunkDigest
    offset: int  # of the stored bytes within the blob
    stored_size: int
    size: int  # uncompressed
    compression: Compression


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """A chunk of the image: which blob holds it and where (a `BlobChunk` plus its blob)."""

    digest: ChunkDigest
    blob: Digest
    offset: int
    stored_size: int
    size: int
    compression: Compression


BLOB_MAGIC = b"IFSBLOB\x00"
_BLOB_ENTRY = struct.Struct("<32sQIIII")  # digest, offset, stored, size, compression, reserved
_BLOB_FOOTER = struct.Struct("<8sHHIQII")  # magic, major, minor, flags, table off, count, rsvd
BLOB_FOOTER_SIZE = _BLOB_FOOTER.size
BLOB_ENTRY_SIZE = _BLOB_ENTRY.size
MAX_CHUNK_SIZE = 16 * 1024 * 1024  # no chunk may claim more uncompressed bytes than this


def encode_blob_tail(chunks: Sequence[BlobChunk], table_offset: int) -> bytes:
    """The chunk table and footer that follow a blob's chunk data (which ends at table_offset)."""
    for c in chunks:
        if c.offset + c.stored_size > table_offset or c.size > MAX_CHUNK_SIZE:
            raise FormatError(f"chunk {c.digest} lies outside the chunk data or is too large")
    try:
        parts = [
            _BLOB_ENTRY.pack(c.digest.raw, c.offset, c.stored_size, c.size, int(c.compression), 0)
            for c in chunks
        ]
        parts.append(
            _BLOB_FOOTER.pack(
                BLOB_MAGIC, FORMAT_MAJOR, FORMAT_MINOR, 0, table_offset, len(chunks), 0
            )
        )
    except struct.error as exc:
        raise FormatError(f"blob chunk table field out of range: {exc}") from None
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class BlobFooter:
    table_offset: int
    chunk_count: int

    @property
    def table_size(self) -> int:
        return self.chunk_count * BLOB_ENTRY_SIZE


def decode_blob_footer(data: bytes, blob_size: int) -> BlobFooter:
    """Decode the fixed-size footer (the last BLOB_FOOTER_SIZE bytes of a blob)."""
    if len(data) != BLOB_FOOTER_SIZE:
        raise FormatError("blob is too short to hold an imagefs footer")
    magic, major, _minor, _flags, table_offset, count, _ = _BLOB_FOOTER.unpack(data)
    if magic != BLOB_MAGIC:
        raise FormatError("not an imagefs blob (bad footer magic)")
    if major != FORMAT_MAJOR:
        raise UnsupportedVersionError(
            f"imagefs blob format {major}.x is not supported (this reader knows {FORMAT_MAJOR}.x)"
        )
    if table_offset + count * BLOB_ENTRY_SIZE + BLOB_FOOTER_SIZE != blob_size:
        raise FormatError("blob chunk table does not fit the blob size")
    return BlobFooter(table_offset, count)


def decode_blob_table(data: bytes, footer: BlobFooter) -> list[BlobChunk]:
    """Decode a blob's chunk table; every entry must lie inside the chunk data area."""
    if len(data) != footer.table_size:
        raise FormatError("blob chunk table has the wrong size")
    out = []
    for raw, offset, stored, size, comp, _ in _BLOB_ENTRY.iter_unpack(data):
        if offset + stored > footer.table_offset or size > MAX_CHUNK_SIZE:
            raise FormatError("blob chunk table entry points outside the chunk data")
        out.append(BlobChunk(ChunkDigest(raw), offset, stored, size, _compression(comp)))
    return out


def _compression(value: int) -> Compression:
    try:
        return Compression(value)
    except ValueError:
        raise FormatError(f"unknown chunk compression {value}") from None


class ChunkCodec:
    """Compress chunks (zstd, or raw when it saves too little) and decode+verify them.

    Not thread-safe: use one per thread.
    """

    def __init__(self, level: int = 3, min_saving: float = 0.05) -> None:
        self._cctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
        self._dctx = zstandard.ZstdDecompressor()
        self._min_saving = min_saving

    def encode(self, data: bytes | memoryview) -> tuple[Compression, bytes]:
        size = len(data)
        packed = self._cctx.compress(data)
        if len(packed) <= size * (1.0 - self._min_saving):
            return Compression.ZSTD, packed
        return Compression.RAW, bytes(data)

    def decode(self, stored: bytes | memoryview, ref: ChunkRef | BlobChunk) -> bytes:
        """Stored bytes -> uncompressed bytes, verified against the chunk's blake3 digest."""
        if len(stored) != ref.stored_size:
            raise IntegrityError(
                f"chunk {ref.digest} has {len(stored)} stored bytes, expected {ref.stored_size}"
            )
        if ref.compression is Compression.ZSTD:
            try:
                # zstandard allocates the size a frame header claims (ignoring
                # max_output_size), so check the claim before decompressing.
                claimed = zstandard.get_frame_parameters(stored).content_size
                if claimed != ref.size:
                    raise IntegrityError(
                        f"chunk {ref.digest} frame claims {claimed} bytes, expected {ref.size}"
                    )
                data = self._dctx.decompress(stored, max_output_size=ref.size)
            except zstandard.ZstdError as exc:
                raise IntegrityError(f"chunk {ref.digest} does not decompress: {exc}") from None
        else:
            data = bytes(stored)
        if len(data) != ref.size or ChunkDigest.of(data) != ref.digest:
            raise IntegrityError(f"chunk {ref.digest} does not match its digest")
        return data


# ---------------------------------------------------------------------------------------------
# Bootstrap


class Kind(enum.IntEnum):
    """File types, as the S_IFMT bits of st_mode."""

    REG = stat.S_IFREG
    DIR = stat.S_IFDIR
    LNK = stat.S_IFLNK
    CHR = stat.S_IFCHR
    BLK = stat.S_IFBLK
    FIFO = stat.S_IFIFO
    SOCK = stat.S_IFSOCK


@dataclass(frozen=True, slots=True)
class InodeSpec:
    """One inode as the builder hands it to `encode_bootstrap`.

    `entries` (directories) maps names to inode indices and is sorted by name; `chunks`
    (regular files) lists chunk-table indices in file order; `xattrs` is sorted by name.
    """

    kind: Kind
    mode: int  # permission bits, including setuid/setgid/sticky
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    rdev_major: int = 0
    rdev_minor: int = 0
    target: bytes = b""
    chunks: tuple[int, ...] = ()
    entries: tuple[tuple[bytes, int], ...] = ()
    xattrs: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: Digest
    size: int


@dataclass(frozen=True, slots=True)
class Inode:
    """A decoded inode. `index` is its position in the bootstrap; the root is index 0."""

    index: int
    mode: int  # full st_mode (type | permission bits)
    uid: int
    gid: int
    nlink: int
    size: int
    mtime_ns: int
    rdev_major: int
    rdev_minor: int
    parent: int

    @property
    def kind(self) -> Kind:
        return Kind(stat.S_IFMT(self.mode))

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


BOOTSTRAP_MAGIC = b"IFSBOOT\x00"
_HEADER = struct.Struct("<8sHHII")  # magic, major, minor, flags, section count
_SECTION = struct.Struct("<QQ")  # offset, length
# mode uid gid nlink size mtime_s mtime_ns rdev_maj rdev_min a b xattr_first xattr_count parent
_INODE = struct.Struct("<IIIIQqIIIIIIII")
_DIRENT = struct.Struct("<III")  # name offset, name length, inode index
_CHUNK = struct.Struct("<32sIQIII")  # digest, blob index, offset, stored size, size, compression
_BLOB = struct.Struct("<32sQ")  # sha256, size
_XATTR = struct.Struct("<IIII")  # name offset, name length, value offset, value length


class Section(enum.IntEnum):
    INODES = 0
    DIRENTS = 1
    REFS = 2  # u32 chunk index per file chunk
    REF_OFFSETS = 3  # u64 file offset per file chunk
    CHUNKS = 4
    BLOBS = 5
    XATTRS = 6
    STRINGS = 7
    PREFETCH = 8  # u32 inode index, in prefetch order


_RECORD_SIZE = {
    Section.INODES: _INODE.size,
    Section.DIRENTS: _DIRENT.size,
    Section.REFS: 4,
    Section.REF_OFFSETS: 8,
    Section.CHUNKS: _CHUNK.size,
    Section.BLOBS: _BLOB.size,
    Section.XATTRS: _XATTR.size,
    Section.STRINGS: 1,
    Section.PREFETCH: 4,
}
_HEADER_SIZE = _HEADER.size + len(Section) * _SECTION.size
_U32_MAX = 0xFFFFFFFF
MAX_NAME = 255


def _align8(n: int) -> int:
    return (n + 7) & ~7


class _Strings:
    """A deduplicating byte heap, in first-use order (deterministic)."""

    def __init__(self) -> None:
        self._index: dict[bytes, int] = {}
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, value: bytes) -> int:
        at = self._index.get(value)
        if at is None:
            at = self._size
            self._index[value] = at
            self._parts.append(value)
            self._size += len(value)
            if self._size > _U32_MAX:
                raise FormatError("bootstrap string heap exceeds 4 GiB")
        return at

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


def encode_bootstrap(
    inodes: Sequence[InodeSpec],
    chunks: Sequence[ChunkRef],
    blobs: Sequence[BlobInfo],
    *,
    prefetch: Sequence[int] = (),
) -> bytes:
    """Encode a tree (inode 0 is the root directory) into bootstrap bytes (uncompressed).

    Deterministic: the same inputs give the same bytes. Link counts and parents are derived.
    `blobs` lists every blob a chunk lives in, in the order the image's manifest lists them.
    A value that does not fit its field (a negative or > u32 uid, ...) is a `FormatError`.
    """
    try:
        return _encode_bootstrap(inodes, chunks, blobs, prefetch)
    except struct.error as exc:
        raise FormatError(f"bootstrap field out of range: {exc}") from None


def _encode_bootstrap(
    inodes: Sequence[InodeSpec],
    chunks: Sequence[ChunkRef],
    blobs: Sequence[BlobInfo],
    prefetch: Sequence[int],
) -> bytes:
    if not inodes or inodes[0].kind is not Kind.DIR:
        raise FormatError("bootstrap root must be a directory")
    n = len(inodes)
    if n > _U32_MAX:
        raise FormatError("too many inodes")
    nlink = [0] * n
    parent = [0] * n
    named = [False] * n  # directories already named by an entry
    for index, spec in enumerate(inodes):
        if spec.kind is Kind.DIR:
            nlink[index] += 2
            for name, child in spec.entries:
                if not 0 < child < n:
                    raise FormatError(f"directory entry {name!r} points at a bad inode")
                if inodes[child].kind is Kind.DIR:
                    if named[child]:
                        raise FormatError("a directory is linked twice")
                    named[child] = True
                    nlink[index] += 1
                    parent[child] = index
                else:
                    if not nlink[child]:
                        parent[child] = index
                    nlink[child] += 1

    strings = _Strings()
    blob_index = {b.digest: i for i, b in enumerate(blobs)}
    if len(blob_index) != len(blobs):
        raise FormatError("a blob is listed twice")
    blob_records = [_BLOB.pack(b.digest.raw, b.size) for b in blobs]
    chunk_records = []
    for c in chunks:
        bi = blob_index.get(c.blob)
        if bi is None:
            raise FormatError(f"chunk {c.digest} lives in unlisted blob {c.blob}")
        if c.size > MAX_CHUNK_SIZE:
            raise FormatError(f"chunk {c.digest} is larger than {MAX_CHUNK_SIZE} bytes")
        chunk_records.append(
            _CHUNK.pack(c.digest.raw, bi, c.offset, c.stored_size, c.size, int(c.compression))
        )

    inode_records = []
    dirents: list[bytes] = []
    refs: list[int] = []
    ref_offsets: list[int] = []
    xattr_records: list[bytes] = []
    nchunks = len(chunks)
    for index, spec in enumerate(inodes):
        a = b = 0
        if spec.kind is Kind.DIR:
            a, b = len(dirents), len(spec.entries)
            previous = None
            for name, child in spec.entries:
                if not name or len(name) > MAX_NAME or b"/" in name or b"\0" in name:
                    raise FormatError(f"invalid file name {name!r}")
                if name in (b".", b"..") or (previous is not None and name <= previous):
                    raise FormatError("directory entries must be unique and sorted by name")
                previous = name
                dirents.append(_DIRENT.pack(strings.add(name), len(name), child))
        elif spec.kind is Kind.REG:
            a, b = len(refs), len(spec.chunks)
            offset = 0
            for ci in spec.chunks:
                if not 0 <= ci < nchunks:
                    raise FormatError("file references a chunk outside the chunk table")
                if not chunks[ci].size:
                    raise FormatError("a file's chunks must not be empty")
                refs.append(ci)
                ref_offsets.append(offset)
                offset += chunks[ci].size
            if offset != spec.size:
                raise FormatError(f"file chunks add up to {offset} bytes, size says {spec.size}")
        elif spec.kind is Kind.LNK:
            a, b = strings.add(spec.target), len(spec.target)
        xfirst = len(xattr_records)
        for key, value in spec.xattrs:
            xattr_records.append(
                _XATTR.pack(strings.add(key), len(key), strings.add(value), len(value))
            )
        mtime_s, mtime_ns = divmod(spec.mtime_ns, 1_000_000_000)
        if spec.kind is Kind.REG:
            size = spec.size
        elif spec.kind is Kind.LNK:
            size = len(spec.target)
        else:
            size = 0
        inode_records.append(
            _INODE.pack(
                int(spec.kind) | (spec.mode & 0o7777),
                spec.uid,
                spec.gid,
                nlink[index] or 1,
                size,
                mtime_s,
                mtime_ns,
                spec.rdev_major,
                spec.rdev_minor,
                a,
                b,
                xfirst,
                len(spec.xattrs),
                parent[index],
            )
        )
    for p in prefetch:
        if not 0 <= p < n:
            raise FormatError("prefetch entry points at a bad inode")

    bodies = {
        Section.INODES: b"".join(inode_records),
        Section.DIRENTS: b"".join(dirents),
        Section.REFS: struct.pack(f"<{len(refs)}I", *refs),
        Section.REF_OFFSETS: struct.pack(f"<{len(ref_offsets)}Q", *ref_offsets),
        Section.CHUNKS: b"".join(chunk_records),
        Section.BLOBS: b"".join(blob_records),
        Section.XATTRS: b"".join(xattr_records),
        Section.STRINGS: strings.getvalue(),
        Section.PREFETCH: struct.pack(f"<{len(prefetch)}I", *prefetch),
    }
    out = bytearray(_align8(_HEADER_SIZE))
    table = []
    for section in Section:
        body = bodies[section]
        table.append((len(out), len(body)))
        out += body
        out += b"\0" * (_align8(len(out)) - len(out))
    header = _HEADER.pack(BOOTSTRAP_MAGIC, FORMAT_MAJOR, FORMAT_MINOR, 0, len(Section))
    header += b"".join(_SECTION.pack(o, ln) for o, ln in table)
    out[: len(header)] = header
    return bytes(out)


def _cast(view: memoryview, code: Literal["I", "Q"]) -> memoryview[int]:
    """A typed little-endian array over `view` (byte-swapped copy on big-endian hosts)."""
    if sys.byteorder == "little":
        return view.cast(code)
    import array

    arr = array.array(code, view.tobytes())  # pragma: no cover - big-endian hosts only
    arr.byteswap()  # pragma: no cover
    return memoryview(arr)  # pragma: no cover


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """A decoded bootstrap. Decoding validates the header and section table in O(1);
    records are read lazily and each accessor checks the indices it follows."""

    data: bytes
    sections: tuple[memoryview, ...]
    refs: memoryview  # u32
    ref_offsets: memoryview  # u64
    prefetch: tuple[int, ...]
    blobs: tuple[BlobInfo, ...]
    inode_count: int
    chunk_count: int
    strings_size: int
    minor: int = 0
    _chunk_blobs: tuple[Digest, ...] = field(default=(), repr=False)

    @classmethod
    def decode(cls, data: bytes) -> Bootstrap:
        if len(data) < _HEADER.size:
            raise FormatError("bootstrap is too short")
        magic, major, minor, _flags, count = _HEADER.unpack_from(data, 0)
        if magic != BOOTSTRAP_MAGIC:
            raise FormatError("not an imagefs bootstrap (bad magic)")
        if major != FORMAT_MAJOR:
            raise UnsupportedVersionError(
                f"imagefs bootstrap format {major}.{minor} is not supported "
                f"(this reader knows {FORMAT_MAJOR}.x)"
            )
        if count < len(Section) or _HEADER.size + count * _SECTION.size > len(data):
            raise FormatError("bootstrap section table is truncated")
        mv = memoryview(data)
        sections = []
        for section in Section:
            offset, length = _SECTION.unpack_from(data, _HEADER.size + section * _SECTION.size)
            if offset + length > len(data) or offset % 8:
                raise FormatError(f"bootstrap section {section.name} lies outside the bootstrap")
            if length % _RECORD_SIZE[section]:
                raise FormatError(f"bootstrap section {section.name} has an impossible size")
            sections.append(mv[offset : offset + length])
        inode_count = len(sections[Section.INODES]) // _INODE.size
        refs = _cast(sections[Section.REFS], "I")
        ref_offsets = _cast(sections[Section.REF_OFFSETS], "Q")
        if inode_count == 0:
            raise FormatError("bootstrap has no root inode")
        if len(refs) != len(ref_offsets):
            raise FormatError("bootstrap chunk reference sections disagree")
        blobs = tuple(
            BlobInfo(Digest.from_raw(raw), size)
            for raw, size in _BLOB.iter_unpack(sections[Section.BLOBS])
        )
        prefetch = tuple(_cast(sections[Section.PREFETCH], "I"))
        if any(p >= inode_count for p in prefetch):
            raise FormatError("bootstrap prefetch list points at a missing inode")
        boot = cls(
            data=data,
            sections=tuple(sections),
            refs=refs,
            ref_offsets=ref_offsets,
            prefetch=prefetch,
            blobs=blobs,
            inode_count=inode_count,
            chunk_count=len(sections[Section.CHUNKS]) // _CHUNK.size,
            strings_size=len(sections[Section.STRINGS]),
            minor=minor,
            _chunk_blobs=tuple(b.digest for b in blobs),
        )
        if not boot.inode(0).is_dir:
            raise FormatError("bootstrap root is not a directory")
        return boot

    # -- raw records -----------------------------------------------------------------------

    def _inode_tuple(self, index: int) -> tuple[int, ...]:
        if not 0 <= index < self.inode_count:
            raise FormatError(f"inode {index} does not exist")
        return _INODE.unpack_from(self.sections[Section.INODES], index * _INODE.size)

    def _check_string(self, offset: int, length: int) -> None:
        if offset + length > self.strings_size:
            raise FormatError("bootstrap string reference lies outside the string heap")

    def _string(self, offset: int, length: int) -> bytes:
        self._check_string(offset, length)
        return bytes(self.sections[Section.STRINGS][offset : offset + length])

    def inode(self, index: int) -> Inode:
        t = self._inode_tuple(index)
        mode = t[0]
        if stat.S_IFMT(mode) not in _KINDS:
            raise FormatError(f"inode {index} has an unknown file type")
        return Inode(
            index=index,
            mode=mode,
            uid=t[1],
            gid=t[2],
            nlink=t[3],
            size=t[4],
            mtime_ns=t[5] * 1_000_000_000 + t[6],
            rdev_major=t[7],
            rdev_minor=t[8],
            parent=t[13],
        )

    def _extent(self, index: int, kind: int) -> tuple[int, int]:
        t = self._inode_tuple(index)
        if stat.S_IFMT(t[0]) != kind:
            return 0, 0
        return t[9], t[10]

    # -- directories -------------------------------------------------------------------------

    def _dirent(self, at: int) -> tuple[bytes, int]:
        section = self.sections[Section.DIRENTS]
        if (at + 1) * _DIRENT.size > len(section):
            raise FormatError("directory points outside the entry table")
        off, length, child = _DIRENT.unpack_from(section, at * _DIRENT.size)
        if not 0 < child < self.inode_count:
            raise FormatError("directory entry points at a missing inode")
        return self._string(off, length), child

    def entries(self, index: int) -> Iterator[tuple[bytes, int]]:
        """(name, inode index) of a directory, sorted by name."""
        first, count = self._extent(index, stat.S_IFDIR)
        for at in range(first, first + count):
            yield self._dirent(at)

    def lookup(self, index: int, name: bytes) -> int | None:
        first, count = self._extent(index, stat.S_IFDIR)
        lo, hi = first, first + count
        while lo < hi:
            mid = (lo + hi) // 2
            entry, child = self._dirent(mid)
            if entry == name:
                return child
            if entry < name:
                lo = mid + 1
            else:
                hi = mid
        return None

    # -- symlinks and xattrs -----------------------------------------------------------------

    def symlink_target(self, index: int) -> bytes:
        offset, length = self._extent(index, stat.S_IFLNK)
        return self._string(offset, length)

    def _xattr_records(self, index: int) -> Iterator[tuple[int, int, int, int]]:
        t = self._inode_tuple(index)
        first, count = t[11], t[12]
        section = self.sections[Section.XATTRS]
        if (first + count) * _XATTR.size > len(section):
            raise FormatError(f"inode {index} points outside the xattr table")
        for at in range(first, first + count):
            yield _XATTR.unpack_from(section, at * _XATTR.size)

    def xattrs(self, index: int) -> list[tuple[bytes, bytes]]:
        return [
            (self._string(ko, kl), self._string(vo, vl))
            for ko, kl, vo, vl in self._xattr_records(index)
        ]

    # -- file data ---------------------------------------------------------------------------

    def file_extent(self, index: int) -> tuple[int, int]:
        """(first, count) of a regular file's entries in `refs` / `ref_offsets`."""
        first, count = self._extent(index, stat.S_IFREG)
        if first + count > len(self.refs):
            raise FormatError(f"inode {index} points outside the chunk reference table")
        return first, count

    def chunk(self, chunk_index: int) -> ChunkRef:
        if not 0 <= chunk_index < self.chunk_count:
            raise FormatError(f"chunk {chunk_index} does not exist")
        raw, bi, offset, stored, size, comp = _CHUNK.unpack_from(
            self.sections[Section.CHUNKS], chunk_index * _CHUNK.size
        )
        if bi >= len(self._chunk_blobs) or size > MAX_CHUNK_SIZE:
            raise FormatError(f"chunk {chunk_index} has an impossible blob or size")
        return ChunkRef(
            ChunkDigest(raw), self._chunk_blobs[bi], offset, stored, size, _compression(comp)
        )

    def file_chunks(
        self, index: int, offset: int = 0, end: int | None = None
    ) -> Iterator[tuple[int, ChunkRef]]:
        """(file offset, chunk) for the chunks of a regular file covering [offset, end)."""
        first, count = self.file_extent(index)
        stop = first + count
        refs, ref_offsets = self.refs, self.ref_offsets
        # The last chunk starting at or before `offset` (chunks are never empty, so file
        # offsets strictly increase; a crafted bootstrap can break that only for itself).
        at = max(first, bisect.bisect_right(ref_offsets, offset, first, stop) - 1)
        while at < stop:
            start = ref_offsets[at]
            if end is not None and start >= end:
                break
            yield start, self.chunk(refs[at])
            at += 1

    def chunks(self) -> Iterator[ChunkRef]:
        for i in range(self.chunk_count):
            yield self.chunk(i)

    def validate(self) -> None:
        """Decode every record and check every cross-reference (used by `imagefs check`).

        Also checks the directory graph is a tree: each directory other than the root is
        named by exactly one entry, in the directory its `parent` field names (so a walk
        from the root terminates)."""
        # The encoder gives every directory, file and xattr list its own run of records: a
        # crafted bootstrap whose inodes share runs would make the walk below quadratic.
        runs = {stat.S_IFDIR: 0, stat.S_IFREG: 0, 0: 0}
        for index in range(self.inode_count):
            t = self._inode_tuple(index)
            kind = stat.S_IFMT(t[0])
            if kind in runs:
                runs[kind] += t[10]
            runs[0] += t[12]
        if (
            runs[stat.S_IFDIR] * _DIRENT.size > len(self.sections[Section.DIRENTS])
            or runs[stat.S_IFREG] > len(self.refs)
            or runs[0] * _XATTR.size > len(self.sections[Section.XATTRS])
        ):
            raise FormatError("bootstrap inodes share directory, chunk or xattr records")
        blob_sizes = {b.digest: b.size for b in self.blobs}
        for c in range(self.chunk_count):
            ref = self.chunk(c)
            if ref.offset + ref.stored_size > blob_sizes[ref.blob]:
                raise FormatError(f"chunk {c} lies outside its blob")
        named_dirs: set[int] = set()
        for index in range(self.inode_count):
            node = self.inode(index)
            # check string ranges without copying them: strings are shared, so copying
            # each inode's would cost inodes x heap on a crafted bootstrap
            for ko, kl, vo, vl in self._xattr_records(index):
                self._check_string(ko, kl)
                self._check_string(vo, vl)
            if node.is_dir:
                previous = None
                for name, child in self.entries(index):
                    if previous is not None and name <= previous:
                        raise FormatError(f"directory inode {index} is not sorted")
                    previous = name
                    if self.inode(child).is_dir:
                        if child in named_dirs or self.inode(child).parent != index:
                            raise FormatError(f"directory inode {child} is linked twice")
                        named_dirs.add(child)
            elif node.is_symlink:
                self._check_string(*self._extent(index, stat.S_IFLNK))
            elif node.is_reg:
                total = 0
                first, count = self.file_extent(index)
                for at in range(first, first + count):
                    if self.ref_offsets[at] != total:
                        raise FormatError(f"inode {index} has inconsistent chunk offsets")
                    size = self.chunk(self.refs[at]).size
                    if not size:
                        raise FormatError(f"inode {index} references an empty chunk")
                    total += size
                if total != node.size:
                    raise FormatError(f"inode {index} chunks do not add up to its size")


_KINDS = frozenset(int(k) for k in Kind)


def compress_bootstrap(raw: bytes) -> bytes:
    """The bootstrap as stored in its OCI blob: one zstd frame."""
    return zstandard.ZstdCompressor(level=9, write_content_size=True).compress(raw)


MAX_BOOTSTRAP_SIZE = 4 * 1024 * 1024 * 1024
_ZSTD_MAX_RATIO = 128 * 1024 // 3 + 1  # output bytes per input byte a zstd frame can reach


def decompress_bootstrap(stored: bytes) -> bytes:
    try:
        params = zstandard.get_frame_parameters(stored)
        if params.content_size > MAX_BOOTSTRAP_SIZE:
            raise FormatError("bootstrap claims an impossible size")
        # decompress() allocates the claimed size up front: refuse a claim the input cannot
        # hold (a zstd block has a 3-byte header and decodes to at most 128 KiB), so that a
        # 10-byte frame cannot make us allocate 4 GiB.
        if params.content_size > len(stored) * _ZSTD_MAX_RATIO:
            raise FormatError("bootstrap claims an impossible size")
        return zstandard.ZstdDecompressor().decompress(stored, max_output_size=MAX_BOOTSTRAP_SIZE)
    except zstandard.ZstdError as exc:
        raise FormatError(f"bootstrap does not decompress: {exc}") from None


def load_bootstrap(stored: bytes) -> Bootstrap:
    return Bootstrap.decode(decompress_bootstrap(stored))


# ---------------------------------------------------------------------------------------------
# The imagefs image: an OCI image manifest over the data blobs and the bootstrap


@dataclass(frozen=True, slots=True)
class ImagefsImage:
    """An imagefs image as its manifest describes it."""

    manifest: Manifest
    blobs: tuple[Descriptor, ...]
    bootstrap: Descriptor


def build_config(source_config: bytes, layers: Sequence[Descriptor]) -> bytes:
    """The image config of an imagefs image: the source config with `rootfs.diff_ids`
    replaced by the digests of the imagefs layers (blobs, then bootstrap), so that
    container runtimes see one diff ID per layer. Everything else is kept as it was."""
    doc = parse_json(source_config, "source image config")
    doc["rootfs"] = {"type": "layers", "diff_ids": [str(d.digest) for d in layers]}
    return canonical_json(doc)


def build_manifest(
    config: Descriptor,
    blobs: Sequence[Descriptor],
    bootstrap: Descriptor,
    *,
    subject: Descriptor | None,
    annotations: dict[str, str] | None = None,
) -> Manifest:
    return Manifest(
        MEDIA_TYPE_OCI_MANIFEST,
        config,
        (*blobs, bootstrap),
        subject,
        {ANNOTATION_FORMAT: f"{FORMAT_MAJOR}.{FORMAT_MINOR}", **(annotations or {})},
    )


def blob_descriptor(digest: Digest, size: int) -> Descriptor:
    return Descriptor(MEDIA_TYPE_BLOB, digest, size, {ANNOTATION_LAYER_BLOB: "true"})


def bootstrap_descriptor(stored: bytes) -> Descriptor:
    return Descriptor.of(MEDIA_TYPE_BOOTSTRAP, stored, **{ANNOTATION_LAYER_BOOTSTRAP: "true"})


def is_bootstrap_layer(layer: Descriptor) -> bool:
    return (
        layer.annotations.get(ANNOTATION_LAYER_BOOTSTRAP) == "true"
        or layer.media_type == LEGACY_MEDIA_TYPE_BOOTSTRAP
    )


def is_blob_layer(layer: Descriptor) -> bool:
    return (
        layer.annotations.get(ANNOTATION_LAYER_BLOB) == "true"
        or layer.media_type == LEGACY_MEDIA_TYPE_BLOB
    )


def is_imagefs_manifest(manifest: Manifest) -> bool:
    return any(is_bootstrap_layer(layer) for layer in manifest.layers)


def parse_imagefs_manifest(manifest: Manifest) -> ImagefsImage:
    """Split an imagefs manifest into its blobs and bootstrap; reject anything else."""
    version = manifest.annotations.get(ANNOTATION_FORMAT, "")
    major = version.partition(".")[0]
    if major and major != str(FORMAT_MAJOR):
        raise UnsupportedVersionError(
            f"imagefs image format {version} is not supported (this reader knows {FORMAT_MAJOR}.x)"
        )
    boots = [x for x in manifest.layers if is_bootstrap_layer(x)]
    if not boots:
        raise FormatError("not an imagefs image (no bootstrap layer); convert it first")
    if len(boots) != 1 or manifest.layers[-1] is not boots[0]:
        raise FormatError("imagefs image must have exactly one bootstrap, as its last layer")
    blobs = manifest.layers[:-1]
    for b in blobs:
        if not is_blob_layer(b):
            raise FormatError(
                f"imagefs image has a layer {b.digest.short} ({b.media_type}) that is not "
                "an imagefs data blob"
            )
    return ImagefsImage(manifest, tuple(blobs), boots[0])
