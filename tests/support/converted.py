"""Read a converted imagefs image back with the format decoders alone (Bootstrap, blob
footer and table, ChunkCodec): its tree as `trees.EntryMeta` snapshots, file contents and
hard-link groups, so that tests can compare it with the source or with `umoci raw unpack`."""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from imagefs.digest import Digest
from imagefs.format import (
    BLOB_FOOTER_SIZE,
    Bootstrap,
    ChunkCodec,
    decode_blob_footer,
    decode_blob_table,
    load_bootstrap,
    parse_imagefs_manifest,
)
from imagefs.oci import Manifest, OciLayout
from tests.support.trees import EntryMeta, Kind

_KINDS: dict[int, Kind] = {
    stat.S_IFREG: "reg",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "chr",
    stat.S_IFBLK: "blk",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "sock",
}


@dataclass(frozen=True)
class ConvertedImage:
    manifest: Manifest
    bootstrap: Bootstrap
    blobs: Mapping[Digest, bytes]  # data blobs by digest

    @classmethod
    def from_blobs(cls, manifest: Manifest, blobs: Mapping[Digest, bytes]) -> ConvertedImage:
        image = parse_imagefs_manifest(manifest)
        boot = load_bootstrap(blobs[image.bootstrap.digest])
        data = {d.digest: blobs[d.digest] for d in image.blobs}
        return cls(manifest, boot, data)

    @classmethod
    def from_layout(cls, layout: Path, tag: str = "latest") -> ConvertedImage:
        oci = OciLayout.open(layout)
        _, manifest = oci.resolve_manifest(tag)
        image = parse_imagefs_manifest(manifest)
        digests = [image.bootstrap.digest, *(d.digest for d in image.blobs)]
        return cls.from_blobs(manifest, {d: oci.read_blob(d) for d in digests})

    def check_blobs(self) -> None:
        """Every data blob decodes (footer, table, each chunk verified) and every chunk of
        the bootstrap's table is an entry of its blob's table."""
        tables = set()
        codec = ChunkCodec()
        for digest, data in self.blobs.items():
            footer = decode_blob_footer(data[-BLOB_FOOTER_SIZE:], len(data))
            table = data[footer.table_offset : footer.table_offset + footer.table_size]
            for chunk in decode_blob_table(table, footer):
                codec.decode(data[chunk.offset : chunk.offset + chunk.stored_size], chunk)
                tables.add((digest, chunk.digest, chunk.offset, chunk.stored_size, chunk.size))
        for ref in self.bootstrap.chunks():
            key = (ref.blob, ref.digest, ref.offset, ref.stored_size, ref.size)
            assert key in tables, f"chunk {ref.digest} is not in blob {ref.blob}'s table"

    def paths(self) -> dict[str, int]:
        """Relative path ("" for the root) -> inode index, depth-first."""
        out: dict[str, int] = {"": 0}
        stack = [("", 0)]
        while stack:
            prefix, index = stack.pop()
            for name, child in self.bootstrap.entries(index):
                path = prefix + name.decode("utf-8", "surrogateescape")
                out[path] = child
                if self.bootstrap.inode(child).is_dir:
                    stack.append((path + "/", child))
        return out

    def content(self, index: int) -> bytes:
        codec = ChunkCodec()
        parts = []
        for _offset, ref in self.bootstrap.file_chunks(index):
            stored = self.blobs[ref.blob][ref.offset : ref.offset + ref.stored_size]
            parts.append(codec.decode(stored, ref))
        return b"".join(parts)

    def read(self, path: str) -> bytes:
        return self.content(self.paths()[path])

    def meta(self, index: int) -> EntryMeta:
        node = self.bootstrap.inode(index)
        kind = _KINDS[stat.S_IFMT(node.mode)]
        xattrs = {k.decode("utf-8", "surrogateescape"): v for k, v in self.bootstrap.xattrs(index)}
        meta = EntryMeta(
            kind=kind,
            mode=node.mode & 0o7777,
            uid=node.uid,
            gid=node.gid,
            mtime=node.mtime_ns // 1_000_000_000,
            xattrs=xattrs,
        )
        if kind == "reg":
            data = self.content(index)
            assert len(data) == node.size
            sha = hashlib.sha256(data).hexdigest()
            return replace(meta, size=node.size, nlink=node.nlink, sha256=sha)
        if kind == "symlink":
            target = self.bootstrap.symlink_target(index).decode("utf-8", "surrogateescape")
            return replace(meta, link_target=target)
        if kind in ("chr", "blk"):
            return replace(meta, rdev=(node.rdev_major, node.rdev_minor))
        return meta

    def snapshot(self, *, include_root: bool = False) -> dict[str, EntryMeta]:
        """Like `trees.snapshot_tree` of the unpacked image."""
        out = {}
        for path, index in self.paths().items():
            if path:
                out[path] = self.meta(index)
            elif include_root:
                out["."] = self.meta(index)
        return out

    def hardlink_groups(self) -> set[frozenset[str]]:
        by_inode: dict[int, set[str]] = {}
        for path, index in self.paths().items():
            node = self.bootstrap.inode(index)
            if node.is_reg and node.nlink > 1:
                by_inode.setdefault(index, set()).add(path)
        return {frozenset(p) for p in by_inode.values()}
