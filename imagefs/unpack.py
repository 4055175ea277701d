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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imagefs.errors import FormatError, TargetError, UnsafePathError
from imagefs.view import ROOT_INO, FileSystemView

READ_PIECE = 4 << 20


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

    def directory(self, ino: int, dir_fd: int, rel: bytes) -> None:
        for name, child in self.view.readdir(ino):
            _check_name(name)
            self.entries += 1
            path = rel + name
            a = self.view.getattr(child)
            kind = stat.S_IFMT(a.mode)
            if kind == stat.S_IFDIR:
                os.mkdir(name, 0o700, dir_fd=dir_fd)
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
                try:
                    self.directory(child, fd, path + b"/")
                    self._meta(fd, None, child)
                finally:
                    os.close(fd)
            elif kind == stat.S_IFREG:
                first = self.links.get(child)
                if first is not None:
                    os.link(
                        first,
                        name,
                        src_dir_fd=self.root_fd,
                        dst_dir_fd=dir_fd,
                        follow_symlinks=False,
                    )
                    continue
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
                    continue  # only root may create device nodes, as tar does
                os.mknod(name, kind | 0o600, os.makedev(a.rdev_major, a.rdev_minor), dir_fd=dir_fd)
                self._meta(name, dir_fd, child)


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
            u.directory(ROOT_INO, root_fd, b"")
            u._meta(root_fd, None, ROOT_INO)
        except OSError as exc:
            raise TargetError(f"unpack into {dest} failed: {exc}") from None
        return UnpackResult(u.entries, u.bytes, str(dest))
    finally:
        with contextlib.suppress(OSError):
            os.close(root_fd)
