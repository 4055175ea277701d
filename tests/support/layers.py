"""Build one deterministic tar layer in memory (every entry type, whiteouts, binary xattrs)."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from typing import Literal

from tests.support.oci import Compression, LayerBlob, compress

TarFormat = Literal["pax", "gnu"]

DEFAULT_MTIME = 1700000000
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
XATTR_PAX_PREFIX = "SCHILY.xattr."

_FORMATS: dict[TarFormat, int] = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT}


def xattr_to_pax(value: bytes) -> str:
    """Encode a binary xattr value as the str tarfile expects in ``pax_headers``.

    tarfile (encoding utf-8, errors surrogateescape) writes a pax record value with
    ``value.encode("utf-8")``, or, when any value of the header is not valid UTF-8 (contains
    surrogates), adds ``hdrcharset=BINARY`` and writes ``value.encode("utf-8",
    "surrogateescape")``. Decoding with surrogateescape therefore reproduces the exact bytes
    in both cases, and tarfile's reader undoes it with :func:`xattr_from_pax`."""
    return value.decode("utf-8", "surrogateescape")


def xattr_from_pax(value: str) -> bytes:
    """Inverse of :func:`xattr_to_pax` for values read back by tarfile."""
    return value.encode("utf-8", "surrogateescape")


def normalize_path(path: str) -> str:
    """Layer-relative path without leading ``/`` or ``./`` and without trailing ``/``."""
    while path.startswith("./"):
        path = path[2:]
    path = path.strip("/")
    if not path or path == ".":
        raise ValueError("the layer root itself cannot be an entry here; use raw()")
    return path


def _split(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition("/")
    return parent, name


@dataclass
class _Entry:
    info: tarfile.TarInfo
    data: bytes | None


class LayerBuilder:
    """Collect entries for one layer and serialize them deterministically.

    Entries are emitted sorted by path (a parent always precedes its children, and an opaque
    marker ``.wh..wh..opq`` sorts before its siblings), except that a hard link whose target
    is in this layer is moved right after its target. ``sort_entries=False`` keeps insertion
    order instead, for ordering experiments. Adding the same path twice keeps both entries
    (the later one wins on extraction)."""

    def __init__(self, fmt: TarFormat = "pax", *, sort_entries: bool = True) -> None:
        self.fmt: TarFormat = fmt
        self.sort_entries = sort_entries
        self._entries: list[_Entry] = []

    # ------------------------------------------------------------------ entry helpers
    def _info(
        self,
        path: str,
        type_: bytes,
        *,
        mode: int,
        uid: int,
        gid: int,
        mtime: int,
        xattrs: dict[str, bytes] | None,
    ) -> tarfile.TarInfo:
        info = tarfile.TarInfo(normalize_path(path))
        info.type = type_
        info.mode = mode
        info.uid = uid
        info.gid = gid
        info.mtime = mtime
        info.uname = ""
        info.gname = ""
        if xattrs:
            info.pax_headers = {
                XATTR_PAX_PREFIX + name: xattr_to_pax(value)
                for name, value in sorted(xattrs.items())
            }
        return info

    def file(
        self,
        path: str,
        data: bytes,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        mtime: int = DEFAULT_MTIME,
        xattrs: dict[str, bytes] | None = None,
    ) -> LayerBuilder:
        info = self._info(
            path, tarfile.REGTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime, xattrs=xattrs
        )
        info.size = len(data)
        return self.raw(info, data)

    def dir(
        self,
        path: str,
        mode: int = 0o755,
        uid: int = 0,
        gid: int = 0,
        mtime: int = DEFAULT_MTIME,
        xattrs: dict[str, bytes] | None = None,
    ) -> LayerBuilder:
        info = self._info(
            path, tarfile.DIRTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime, xattrs=xattrs
        )
        return self.raw(info)

    def dirs(self, *paths: str, mode: int = 0o755, mtime: int = DEFAULT_MTIME) -> LayerBuilder:
        """Add several root-owned directories with the same mode."""
        for path in paths:
            self.dir(path, mode=mode, mtime=mtime)
        return self

    def symlink(
        self,
        path: str,
        target: str,
        mode: int = 0o777,
        uid: int = 0,
        gid: int = 0,
        mtime: int = DEFAULT_MTIME,
        xattrs: dict[str, bytes] | None = None,
    ) -> LayerBuilder:
        info = self._info(
            path, tarfile.SYMTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime, xattrs=xattrs
        )
        info.linkname = target
        return self.raw(info)

    def hardlink(self, path: str, target: str, mtime: int = DEFAULT_MTIME) -> LayerBuilder:
        """Hard link *path* to *target* (a layer-relative path, in this or a lower layer)."""
        info = self._info(path, tarfile.LNKTYPE, mode=0o644, uid=0, gid=0, mtime=mtime, xattrs=None)
        info.linkname = normalize_path(target)
        return self.raw(info)

    def _device(
        self,
        path: str,
        type_: bytes,
        major: int,
        minor: int,
        mode: int,
        uid: int,
        gid: int,
        mtime: int,
    ) -> LayerBuilder:
        info = self._info(path, type_, mode=mode, uid=uid, gid=gid, mtime=mtime, xattrs=None)
        info.devmajor = major
        info.devminor = minor
        return self.raw(info)

    def chardev(
        self,
        path: str,
        major: int,
        minor: int,
        mode: int = 0o600,
        uid: int = 0,
        gid: int = 0,
        mtime: int = DEFAULT_MTIME,
    ) -> LayerBuilder:
        return self._device(path, tarfile.CHRTYPE, major, minor, mode, uid, gid, mtime)

    def blockdev(
        self,
        path: str,
        major: int,
        minor: int,
        mode: int = 0o600,
        uid: int = 0,
        gid: int = 0,
        mtime: int = DEFAULT_MTIME,
    ) -> LayerBuilder:
        return self._device(path, tarfile.BLKTYPE, major, minor, mode, uid, gid, mtime)

    def fifo(
        self,
        path: str,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        mtime: int = DEFAULT_MTIME,
    ) -> LayerBuilder:
        info = self._info(
            path, tarfile.FIFOTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime, xattrs=None
        )
        return self.raw(info)

    def whiteout(self, path: str) -> LayerBuilder:
        """Delete *path* (and everything under it) from lower layers: adds ``dir/.wh.name``."""
        parent, name = _split(normalize_path(path))
        marker = f"{parent}/{WHITEOUT_PREFIX}{name}" if parent else WHITEOUT_PREFIX + name
        info = self._info(
            marker, tarfile.REGTYPE, mode=0o644, uid=0, gid=0, mtime=DEFAULT_MTIME, xattrs=None
        )
        return self.raw(info, b"")

    def opaque(self, dirpath: str) -> LayerBuilder:
        """Hide all lower-layer contents of *dirpath*: adds ``dirpath/.wh..wh..opq``."""
        info = self._info(
            f"{normalize_path(dirpath)}/{OPAQUE_MARKER}",
            tarfile.REGTYPE,
            mode=0o644,
            uid=0,
            gid=0,
            mtime=DEFAULT_MTIME,
            xattrs=None,
        )
        return self.raw(info, b"")

    def raw(self, tarinfo: tarfile.TarInfo, data: bytes | None = None) -> LayerBuilder:
        """Add a caller-built TarInfo as is (its ``size`` is set from *data* when given)."""
        if data is not None:
            tarinfo.size = len(data)
        self._entries.append(_Entry(tarinfo, data))
        return self

    # ------------------------------------------------------------------ output
    @property
    def paths(self) -> list[str]:
        """Entry names in emission order."""
        return [entry.info.name for entry in self._ordered()]

    def _ordered(self) -> list[_Entry]:
        if not self.sort_entries:
            return list(self._entries)
        by_name = sorted(self._entries, key=lambda e: e.info.name.encode())
        names = {e.info.name for e in by_name}
        emitted: set[str] = set()
        waiting: dict[str, list[_Entry]] = {}
        out: list[_Entry] = []

        def emit(entry: _Entry) -> None:
            out.append(entry)
            emitted.add(entry.info.name)
            for dependent in waiting.pop(entry.info.name, []):
                emit(dependent)

        for entry in by_name:
            target = entry.info.linkname
            if entry.info.type == tarfile.LNKTYPE and target in names and target not in emitted:
                waiting.setdefault(target, []).append(entry)
            else:
                emit(entry)
        for pending in waiting.values():  # link cycles: emit in name order
            out.extend(pending)
        return out

    def tar(self, fmt: TarFormat | None = None) -> bytes:
        """The uncompressed tar (its sha256 is the layer's diff_id)."""
        fmt = fmt or self.fmt
        has_xattrs = any(
            key.startswith(XATTR_PAX_PREFIX)
            for entry in self._entries
            for key in entry.info.pax_headers
        )
        if fmt == "gnu" and has_xattrs:
            raise ValueError("GNU tar format cannot carry xattrs (pax headers); use 'pax'")
        buf = io.BytesIO()
        with tarfile.open(
            fileobj=buf,
            mode="w",
            format=_FORMATS[fmt],
            encoding="utf-8",
            errors="surrogateescape",
        ) as tar:
            for entry in self._ordered():
                tar.addfile(entry.info, io.BytesIO(entry.data) if entry.data is not None else None)
        return buf.getvalue()

    def build(self, fmt: TarFormat | None = None, compression: Compression = "gzip") -> bytes:
        """The layer blob as stored in an image (compressed per *compression*)."""
        return compress(self.tar(fmt), compression)

    def blob(self, fmt: TarFormat | None = None, compression: Compression = "gzip") -> LayerBlob:
        """The layer as a :class:`LayerBlob` (blob bytes, media type, diff_id)."""
        return LayerBlob.from_tar(self.tar(fmt), compression)
