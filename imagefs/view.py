"""The read-only filesystem view of an imagefs image, by inode, with no FUSE in sight.

Answers lookup, getattr, readdir, readlink, listxattr/getxattr and read. Inode numbers seen
by users are bootstrap indices + 1 (so the root is 1, as FUSE expects). The FUSE adapter,
`unpack`, `check` and `inspect` all go through this class.
"""

from __future__ import annotations

import contextlib
import errno
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from imagefs.chunks import ChunkSource, ReadStats
from imagefs.errors import FsError, ImagefsError
from imagefs.format import Bootstrap, ChunkRef

ROOT_INO = 1
BLOCK = 512


@dataclass(frozen=True, slots=True)
class Attr:
    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    rdev_major: int
    rdev_minor: int
    mtime_ns: int

    @property
    def blocks(self) -> int:
        return (self.size + BLOCK - 1) // BLOCK


class FileSystemView:
    """Lookups and reads over one bootstrap and one chunk source."""

    def __init__(
        self,
        bootstrap: Bootstrap,
        chunks: ChunkSource,
        stats: ReadStats | None = None,
        *,
        readahead_bytes: int = 0,
        locality_bytes: int = 0,
    ):
        self.bootstrap = bootstrap
        self.chunks = chunks
        self.stats = stats or ReadStats()
        self.readahead_bytes = readahead_bytes
        self.locality_bytes = locality_bytes
        self._scheduled = bytearray(bootstrap.chunk_count if locality_bytes else 0)
        self._last_end: dict[int, int] = {}  # ino -> where its last read ended
        self._ahead: dict[int, int] = {}  # ino -> how far readahead has been asked for
        self._headers: dict[int, int] = {}  # ino -> end of a model file's header region
        self._ra_lock = threading.Lock()
        self._ra_pool: ThreadPoolExecutor | None = None

    def _index(self, ino: int) -> int:
        index = ino - 1
        if not 0 <= index < self.bootstrap.inode_count:
            raise FsError(errno.ENOENT, f"no inode {ino}")
        return index

    # -- names -------------------------------------------------------------------------------

    def lookup(self, parent: int, name: bytes) -> int:
        index = self._index(parent)
        node = self.bootstrap.inode(index)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR, "not a directory")
        if name == b".":
            return parent
        if name == b"..":
            return node.parent + 1
        child = self.bootstrap.lookup(index, name)
        if child is None:
            raise FsError(errno.ENOENT, f"{name!r} not found")
        return child + 1

    def resolve(self, path: bytes) -> int:
        """Inode of an absolute or root-relative path, without following symlinks."""
        ino = ROOT_INO
        for part in path.split(b"/"):
            if part:
                ino = self.lookup(ino, part)
        return ino

    def readdir(self, ino: int) -> Iterator[tuple[bytes, int]]:
        """(name, ino) of a directory's entries, sorted by name, without `.` and `..`."""
        index = self._index(ino)
        if not self.bootstrap.inode(index).is_dir:
            raise FsError(errno.ENOTDIR, "not a directory")
        for name, child in self.bootstrap.entries(index):
            yield name, child + 1

    def walk(self, ino: int = ROOT_INO, prefix: bytes = b"") -> Iterator[tuple[bytes, int]]:
        """Every (path, ino) below `ino`, depth-first in name order; paths are root-relative.
        Iterative, so that no nesting depth can exhaust the interpreter's stack."""
        stack = [(prefix, self.readdir(ino))]
        while stack:
            here, children = stack[-1]
            item = next(children, None)
            if item is None:
                stack.pop()
                continue
            name, child = item
            path = here + name
            yield path, child
            if stat.S_ISDIR(self.bootstrap.inode(child - 1).mode):
                stack.append((path + b"/", self.readdir(child)))

    # -- metadata ----------------------------------------------------------------------------

    def getattr(self, ino: int) -> Attr:
        node = self.bootstrap.inode(self._index(ino))
        return Attr(
            ino,
            node.mode,
            node.nlink,
            node.uid,
            node.gid,
            node.size,
            node.rdev_major,
            node.rdev_minor,
            node.mtime_ns,
        )

    def readlink(self, ino: int) -> bytes:
        index = self._index(ino)
        if not self.bootstrap.inode(index).is_symlink:
            raise FsError(errno.EINVAL, "not a symlink")
        return self.bootstrap.symlink_target(index)

    def listxattr(self, ino: int) -> list[bytes]:
        return [name for name, _ in self.bootstrap.xattrs(self._index(ino))]

    def getxattr(self, ino: int, name: bytes) -> bytes:
        for key, value in self.bootstrap.xattrs(self._index(ino)):
            if key == name:
                return value
        raise FsError(errno.ENODATA, f"no xattr {name!r}")

    # -- data --------------------------------------------------------------------------------

    def read(self, ino: int, offset: int, size: int) -> bytes:
        """Up to `size` bytes of a regular file from `offset` (short only at end of file)."""
        index = self._index(ino)
        node = self.bootstrap.inode(index)
        if not node.is_reg:
            raise FsError(errno.EISDIR if node.is_dir else errno.EINVAL, "not a regular file")
        if offset < 0 or size < 0:
            raise FsError(errno.EINVAL, "negative offset or size")
        end = min(node.size, offset + size)
        if offset >= end:
            return b""
        if self.readahead_bytes and end < node.size:
            self._readahead(ino, index, node.size, offset, end)
        if self.locality_bytes and offset == 0:
            self._neighbours(index)
        placed = list(self.bootstrap.file_chunks(index, offset, end))
        datas = self.chunks.get_chunks([ref for _, ref in placed])
        if len(placed) == 1:
            start = placed[0][0]
            out = datas[0][offset - start : end - start]
        else:
            parts = []
            for (start, _ref), data in zip(placed, datas, strict=True):
                parts.append(data[max(0, offset - start) : end - start])
            out = b"".join(parts)
        self.stats.add(bytes_read=len(out), read_calls=1)
        return out

    # -- readahead ---------------------------------------------------------------------------

    def set_header_end(self, ino: int, end: int) -> None:
        """`ino` is a model file whose header region ends at `end`: a loader reads the header
        from offset 0, then jumps to the tensors it wants, so a read from offset 0 gets no
        readahead beyond the header (reads that continue one another still get it)."""
        with self._ra_lock:
            self._headers[ino] = end

    def _readahead(self, ino: int, index: int, size: int, offset: int, end: int) -> None:
        """A sequential reader (from offset 0, or where its last read ended) gets the next
        `readahead_bytes` of the file fetched in the background, so that its next reads
        find their chunks cached (or in flight) instead of waiting a round trip each."""
        with self._ra_lock:
            sequential = offset == 0 or self._last_end.get(ino) == offset
            if len(self._last_end) > 65536:
                self._last_end.clear()
                self._ahead.clear()
            self._last_end[ino] = end
            if not sequential:
                return
            start = max(end, self._ahead.get(ino, 0))
            stop = min(size, end + self.readahead_bytes)
            if offset == 0 and ino in self._headers:
                stop = min(stop, self._headers[ino])
            if start >= stop or (stop - start < self.readahead_bytes // 2 and stop < size):
                return  # most of the window is already on its way
            self._ahead[ino] = stop
            if self._ra_pool is None:
                self._ra_pool = ThreadPoolExecutor(2, thread_name_prefix="imagefs-readahead")
            pool = self._ra_pool
        refs = [ref for _, ref in self.bootstrap.file_chunks(index, start, stop)]
        pool.submit(self._fetch_quietly, refs)

    def _neighbours(self, index: int) -> None:
        """A file read from its start gets the chunks stored after it in its blob (up to
        `locality_bytes`) fetched in the background: blobs hold files in path order, so
        those are its neighbours in the directory tree, which a process starting up (a
        package's modules, a library's data files) is likely to read next."""
        first, count = self.bootstrap.file_extent(index)
        if not count:
            return
        bootstrap = self.bootstrap
        last = bootstrap.refs[first + count - 1]
        blob = bootstrap.chunk(last).blob
        refs: list[ChunkRef] = []
        budget = self.locality_bytes
        with self._ra_lock:
            for at in range(first, first + count):
                self._scheduled[bootstrap.refs[at]] = 1
            at = last + 1
            while at < len(self._scheduled) and budget > 0 and not self._scheduled[at]:
                ref = bootstrap.chunk(at)
                if ref.blob != blob:
                    break
                self._scheduled[at] = 1
                refs.append(ref)
                budget -= ref.stored_size
                at += 1
            if not refs:
                return
            if self._ra_pool is None:
                self._ra_pool = ThreadPoolExecutor(2, thread_name_prefix="imagefs-readahead")
            pool = self._ra_pool
        pool.submit(self._fetch_quietly, refs)

    def _fetch_quietly(self, refs: list[ChunkRef]) -> None:
        with contextlib.suppress(ImagefsError):  # the read that needs them reports errors
            self.chunks.get_chunks(refs)

    def close(self) -> None:
        if self._ra_pool is not None:
            self._ra_pool.shutdown(wait=False, cancel_futures=True)
