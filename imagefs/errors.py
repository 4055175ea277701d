"""The one error tree of imagefs: every failure a user can see, with its exit code and errno.

Library exceptions (zstandard, lmdb, OSError from blob files, tarfile, ...) are wrapped into
these at package boundaries; the CLI turns any `ImagefsError` into a one-line message and
its `exit_code`, and the FUSE adapter turns it into its `errno`.
"""

from __future__ import annotations

import errno as _errno


class ImagefsError(Exception):
    """Base of every error imagefs raises on purpose."""

    exit_code: int = 1
    errno: int = _errno.EIO

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(ImagefsError):
    """The command line or configuration asks for something impossible."""

    exit_code = 2
    errno = _errno.EINVAL


class ConfigError(UsageError):
    """A configuration file or environment variable is invalid."""


class SourceError(ImagefsError):
    """The source image cannot be read or is malformed (bad gzip, truncated tar, ...)."""

    exit_code = 3


class UnsafePathError(SourceError):
    """A tar entry or image path escapes the tree (`..`, absolute, through a symlink)."""


class FormatError(ImagefsError):
    """An imagefs artifact (blob, bootstrap, manifest) is malformed."""

    exit_code = 4


class UnsupportedVersionError(FormatError):
    """An artifact carries a format major version this reader does not know."""


class IntegrityError(FormatError):
    """Bytes do not match the digest that names them."""


class NotFoundError(ImagefsError):
    """An image, tag, blob or path does not exist."""

    exit_code = 5
    errno = _errno.ENOENT


class TargetError(ImagefsError):
    """The target cannot be written (exists, not a layout, no space, permission)."""

    exit_code = 6


class MountError(ImagefsError):
    """Mounting, unmounting or talking to a mount failed."""

    exit_code = 7


class ReadOnlyError(ImagefsError):
    """A write was attempted on a read-only imagefs tree."""

    exit_code = 7
    errno = _errno.EROFS


class CacheError(ImagefsError):
    """The chunk cache cannot be opened or used."""

    exit_code = 8


class RegistryError(ImagefsError):
    """A registry is unreachable, keeps failing, or answers outside the distribution spec."""

    exit_code = 9


class AuthError(RegistryError):
    """A registry refused the request: no or wrong credentials (401), or access denied (403)."""

    exit_code = 10
    errno = _errno.EACCES


EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "success"),
    (1, "unexpected internal error (run with --debug for a traceback)"),
    (2, "usage or configuration error"),
    (3, "the source image is unreadable or malformed"),
    (4, "an imagefs artifact is malformed, of an unknown version, or fails verification"),
    (5, "image, tag, blob or path not found"),
    (6, "the target cannot be written"),
    (7, "mount, unmount or mount-control failure"),
    (8, "chunk cache failure"),
    (9, "registry unreachable or failing"),
    (10, "registry authentication or authorization failure"),
    (130, "interrupted"),
)


class FsError(ImagefsError):
    """A filesystem-view request that fails with a specific errno (ENOENT, ENOTDIR, ...)."""

    exit_code = 5

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno
