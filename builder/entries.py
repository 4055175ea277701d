"""Layer entries: the metadata of one tar member (or directory walk item), path
normalization, and OCI whiteout naming. Pure functions; no file data."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from imagefs.errors import SourceError, UnsafePathError

MAX_NAME_BYTES = 255
WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
DEFAULT_DIR_MODE = 0o755


class EntryKind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"
    WHITEOUT = "whiteout"  # `path` is removed from lower layers
    OPAQUE = "opaque"  # lower-layer contents of directory `path` are hidden


@dataclass(frozen=True, slots=True)
class Entry:
    """One layer entry. `path` is normalized (no leading "./" or "/", b"" is the root).

    `link` is a symlink's target (verbatim) or a hard link's target path (normalized);
    `content` numbers a regular file's data in the conversion's file table."""

    path: bytes
    kind: EntryKind
    mode: int = 0o644  # permission bits, including setuid/setgid/sticky
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    size: int = 0
    link: bytes = b""
    rdev_major: int = 0
    rdev_minor: int = 0
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    content: int = -1


def with_content(e: Entry, content: int) -> Entry:
    """`e` numbered as content `content` (cheaper than dataclasses.replace, once per file)."""
    return Entry(
        e.path,
        e.kind,
        e.mode,
        e.uid,
        e.gid,
        e.mtime_ns,
        e.size,
        e.link,
        e.rdev_major,
        e.rdev_minor,
        e.xattrs,
        content,
    )


def implicit_dir(path: bytes) -> Entry:
    """The directory made for a parent that no entry names: 0755, root-owned, mtime 0."""
    return Entry(path, EntryKind.DIR, DEFAULT_DIR_MODE)


def show(path: bytes) -> str:
    """A path for a one-line message: quoted, undecodable bytes and control chars escaped."""
    return repr(path.decode("utf-8", "backslashreplace"))


def normalize_path(name: bytes, *, what: str = "entry") -> bytes:
    """Normalize a member name: strip "./", drop empty and "." components, reject ".."
    (UnsafePathError), absolute paths (UnsafePathError), NUL and over-long names (SourceError)."""
    if b"\0" in name:
        raise SourceError(f"{what} {show(name)} contains a NUL byte")
    if name.startswith(b"/"):
        raise UnsafePathError(f"{what} {show(name)} is an absolute path")
    parts = [p for p in name.split(b"/") if p and p != b"."]
    for part in parts:
        if part == b"..":
            raise UnsafePathError(f"{what} {show(name)} has a '..' component")
        if len(part) > MAX_NAME_BYTES:
            raise SourceError(f"{what} {show(name)} has a name longer than {MAX_NAME_BYTES} bytes")
    return b"/".join(parts)


def split_path(path: bytes) -> tuple[bytes, bytes]:
    """(parent, name) of a normalized path; the root's parent is itself."""
    parent, _, name = path.rpartition(b"/")
    return parent, name


def join_path(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def classify_whiteout(path: bytes) -> tuple[EntryKind, bytes] | None:
    """For a `.wh.` name: (WHITEOUT, removed path) or (OPAQUE, directory); None for ordinary
    names. Check `is_aufs_meta` first: those names are skipped, not whiteouts."""
    parent, name = split_path(path)
    if not name.startswith(WHITEOUT_PREFIX):
        return None
    if name == OPAQUE_MARKER:
        return EntryKind.OPAQUE, parent
    removed = name[len(WHITEOUT_PREFIX) :]
    if removed in (b"", b".", b".."):
        raise UnsafePathError(f"whiteout {show(path)} names no removable entry")
    return EntryKind.WHITEOUT, join_path(parent, removed)


def is_aufs_meta(path: bytes) -> bool:
    """AUFS bookkeeping (`.wh..wh.plnk/...` and other `.wh..wh.*` names than the opaque
    marker), which image layers may carry and extraction skips."""
    parts = path.split(b"/")
    meta = WHITEOUT_PREFIX + WHITEOUT_PREFIX
    return any(p.startswith(meta) for p in parts[:-1]) or (
        parts[-1].startswith(meta) and parts[-1] != OPAQUE_MARKER
    )
