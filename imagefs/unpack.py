"""`imagefs unpack`: materialise an image's tree with all metadata, never outside DEST.

Every entry is created relative to an open directory file descriptor with O_NOFOLLOW and
O_EXCL, by one validated name at a time, so no name, symlink or hard link in the image can
make a write land outside DEST.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from imagefs.errors import FormatError, TargetError, UnsafePathError
from imagefs.view import ROOT_INO, FileSystemView

READ_PIECE = 4 << 20
MAX_OPEN_DIRS = 64  # directory descriptors held at once, however deep the tree


@dataclass(eq=False, slots=True)
class _Dir:
    """A directory being written: its inode, root-relative path (with a trailing "/"), open
    descriptor (-1 while closed), (st_dev, st_ino), and the entries still to create."""

    ino: int
    rel: bytes
    fd: int
    ident: tuple[int, int]
    children: Iterator[tuple[bytes, int]]


def _ident(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


@dataclass(frozen=True, slots=True)
class UnpackResult:
    entries: int
    bytes_written: int
    target: str


def _check_name(name: bytes) -> None:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise UnsafePathError(f"image holds an unsafe entry name {name!r}")


class _Unpacker:
    def __init__(self, view: FileSystemView, root_fd: int, progress: Callable[[int], None] | None):
        self.view = view
        self.root_fd = root_fd
        self.as_root = os.geteuid() == 0
        self.links: dict[int, bytes] = {}  # ino -> root-relative path of its first name
        self.entries = 0
        self.bytes = 0
        self.progress = progress

    def _meta(self, target: int | bytes, dir_fd: int | None, ino: int) -> None:
        """Owner, mode, xattrs, mtime; on an fd (int) or a name in dir_fd (no follow)."""
        a = self.view.getattr(ino)
        is_link = stat.S_ISLNK(a.mode)
        kw: dict[str, object] = (
            {} if isinstance(target, int) else {"dir_fd": dir_fd, "follow_symlinks": False}
        )
        if self.as_root:
            os.chown(target, a.uid, a.gid, **kw)  # type: ignore[arg-type]
        if not is_link:
            os.chmod(target, stat.S_IMODE(a.mode), **kw)  # type: ignore[arg-type]
        xattr_target: int | str = (
            target if isinstance(target, int) else f"/proc/self/fd/{dir_fd}/{os.fsdecode(target)}"
        )
        for name in self.view.listxattr(ino):
            value = self.view.getxattr(ino, name)
            try:
                if isinstance(xattr_target, int):
                    os.setxattr(xattr_target, name, value)
                else:
                    os.setxattr(xattr_target, name, value, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
        os.utime(target, ns=(a.mtime_ns, a.mtime_ns), **kw)  # type: ignore[arg-type]

    def tree(self) -> None:
        """Write the whole tree, iteratively: no nesting depth can exhaust the interpreter's
        stack, and at most MAX_OPEN_DIRS directory descriptors are open at once (an ancestor
        closed on the way down is reopened through `..` of its child on the way back up, and
        must be the directory this unpack created there)."""
        root = _Dir(ROOT_INO, b"", self.root_fd, _ident(self.root_fd), self.view.readdir(ROOT_INO))
        stack = [root]
        try:
            while stack:
                top = stack[-1]
                item = next(top.children, None)
                if item is None:
                    stack.pop()
                    self._meta(top.fd, None, top.ino)
                    if stack and stack[-1].fd < 0:
                        self._reopen(stack[-1], top.fd)
                    if top.fd != self.root_fd:
                        os.close(top.fd)
                    top.fd = -1
                    continue
                name, child = item
                sub = self.entry(top, name, child)
                if sub is not None:
                    stack.append(sub)
                    if len(stack) > MAX_OPEN_DIRS + 1:
                        old = stack[-MAX_OPEN_DIRS - 1]
                        if old.fd >= 0 and old.fd != self.root_fd:
                            os.close(old.fd)
                            old.fd = -1
        finally:
            for d in stack:
                if d.fd >= 0 and d.fd != self.root_fd:
                    os.close(d.fd)

    @staticmethod
    def _reopen(parent: _Dir, child_fd: int) -> None:
        fd = os.open(b"..", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=child_fd)
        if _ident(fd) != parent.ident:
            os.close(fd)
            raise TargetError(f"directory {parent.rel!r} was moved during unpack")
        parent.fd = fd

    def entry(self, parent: _Dir, name: bytes, child: int) -> _Dir | None:
        """Create one entry in `parent`; a directory is returned open, for its children."""
        _check_name(name)
        dir_fd = parent.fd
        self.entries += 1
        path = parent.rel + name
        a = self.view.getattr(child)
        kind = stat.S_IFMT(a.mode)
        if kind == stat.S_IFDIR:
            os.mkdir(name, 0o700, dir_fd=dir_fd)
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            try:
                return _Dir(child, path + b"/", fd, _ident(fd), self.view.readdir(child))
            except BaseException:
                os.close(fd)
                raise
        if kind == stat.S_IFREG:
            first = self.links.get(child)
            if first is not None:
                os.link(
                    first,
                    name,
                    src_dir_fd=self.root_fd,
                    dst_dir_fd=dir_fd,
                    follow_symlinks=False,
                )
                return None
            if a.nlink > 1:
                self.links[child] = path
            fd = os.open(
                name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd
            )
            try:
                offset = 0
                while offset < a.size:
                    data = self.view.read(child, offset, READ_PIECE)
                    if not data:
                        raise FormatError(f"file {path!r} is shorter than its size")
                    os.write(fd, data)
                    offset += len(data)
                    self.bytes += len(data)
                    if self.progress:
                        self.progress(len(data))
                self._meta(fd, None, child)
            finally:
                os.close(fd)
        elif kind == stat.S_IFLNK:
            os.symlink(self.view.readlink(child), name, dir_fd=dir_fd)
            self._meta(name, dir_fd, child)
        else:
            if not self.as_root and kind in (stat.S_IFCHR, stat.S_IFBLK):
                return None  # only root may create device nodes, as tar does
            os.mknod(name, kind | 0o600, os.makedev(a.rdev_major, a.rdev_minor), dir_fd=dir_fd)
            self._meta(name, dir_fd, child)
        return None


def unpack(
    view: FileSystemView, dest: Path, *, progress: Callable[[int], None] | None = None
) -> UnpackResult:
    """Write the tree into `dest`, which must not exist or be an empty directory."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        if any(dest.iterdir()):
            raise TargetError(f"{dest} is not empty; unpack needs a new or empty directory")
        root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise TargetError(f"cannot use {dest} as the unpack target: {exc.strerror}") from None
    try:
        u = _Unpacker(view, root_fd, progress)
        try:
            u.tree()
        except OSError as exc:
            raise TargetError(f"unpack into {dest} failed: {exc}") from None
        return UnpackResult(u.entries, u.bytes, str(dest))
    finally:
        with contextlib.suppress(OSError):
            os.close(root_fd)
