"""`imagefs inspect` (what an image holds) and `imagefs check` (decode everything, verify
every chunk against its digest, and every blob's own chunk table against the bootstrap)."""

from __future__ import annotations

import stat
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from imagefs.chunks import FetchingChunkSource, ReadStats, iter_blob_chunks
from imagefs.errors import FormatError, ImagefsError, IntegrityError
from imagefs.format import BLOB_ENTRY_SIZE, BLOB_FOOTER_SIZE, ChunkRef
from imagefs.image import OpenedImage


@dataclass(frozen=True, slots=True)
class BlobSummary:
    digest: str
    size: int
    chunks: int  # distinct chunks of this blob that files reference
    stored_bytes: int  # those chunks, as stored
    uncompressed_bytes: int  # those chunks, uncompressed
    references: int  # file chunk references that resolve into this blob (with duplicates)
    chunks_stored: int = 0  # entries of the bootstrap's chunk table in this blob
    referenced_bytes: int = 0  # uncompressed bytes over all references (duplicates included)

    @property
    def data_bytes(self) -> int:
        """The blob's chunk data area: its size less its chunk table and footer. Exact when the
        bootstrap lists every chunk of the blob (a blob this image wrote); for a blob of
        another image, whose chunks this image lists only in part, an upper bound."""
        return max(0, self.size - BLOB_FOOTER_SIZE - self.chunks_stored * BLOB_ENTRY_SIZE)

    @property
    def referenced_fraction(self) -> float:
        """The fraction of the blob's stored chunk bytes that this image's files reference."""
        return self.stored_bytes / self.data_bytes if self.data_bytes else 0.0


@dataclass(frozen=True, slots=True)
class Inspection:
    manifest_digest: str
    files: int
    directories: int
    symlinks: int
    other: int
    hardlinked_files: int
    bytes: int  # sum of regular file sizes (each inode once)
    chunks: int  # chunk references over all files
    unique_chunks: int
    unique_bytes: int  # uncompressed bytes of unique chunks
    stored_bytes: int  # bytes of unique chunks as stored (compressed or raw)
    bootstrap_bytes: int
    blobs: tuple[BlobSummary, ...] = field(default=())

    @property
    def dedup_ratio(self) -> float:
        return self.bytes / self.unique_bytes if self.unique_bytes else 1.0

    def to_json(self) -> dict[str, Any]:
        return {
            "manifest_digest": self.manifest_digest,
            "files": self.files,
            "directories": self.directories,
            "symlinks": self.symlinks,
            "other": self.other,
            "hardlinked_files": self.hardlinked_files,
            "bytes": self.bytes,
            "chunks": self.chunks,
            "unique_chunks": self.unique_chunks,
            "unique_bytes": self.unique_bytes,
            "stored_bytes": self.stored_bytes,
            "dedup_ratio": round(self.dedup_ratio, 4),
            "bootstrap_bytes": self.bootstrap_bytes,
            "blobs": [
                {
                    "digest": b.digest,
                    "size": b.size,
                    "chunks": b.chunks,
                    "stored_bytes": b.stored_bytes,
                    "uncompressed_bytes": b.uncompressed_bytes,
                    "references": b.references,
                    "chunks_stored": b.chunks_stored,
                    "referenced_chunks": b.chunks,
                    "referenced_bytes": b.referenced_bytes,
                    "chunk_data_bytes": b.data_bytes,
                    "referenced_fraction": round(b.referenced_fraction, 4),
                }
                for b in self.blobs
            ],
        }


def inspect_image(opened: OpenedImage) -> Inspection:
    boot = opened.bootstrap
    kinds: Counter[int] = Counter()
    files = bytes_ = refs = hardlinked = 0
    per_blob_refs: Counter[str] = Counter()
    per_blob_ref_bytes: Counter[str] = Counter()
    referenced: set[int] = set()
    for index in range(boot.inode_count):
        node = boot.inode(index)
        kinds[stat.S_IFMT(node.mode)] += 1
        if node.is_reg:
            files += 1
            bytes_ += node.size
            hardlinked += node.nlink > 1
            first, count = boot.file_extent(index)
            refs += count
            for at in range(first, first + count):
                ci = boot.refs[at]
                referenced.add(ci)
                c = boot.chunk(ci)
                per_blob_refs[str(c.blob)] += 1
                per_blob_ref_bytes[str(c.blob)] += c.size
    per_blob_stored = Counter(str(c.blob) for c in boot.chunks())
    per_blob: dict[str, list[int]] = {str(b.digest): [0, 0, 0] for b in boot.blobs}
    unique_bytes = stored = 0
    for ci in sorted(referenced):
        c = boot.chunk(ci)
        unique_bytes += c.size
        stored += c.stored_size
        agg = per_blob[str(c.blob)]
        agg[0] += 1
        agg[1] += c.stored_size
        agg[2] += c.size
    blobs = tuple(
        BlobSummary(
            str(b.digest),
            b.size,
            per_blob[str(b.digest)][0],
            per_blob[str(b.digest)][1],
            per_blob[str(b.digest)][2],
            per_blob_refs[str(b.digest)],
            per_blob_stored[str(b.digest)],
            per_blob_ref_bytes[str(b.digest)],
        )
        for b in boot.blobs
    )
    return Inspection(
        manifest_digest=str(opened.manifest_descriptor.digest),
        files=files,
        directories=kinds[stat.S_IFDIR],
        symlinks=kinds[stat.S_IFLNK],
        other=sum(
            v for k, v in kinds.items() if k not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK)
        ),
        hardlinked_files=hardlinked,
        bytes=bytes_,
        chunks=refs,
        unique_chunks=len(referenced),
        unique_bytes=unique_bytes,
        stored_bytes=stored,
        bootstrap_bytes=opened.image.bootstrap.size,
        blobs=blobs,
    )


@dataclass(frozen=True, slots=True)
class CheckResult:
    manifest_digest: str
    inodes: int
    chunks_verified: int
    bytes_verified: int
    blobs: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_image(
    opened: OpenedImage, *, progress: Callable[[int], None] | None = None, batch: int = 256
) -> CheckResult:
    """Decode every record and verify every chunk; collects problems instead of stopping."""
    boot = opened.bootstrap
    problems: list[str] = []
    try:
        boot.validate()
    except FormatError as exc:
        problems.append(f"bootstrap: {exc}")
    reader = opened.store.blob_reader()
    by_blob: dict[str, list[ChunkRef]] = {str(b.digest): [] for b in boot.blobs}
    for ci in range(boot.chunk_count):
        try:
            c = boot.chunk(ci)
        except FormatError as exc:
            problems.append(f"chunk table: {exc}")
            continue
        by_blob[str(c.blob)].append(c)
    manifest_blobs = {str(d.digest): d.size for d in opened.image.blobs}
    for info in boot.blobs:
        key = str(info.digest)
        if manifest_blobs.get(key) != info.size:
            problems.append(f"blob {info.digest.short}: not listed in the manifest with its size")
            continue
        try:
            own = {c.digest: c for c in iter_blob_chunks(reader, info.digest, info.size)}
        except ImagefsError as exc:
            problems.append(f"blob {info.digest.short}: {exc}")
            continue
        for c in by_blob[key]:
            mine = own.get(c.digest)
            if mine is None or (mine.offset, mine.stored_size, mine.size) != (
                c.offset,
                c.stored_size,
                c.size,
            ):
                problems.append(
                    f"blob {info.digest.short}: chunk {c.digest} disagrees "
                    "with the blob's own chunk table"
                )
    fetcher = FetchingChunkSource(reader, ReadStats())
    verified = nbytes = 0
    all_refs = [c for refs in by_blob.values() for c in refs]
    for start in range(0, len(all_refs), batch):
        group = all_refs[start : start + batch]
        try:
            datas = fetcher.get_chunks(group)
        except ImagefsError:
            datas = []
            for c in group:  # find exactly which chunks are bad
                try:
                    datas.append(fetcher.get_chunks([c])[0])
                except IntegrityError as exc:
                    problems.append(str(exc))
                except ImagefsError as exc:
                    problems.append(f"chunk {c.digest}: {exc}")
        for data in datas:
            verified += 1
            nbytes += len(data)
            if progress:
                progress(len(data))
    return CheckResult(
        str(opened.manifest_descriptor.digest),
        boot.inode_count,
        verified,
        nbytes,
        len(boot.blobs),
        tuple(problems),
    )
