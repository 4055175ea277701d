"""Reading one tar layer as a stream: compression detection (magic bytes and media type),
decompression on a background thread, tar headers (a fast path for plain ustar/GNU headers,
`tarfile.TarInfo.fromtarfile` for PAX, GNU long names, sparse files and the rest), and tar
members turned into `Entry`s (every entry type, binary xattrs, ns mtimes, whiteouts).

Nothing here holds a layer or a file in memory; file data is read straight from the
decompressed stream; library errors become one-line `SourceError`s naming the layer."""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import math
import queue
import re
import tarfile
import threading
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, BinaryIO, Literal, Protocol, cast

import zstandard

from builder.chunker import Readable
from builder.entries import (
    Entry,
    EntryKind,
    classify_whiteout,
    is_aufs_meta,
    normalize_path,
    show,
)
from imagefs.digest import Digest
from imagefs.errors import ImagefsError, SourceError
from imagefs.oci import LAYER_COMPRESSION

try:  # ISA-L inflate is ~3x zlib's; fall back to the standard library without it.
    from isal import igzip as _igzip
    from isal import igzip_lib as _igzip_lib

    _GzipReader: type[gzip.GzipFile] = _igzip.IGzipFile
    # the stubs declare `error: Exception`; at run time it is the class IsalError
    _GZIP_ERRORS: tuple[type[BaseException], ...] = (cast(type[Exception], _igzip_lib.error),)
except ImportError:  # pragma: no cover - isal is a dependency
    _GzipReader = gzip.GzipFile
    _GZIP_ERRORS = ()

Compression = Literal["gzip", "zstd", "none"]
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# What a broken layer stream raises from the decompressors and tarfile.
STREAM_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    zlib.error,
    zstandard.ZstdError,
    tarfile.TarError,
    *_GZIP_ERRORS,
)
_U32 = 1 << 32
_XATTR_SCHILY = "SCHILY.xattr."
_XATTR_LIBARCHIVE = "LIBARCHIVE.xattr."
_PAX_TIME = re.compile(r"(-?)(\d+)(?:\.(\d*))?")
_KINDS = {
    tarfile.DIRTYPE: EntryKind.DIR,
    tarfile.SYMTYPE: EntryKind.SYMLINK,
    tarfile.LNKTYPE: EntryKind.HARDLINK,
    tarfile.CHRTYPE: EntryKind.CHAR,
    tarfile.BLKTYPE: EntryKind.BLOCK,
    tarfile.FIFOTYPE: EntryKind.FIFO,
}


@dataclass(frozen=True, slots=True)
class Member:
    """One layer entry and, for a regular file, its data: as a stream (valid until the next
    member), or as a `path` on disk that any thread may read (directory sources)."""

    entry: Entry
    data: Readable | None = None
    path: bytes | None = None


class ByteCounter:
    """Source bytes consumed so far (written by one reader thread, read for progress)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


# ---------------------------------------------------------------------------------------------
# Compression


def detect_compression(head: bytes, media_type: str | None, layer: str) -> Compression:
    """The layer's compression by magic bytes; an unknown media type is an error, and a
    media type that promises compression the bytes do not have is a corrupt stream."""
    declared: str | None = None
    if media_type is not None:
        declared = LAYER_COMPRESSION.get(media_type)
        if declared is None:
            raise SourceError(f"{layer} has unknown layer media type {media_type!r}")
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if declared in ("gzip", "zstd"):
        raise SourceError(f"{layer}: corrupt {declared} stream (bad magic bytes)")
    return "none"


class _SourceStream:
    """The raw layer bytes: counted for progress and hashed for verification."""

    def __init__(self, raw: BinaryIO, counter: ByteCounter) -> None:
        self._raw = raw
        self._counter = counter
        self._hash = hashlib.sha256()
        self._head = b""

    def read(self, n: int = -1) -> bytes:
        if not self._head:
            return self._read(n)
        if 0 <= n < len(self._head):
            data, self._head = self._head[:n], self._head[n:]
            return data
        data, self._head = self._head, b""
        return data + self._read(-1) if n < 0 else data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _read(self, n: int) -> bytes:
        data = self._raw.read(n)
        self._hash.update(data)
        self._counter.value += len(data)
        return data

    def peek_head(self, n: int) -> bytes:
        while len(self._head) < n:
            data = self._read(n - len(self._head))
            if not data:
                break
            self._head += data
        return self._head

    def read_rest(self) -> None:
        while self.read(1 << 20):
            pass

    def digest(self) -> Digest:
        return Digest("sha256", self._hash.hexdigest())

    def close(self) -> None:
        self._raw.close()


def _decompressor(source: _SourceStream, kind: Compression) -> Callable[[int], bytes]:
    if kind == "gzip":
        gz: gzip.GzipFile = _GzipReader(fileobj=cast("IO[bytes]", source), mode="rb")
        return gz.read
    if kind == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(
            cast("IO[bytes]", source), read_across_frames=True, closefd=False
        )
        return reader.read
    return source.read


class Prefetcher:
    """Runs `read(block)` on a background thread, `depth` blocks ahead (decompression then
    overlaps tar parsing and chunking, as zlib, ISA-L and zstd release the GIL). Errors of
    the background reads are raised to the consumer, as SourceErrors naming the layer."""

    def __init__(
        self, read: Callable[[int], bytes], layer: str, *, block: int = 1 << 20, depth: int = 4
    ) -> None:
        self._read = read
        self._layer = layer
        self._block = block
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self._stop = threading.Event()
        self._buf = b""
        self._pos = 0
        self._tell = 0
        self._done = False
        self._thread = threading.Thread(target=self._run, name="imagefs-layer", daemon=True)
        self._thread.start()

    def _put(self, item: bytes | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._read(self._block)
                if not self._put(data) or not data:
                    return
        except ImagefsError as exc:
            self._put(exc)
        except STREAM_ERRORS as exc:
            self._put(stream_error(exc, self._layer))
        except BaseException as exc:  # unexpected: hand it over as is
            self._put(exc)

    def _next(self) -> bool:
        if self._done:
            return False
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if not item:
            self._done = True
            return False
        self._buf, self._pos = item, 0
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = [self._buf[self._pos :]]
            self._buf, self._pos = b"", 0
            while self._next():
                parts.append(self._buf)
            self._buf, self._pos = b"", 0
            data = b"".join(parts)
            self._tell += len(data)
            return data
        if n == 0 or (self._pos >= len(self._buf) and not self._next()):
            return b""
        piece = self._buf[self._pos : self._pos + n]
        self._pos += len(piece)
        if len(piece) < n:
            parts = [piece]
            n -= len(piece)
            while n > 0 and self._next():
                piece = self._buf[:n]
                self._pos = len(piece)
                n -= len(piece)
                parts.append(piece)
            piece = b"".join(parts)
        self._tell += len(piece)
        return piece

    def readinto(self, buffer: bytearray | memoryview) -> int:
        view = memoryview(buffer).cast("B")
        want = len(view)
        got = 0
        while got < want:
            if self._pos >= len(self._buf) and not self._next():
                break
            n = min(want - got, len(self._buf) - self._pos)
            view[got : got + n] = memoryview(self._buf)[self._pos : self._pos + n]
            self._pos += n
            got += n
        self._tell += got
        return got

    def tell(self) -> int:
        return self._tell

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self._thread.join()


def stream_error(exc: BaseException, layer: str) -> SourceError:
    """One line naming what broke in a layer stream."""
    if isinstance(exc, tarfile.TarError):
        what = "truncated or corrupt tar stream"
    elif isinstance(exc, EOFError):
        what = "truncated compressed stream"
    elif isinstance(exc, zstandard.ZstdError):
        what = "corrupt zstd stream"
    elif isinstance(exc, (zlib.error, gzip.BadGzipFile, *_GZIP_ERRORS)):
        what = "corrupt gzip stream"
    else:
        what = "cannot read layer"
    detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return SourceError(f"{layer}: {what}: {detail}")


# ---------------------------------------------------------------------------------------------
# tar members -> entries


def _pax_time_ns(text: str) -> int | None:
    m = _PAX_TIME.fullmatch(text.strip())
    if m is None or len(m[2]) > 20:  # beyond any time_t (and int()'s 4300-digit limit)
        return None
    ns = int(m[2]) * 1_000_000_000 + int((m[3] or "")[:9].ljust(9, "0"))
    return -ns if m[1] else ns


def _xattrs(info: tarfile.TarInfo, name: bytes) -> tuple[tuple[bytes, bytes], ...]:
    out: dict[bytes, bytes] = {}
    for key, value in info.pax_headers.items():
        if key.startswith(_XATTR_SCHILY):
            # tarfile decodes PAX values as UTF-8, falling back to surrogateescape (the
            # errors= we open with) for binary values: encoding back gives the exact bytes.
            attr = key[len(_XATTR_SCHILY) :].encode("utf-8", "surrogateescape")
            out[attr] = value.encode("utf-8", "surrogateescape")
        elif key.startswith(_XATTR_LIBARCHIVE):
            attr = urllib.parse.unquote_to_bytes(key[len(_XATTR_LIBARCHIVE) :])
            try:
                out[attr] = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
            except ValueError:  # binascii.Error, or a value that is not ASCII
                raise SourceError(f"entry {show(name)} has a malformed xattr {key!r}") from None
        else:
            continue
        if not attr or b"\0" in attr:
            raise SourceError(f"entry {show(name)} has an invalid xattr name {key!r}")
    return tuple(sorted(out.items()))


def entry_from_tarinfo(info: tarfile.TarInfo, layer: str = "layer") -> Entry | None:
    """The Entry a tar member stands for; None for members to skip (AUFS metadata).

    The archive must have been opened with encoding utf-8 and errors surrogateescape."""
    raw_name = info.name.encode("utf-8", "surrogateescape")
    mtime_ns = None
    if "mtime" in info.pax_headers:
        mtime_ns = _pax_time_ns(info.pax_headers["mtime"])
    if mtime_ns is None:
        if not math.isfinite(info.mtime):  # a PAX mtime of nan, inf or 1e400
            raise SourceError(f"{layer}: entry {show(raw_name)} has an invalid mtime")
        mtime_ns = int(info.mtime) * 1_000_000_000
    return make_entry(
        layer,
        raw_name,
        info.type if not info.isreg() else tarfile.REGTYPE,
        info.mode,
        info.uid,
        info.gid,
        mtime_ns,
        info.size,
        info.linkname.encode("utf-8", "surrogateescape"),
        info.devmajor,
        info.devminor,
        _xattrs(info, raw_name),
    )


def make_entry(
    layer: str,
    raw_name: bytes,
    type_: bytes,
    mode: int,
    uid: int,
    gid: int,
    mtime_ns: int,
    size: int,
    linkname: bytes,
    devmajor: int,
    devminor: int,
    xattrs: tuple[tuple[bytes, bytes], ...] = (),
) -> Entry | None:
    """The Entry for a tar member's decoded header fields (REGTYPE for any regular file)."""
    path = normalize_path(raw_name, what=f"{layer}: entry")
    if is_aufs_meta(path):
        return None
    whiteout = classify_whiteout(path)
    if whiteout is not None:
        return Entry(whiteout[1], whiteout[0])
    if type_ == tarfile.REGTYPE:
        kind = EntryKind.FILE
    else:
        found = _KINDS.get(type_)
        if found is None:
            raise SourceError(f"{layer}: entry {show(raw_name)} has unsupported tar type {type_!r}")
        kind = found
    link = b""
    if kind is EntryKind.SYMLINK:
        link = linkname
        if not link or b"\0" in link:
            raise SourceError(f"{layer}: symlink {show(raw_name)} has an invalid target")
    elif kind is EntryKind.HARDLINK:
        link = normalize_path(linkname, what=f"{layer}: hard link {show(raw_name)} target")
    for value in (uid, gid, devmajor, devminor):
        if not 0 <= value < _U32:
            raise SourceError(f"{layer}: entry {show(raw_name)} has an out-of-range id or device")
    device = kind is EntryKind.CHAR or kind is EntryKind.BLOCK
    return Entry(
        path,
        kind,
        mode & 0o7777,
        uid,
        gid,
        mtime_ns,
        size if kind is EntryKind.FILE else 0,
        link,
        devmajor if device else 0,
        devminor if device else 0,
        xattrs,
    )


# Fast path for plain ustar / GNU headers (most members of most layers): tarfile's header
# parsing costs ~25 us a member in Python; anything unusual still goes through tarfile.
_FAST_TYPES = frozenset(b"01234567\0")
_USTAR = b"ustar\x0000"
_GNU = b"ustar  \x00"
_ZERO_BLOCK = bytes(512)


def _octal(field: bytes) -> int:
    return int(field.rstrip(b" \0").lstrip(b" ") or b"0", 8)


def _fast_header(
    buf: bytes,
) -> tuple[bytes, bytes, int, int, int, int, int, bytes, int, int] | None:
    """(name, type, mode, uid, gid, size, mtime, linkname, devmajor, devminor) of a plain
    ustar or GNU header with a valid checksum; None when tarfile must handle it."""
    magic = buf[257:265]
    if buf[156] not in _FAST_TYPES or (magic != _USTAR and magic != _GNU):
        return None
    if any(buf[i] & 0x80 for i in (100, 108, 116, 124, 136, 329, 337)):  # base-256 numbers
        return None
    try:
        if _octal(buf[148:156]) != sum(buf) - sum(buf[148:156]) + 256:
            return None
        fields = (
            _octal(buf[100:108]),
            _octal(buf[108:116]),
            _octal(buf[116:124]),
            _octal(buf[124:136]),
            _octal(buf[136:148]),
            _octal(buf[329:337]),
            _octal(buf[337:345]),
        )
    except ValueError:
        return None
    name = buf[:100].split(b"\0", 1)[0]
    if magic == _USTAR:
        prefix = buf[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    type_ = buf[156:157]
    if type_ == tarfile.AREGTYPE:  # old tars mark directories with a trailing slash
        type_ = tarfile.DIRTYPE if name.endswith(b"/") else tarfile.REGTYPE
    elif type_ == tarfile.CONTTYPE:
        type_ = tarfile.REGTYPE
    linkname = buf[157:257].split(b"\0", 1)[0]
    mode, uid, gid, size, mtime, major, minor = fields
    return name, type_, mode, uid, gid, size, mtime, linkname, major, minor


class TarStream(Protocol):
    """What `read_tar` reads: an uncompressed tar stream (a Prefetcher, or BytesIO)."""

    def read(self, n: int = -1, /) -> bytes: ...

    def readinto(self, buffer: bytearray | memoryview, /) -> int | None: ...

    def tell(self) -> int: ...


# A zero block, or the stream ending at a header boundary (not in typeshed's tarfile stubs).
_END_OF_ARCHIVE: tuple[type[Exception], ...] = (
    vars(tarfile)["EOFHeaderError"],
    vars(tarfile)["EmptyHeaderError"],
)


class _TarShim:
    """The attributes of a TarFile that the documented `TarInfo.fromtarfile` uses, over our
    own stream: tarfile parses headers (ustar, PAX, GNU long names, sparse maps) while file
    data is read straight from the stream, without tarfile's 10 KiB record copying."""

    def __init__(self, stream: TarStream) -> None:
        self.fileobj = stream
        self.encoding = "utf-8"
        self.errors = "surrogateescape"
        self.pax_headers: dict[str, str] = {}
        self.offset = 0  # where the next header starts


def _skip_to(stream: TarStream, position: int, layer: str) -> None:
    gap = position - stream.tell()
    if gap < 0:
        raise SourceError(f"{layer}: internal error: tar stream read past a member")
    while gap > 0:
        n = len(stream.read(min(gap, 1 << 20)))
        if not n:
            raise SourceError(f"{layer}: truncated or corrupt tar stream: unexpected end of data")
        gap -= n


class _MemberData:
    """A regular file's data, read straight from the tar stream (holes of sparse files are
    zeros); exactly `size` bytes."""

    def __init__(
        self,
        stream: TarStream,
        start: int,
        size: int,
        sparse: list[tuple[int, int]] | None,
        layer: str,
    ) -> None:
        self._stream = stream
        self._layer = layer
        self._start = start
        # (is data, length) pieces in file order
        self._pieces: list[tuple[bool, int]] = []
        if sparse is not None:
            at = 0
            for offset, size in sparse:
                if offset > at:
                    self._pieces.append((False, offset - at))
                self._pieces.append((True, size))
                at = offset + size
            if at < size:
                self._pieces.append((False, size - at))
            self._pieces.reverse()
        else:
            self._pieces.append((True, size))

    def readinto(self, buffer: bytearray | memoryview) -> int:
        if self._start >= 0:
            _skip_to(self._stream, self._start, self._layer)
            self._start = -1
        view = memoryview(buffer)
        while self._pieces:
            is_data, length = self._pieces[-1]
            if length == 0:
                self._pieces.pop()
                continue
            want = min(len(view), length)
            if is_data:
                n = self._stream.readinto(view[:want]) or 0
                if not n:
                    raise SourceError(
                        f"{self._layer}: truncated or corrupt tar stream: unexpected end of data"
                    )
            else:
                view[:want] = bytes(want)
                n = want
            self._pieces[-1] = (is_data, length - n)
            return n
        return 0


class _Pushback:
    """A TarStream that can be handed back the header block it just gave out."""

    def __init__(self, stream: TarStream) -> None:
        self._stream = stream
        self._head = b""

    def unread(self, data: bytes) -> None:
        self._head = data + self._head

    def read(self, n: int = -1, /) -> bytes:
        if not self._head:
            return self._stream.read(n)
        if 0 <= n < len(self._head):
            data, self._head = self._head[:n], self._head[n:]
            return data
        data, self._head = self._head, b""
        rest = -1 if n < 0 else n - len(data)
        return data + self._stream.read(rest) if rest else data

    def readinto(self, buffer: bytearray | memoryview, /) -> int | None:
        if self._head:
            data = self.read(len(buffer))
            buffer[: len(data)] = data
            return len(data)
        return self._stream.readinto(buffer)

    def tell(self) -> int:
        return self._stream.tell() - len(self._head)


def read_tar(stream: TarStream, layer: str = "layer") -> Iterator[Member]:
    """The members of an uncompressed tar stream, in order.

    A regular file's `data` must be read before advancing; an empty stream is an empty
    layer, a stream that ends at a header boundary without the end-of-archive blocks is
    accepted, and a truncated or corrupt header is an error. `Entry.content` is left -1."""
    pushback = _Pushback(stream)
    shim = _TarShim(pushback)
    try:
        while True:
            _skip_to(pushback, shim.offset, layer)
            buf = pushback.read(512)
            fast = None
            if len(buf) == 512 and not shim.pax_headers and buf != _ZERO_BLOCK:
                fast = _fast_header(buf)
            if fast is not None:
                name, type_, mode, uid, gid, size, mtime, linkname, major, minor = fast
                start = shim.offset + 512
                regular = type_ == tarfile.REGTYPE
                shim.offset = start + (-(-size // 512) * 512 if regular else 0)
                entry = make_entry(
                    layer, name, type_, mode, uid, gid, mtime * 1_000_000_000,
                    size, linkname, major, minor,
                )  # fmt: skip
                sparse = None
            else:
                pushback.unread(buf)
                try:
                    info = tarfile.TarInfo.fromtarfile(cast(tarfile.TarFile, shim))
                except _END_OF_ARCHIVE:
                    return
                except (ValueError, OverflowError) as exc:  # e.g. GNU.sparse.map=nan
                    raise SourceError(f"{layer}: corrupt tar header: {exc}") from None
                entry = entry_from_tarinfo(info, layer)
                start, size = info.offset_data, info.size
                sparse = cast(list[tuple[int, int]] | None, info.sparse)
            if entry is None:
                continue
            data = None
            if entry.kind is EntryKind.FILE and entry.size:
                data = _MemberData(pushback, start, size, sparse, layer)
            yield Member(entry, data)
    except ImagefsError:
        raise
    except STREAM_ERRORS as exc:
        raise stream_error(exc, layer) from None


def read_layer(
    raw: BinaryIO,
    layer: str,
    *,
    media_type: str | None = None,
    digest: Digest | None = None,
    counter: ByteCounter | None = None,
) -> Iterator[Member]:
    """Members of one (compressed) layer blob. After the last member the rest of the blob is
    read and, when `digest` is given, checked against it. Closes `raw` when done."""
    source = _SourceStream(raw, counter or ByteCounter())
    prefetch: Prefetcher | None = None
    try:
        try:
            kind = detect_compression(source.peek_head(4), media_type, layer)
        except STREAM_ERRORS as exc:
            raise stream_error(exc, layer) from None
        prefetch = Prefetcher(_decompressor(source, kind), layer)
        yield from read_tar(prefetch, layer)
        while prefetch.read(1 << 20):  # the tar's end padding; drives the decompressor to
            pass  # its end, a block at a time (the padding may be any size)
        prefetch.close()
        try:
            source.read_rest()
        except STREAM_ERRORS as exc:
            raise stream_error(exc, layer) from None
        if digest is not None and source.digest() != digest:
            raise SourceError(f"{layer} does not match its digest {digest} (corrupt blob)")
    finally:
        if prefetch is not None:
            prefetch.close()
        source.close()
