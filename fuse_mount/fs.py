"""The FUSE adapter: translates kernel requests into calls on `imagefs.view` and nothing more.

Paths are resolved to inodes once and remembered (the tree is immutable); open files carry
the inode as their handle so reads skip path resolution. `ImagefsError`s become their errno;
anything unexpected becomes EIO (logged). Every write is EROFS.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

import mfusepy  # libfuse 3: chosen in fuse_mount/__init__.py, which runs first

from imagefs.errors import ImagefsError
from imagefs.view import ROOT_INO, FileSystemView

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")
_ENC = "utf-8"
_ERR = "surrogateescape"


def _errors(func: Callable[P, R]) -> Callable[P, R]:
    """Map imagefs errors to their errno and anything unexpected to EIO."""

    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except OSError:
            raise
        except ImagefsError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENODATA):
                log.warning("%s: %s", func.__name__, exc)
            raise _oserror(exc.errno) from None
        except Exception:
            log.exception("unexpected error in %s", func.__name__)
            raise _oserror(errno.EIO) from None

    wrapper.__name__ = func.__name__
    return wrapper


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _erofs(*_args: Any, **_kwargs: Any) -> Any:
    raise _oserror(errno.EROFS)


class ImagefsOperations(mfusepy.Operations):
    """mfusepy operations over a `FileSystemView`."""

    use_ns = True

    def __init__(
        self,
        view: FileSystemView,
        *,
        entry_timeout_s: float,
        attr_timeout_s: float,
        max_read_bytes: int = 0,
        on_access: Callable[[int, str], None] | None = None,
    ) -> None:
        self.view = view
        self._paths: dict[str, int] = {"/": ROOT_INO}
        self._lock = threading.Lock()
        self._entry_timeout = entry_timeout_s
        self._attr_timeout = attr_timeout_s
        self._on_access = on_access
        self._max_read = max_read_bytes

    # -- lifecycle ---------------------------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        if conn is not None and self._max_read:
            conn.max_read = self._max_read  # must match the max_read mount option
            # libfuse derives the kernel's max_pages (largest request) from max_write
            conn.max_write = max(conn.max_write, self._max_read)
            conn.max_readahead = max(conn.max_readahead, self._max_read)
        if config is not None:
            config.use_ino = 1
            config.kernel_cache = 1  # the tree never changes: keep page cache across opens
            config.entry_timeout = self._entry_timeout
            config.attr_timeout = self._attr_timeout
            config.negative_timeout = self._entry_timeout
            for name in ("nullpath_ok",):
                if hasattr(config, name):
                    setattr(config, name, 1)

    # -- helpers -----------------------------------------------------------------------------

    def _ino(self, path: str) -> int:
        ino = self._paths.get(path)
        if ino is None:
            ino = self.view.resolve(path.encode(_ENC, _ERR))
            with self._lock:
                if len(self._paths) > 1_000_000:
                    self._paths.clear()
                    self._paths["/"] = ROOT_INO
                self._paths[path] = ino
        return ino

    def _stat(self, ino: int) -> dict[str, Any]:
        a = self.view.getattr(ino)
        return {
            "st_ino": a.ino,
            "st_mode": a.mode,
            "st_nlink": a.nlink,
            "st_uid": a.uid,
            "st_gid": a.gid,
            "st_size": a.size,
            "st_rdev": os.makedev(a.rdev_major, a.rdev_minor),
            "st_blocks": a.blocks,
            "st_blksize": 4096,
            "st_mtime": a.mtime_ns,
            "st_ctime": a.mtime_ns,
            "st_atime": a.mtime_ns,
        }

    # -- reads -------------------------------------------------------------------------------

    @_errors
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        return self._stat(fh if fh else self._ino(path))

    @_errors
    def readlink(self, path: str) -> str:
        return self.view.readlink(self._ino(path)).decode(_ENC, _ERR)

    @_errors
    def opendir(self, path: str) -> int:
        ino = self._ino(path)
        if not stat.S_ISDIR(self.view.getattr(ino).mode):
            raise _oserror(errno.ENOTDIR)
        return ino

    @_errors
    def readdir(self, path: str, fh: int) -> Iterator[tuple[str, dict[str, int], int]]:
        ino = fh or self._ino(path)
        attr = self.view.getattr(ino)
        parent = self.view.lookup(ino, b"..")
        entries: list[tuple[str, dict[str, int], int]] = [
            (".", {"st_ino": ino, "st_mode": attr.mode}, 0),
            ("..", {"st_ino": parent, "st_mode": stat.S_IFDIR}, 0),
        ]
        for name, child in self.view.readdir(ino):
            mode = self.view.getattr(child).mode
            entries.append((name.decode(_ENC, _ERR), {"st_ino": child, "st_mode": mode}, 0))
        return iter(entries)

    @_errors
    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise _oserror(errno.EROFS)
        ino = self._ino(path)
        if self._on_access is not None:
            self._on_access(ino, path)
        return ino

    @_errors
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return self.view.read(fh or self._ino(path), offset, size)

    @_errors
    def listxattr(self, path: str) -> list[str]:
        return [n.decode(_ENC, _ERR) for n in self.view.listxattr(self._ino(path))]

    @_errors
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        return self.view.getxattr(self._ino(path), name.encode(_ENC, _ERR))

    @_errors
    def access(self, path: str, amode: int) -> int:
        self._ino(path)
        if amode & os.W_OK:
            raise _oserror(errno.EROFS)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        boot = self.view.bootstrap
        return {
            "f_bsize": 4096,
            "f_frsize": 4096,
            "f_blocks": 0,
            "f_bfree": 0,
            "f_bavail": 0,
            "f_files": boot.inode_count,
            "f_ffree": 0,
            "f_namemax": 255,
        }

    # -- every write is EROFS ----------------------------------------------------------------

    chmod = chown = create = link = mkdir = mknod = rename = rmdir = _erofs
    setxattr = removexattr = symlink = truncate = unlink = utimens = write = _erofs
