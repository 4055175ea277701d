"""Source images behind the `LayerSource` seam: an OCI image layout, a `docker save`
archive (classic, or with an OCI layout inside), a directory as a one-layer image, and an
in-memory image for tests. A source gives its config bytes, the subject descriptor for the
imagefs manifest, and its layers, each a stream of `Member`s (lowest layer first)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import queue
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, Protocol, TypeVar, cast

from builder.entries import Entry, EntryKind, join_path, normalize_path, show
from builder.refs import SourceRef
from builder.tarlayer import STREAM_ERRORS, ByteCounter, Member, read_layer
from imagefs.digest import Digest
from imagefs.errors import FormatError, ImagefsError, NotFoundError, SourceError
from imagefs.format import MEDIA_TYPE_OCI_CONFIG as MEDIA_TYPE_OCI_IMAGE_CONFIG
from imagefs.image import ImageStore
from imagefs.oci import (
    INDEX_TYPES,
    LAYER_COMPRESSION,
    MANIFEST_TYPES,
    REF_NAME,
    Descriptor,
    Index,
    Manifest,
    canonical_json,
    current_platform,
    parse_json,
    select_platform,
)

T = TypeVar("T")


class Layer(Protocol):
    """One layer of a source image."""

    @property
    def name(self) -> str:
        """For messages, e.g. "layer 2/3 (sha256:0123456789ab)"."""
        ...

    @property
    def size(self) -> int | None:
        """Source bytes this layer counts as it is read (for progress), when known."""
        ...

    def members(self, counter: ByteCounter) -> Iterator[Member]:
        """The layer's members in order; adds the source bytes it reads to `counter` (files
        handed out as a `path` are counted by whoever reads them)."""
        ...


class LayerSource(Protocol):
    """A source image: config, subject and layers. `close` releases open files."""

    @property
    def config(self) -> bytes: ...

    @property
    def subject(self) -> Descriptor | None: ...

    @property
    def layers(self) -> Sequence[Layer]: ...

    def close(self) -> None: ...


def diff_ids(config: bytes) -> tuple[str, ...]:
    """The `rootfs.diff_ids` of an image config (empty when absent)."""
    try:
        doc = parse_json(config, "source image config")
    except FormatError as exc:
        raise SourceError(str(exc)) from None
    rootfs = doc.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list):
        return ()
    return tuple(str(x) for x in ids)


# ---------------------------------------------------------------------------------------------
# In memory


@dataclass(frozen=True)
class MemoryLayer:
    """A layer given as (entry, file data) pairs; data is None for non-files."""

    name: str
    items: Sequence[tuple[Entry, bytes | None]]

    @property
    def size(self) -> int:
        return sum(len(data or b"") for _, data in self.items)

    def members(self, counter: ByteCounter) -> Iterator[Member]:
        for entry, data in self.items:
            counter.value += len(data or b"")
            yield Member(entry, io.BytesIO(data) if data else None)


@dataclass(frozen=True)
class MemorySource:
    config: bytes
    layers: Sequence[Layer]
    subject: Descriptor | None = None

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# Tar layers and OCI images (in a layout directory or inside a docker-archive tarball)


@dataclass(frozen=True)
class TarLayer:
    """A layer blob: compressed or not (by magic bytes), checked against `digest` if given."""

    name: str
    open_raw: Callable[[], BinaryIO]
    media_type: str | None = None
    size: int | None = None
    digest: Digest | None = None

    def members(self, counter: ByteCounter) -> Iterator[Member]:
        try:
            raw = self.open_raw()
        except OSError as exc:
            raise SourceError(f"cannot read {self.name}: {exc.strerror or exc}") from None
        return read_layer(
            raw,
            self.name,
            media_type=self.media_type,
            digest=self.digest,
            counter=counter,
        )


class _HashingReader:
    """A blob read as one file: counted for progress and hashed for verification."""

    def __init__(self, raw: BinaryIO, counter: ByteCounter) -> None:
        self._raw = raw
        self._counter = counter
        self.hash = hashlib.sha256()
        self.total = 0

    def readinto(self, buffer: bytearray | memoryview) -> int:
        n = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            self.hash.update(memoryview(buffer)[:n])
            self.total += n
            self._counter.value += n
        return n or 0

    def drain(self) -> None:
        buf = bytearray(1 << 20)
        while self.readinto(buf):
            pass


@dataclass(frozen=True)
class FileLayer:
    """A layer blob that is one plain file (an ORAS or ModelPack artifact layer), placed
    at `path` in the tree and checked against `digest`."""

    name: str
    path: bytes
    open_raw: Callable[[], BinaryIO]
    size: int
    digest: Digest

    def members(self, counter: ByteCounter) -> Iterator[Member]:
        try:
            raw = self.open_raw()
        except OSError as exc:
            raise SourceError(f"cannot read {self.name}: {exc.strerror or exc}") from None
        try:
            reader = _HashingReader(raw, counter)
            yield Member(Entry(self.path, EntryKind.FILE, mode=0o644, size=self.size), reader)
            reader.drain()
            if reader.total != self.size or reader.hash.hexdigest() != self.digest.hex:
                raise SourceError(f"{self.name} does not match its digest {self.digest}")
        except OSError as exc:
            raise SourceError(f"cannot read {self.name}: {exc.strerror or exc}") from None
        finally:
            raw.close()


# artifact layers: a title names the file a plain-file layer holds
TITLE_ANNOTATIONS = ("org.opencontainers.image.title", "org.cncf.model.filepath")
IMAGE_CONFIG_TYPES = frozenset(
    {MEDIA_TYPE_OCI_IMAGE_CONFIG, "application/vnd.docker.container.image.v1+json"}
)
_TAR_SUFFIXES = (".tar", "+tar", ".tar+gzip", ".tar+zstd", ".tar.gzip", ".tar.gz", ".tar.zst")


def is_tar_media_type(media_type: str) -> bool:
    """A layer media type whose blob is a tar (compressed or not): OCI and Docker image
    layers, and artifact types such as ModelPack's `...weight.v1.tar+gzip`."""
    return media_type in LAYER_COMPRESSION or media_type.endswith(_TAR_SUFFIXES)


def artifact_file_path(layer: Descriptor, what: str) -> bytes | None:
    """The path a plain-file artifact layer holds (its title), normalized; None when the
    layer has no title."""
    for key in TITLE_ANNOTATIONS:
        title = layer.annotations.get(key)
        if title:
            return normalize_path(title.encode(), what=what)
    return None


class BlobStore(Protocol):
    where: str

    def index_json(self) -> bytes: ...

    def open(self, digest: Digest) -> BinaryIO: ...


def _read_verified(store: BlobStore, digest: Digest, what: str) -> bytes:
    try:
        with store.open(digest) as f:
            data = f.read()
    except OSError as exc:
        raise SourceError(f"cannot read {what} {digest}: {exc.strerror or exc}") from None
    if Digest.of(data) != digest:
        raise SourceError(f"{what} {digest} in {store.where} does not match its digest")
    return data


class LayoutStore:
    """Blobs of an OCI image layout directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)
        if not (root / "oci-layout").is_file() or not (root / "index.json").is_file():
            kind = "does not exist" if not root.exists() else "is not an OCI image layout"
            error = NotFoundError if not root.exists() else SourceError
            raise error(f"source {root} {kind}")

    def index_json(self) -> bytes:
        try:
            return (self.root / "index.json").read_bytes()
        except OSError as exc:
            raise SourceError(f"cannot read {self.root}/index.json: {exc.strerror}") from None

    def open(self, digest: Digest) -> BinaryIO:
        try:
            return (self.root / "blobs" / digest.algorithm / digest.hex).open("rb")
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} is missing from source {self.root}") from None


class TarStore:
    """Blobs of an OCI image layout stored inside a tarball (newer `docker save`)."""

    def __init__(self, tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], where: str):
        self._tar = tar
        self._members = members
        self.where = where

    def index_json(self) -> bytes:
        return self._read("index.json")

    def _read(self, name: str) -> bytes:
        f = self._tar.extractfile(self._members[name])
        assert f is not None
        with f:
            return f.read()

    def open(self, digest: Digest) -> BinaryIO:
        info = self._members.get(f"blobs/{digest.algorithm}/{digest.hex}")
        f = self._tar.extractfile(info) if info is not None and info.isreg() else None
        if f is None:
            raise NotFoundError(f"blob {digest} is missing from {self.where}")
        return cast(BinaryIO, f)


def _pick_manifest(store: BlobStore, tag: str | None) -> Descriptor:
    try:
        index = Index.parse(store.index_json())
    except FormatError as exc:
        raise SourceError(f"{store.where}: {exc}") from None
    if tag is not None:
        found = [m for m in index.manifests if m.annotations.get(REF_NAME) == tag]
        if not found:
            raise NotFoundError(f"tag {tag!r} not found in {store.where}")
        desc = found[-1]
    elif len(index.manifests) == 1:
        desc = index.manifests[0]
    else:
        named = any(REF_NAME in m.annotations for m in index.manifests)
        if index.manifests and not named and all(m.platform for m in index.manifests):
            return select_platform(index)  # an untagged multi-platform index.json
        tags = sorted(m.annotations.get(REF_NAME, "?") for m in index.manifests)
        raise NotFoundError(
            f"{store.where} holds {len(index.manifests)} images; name one with :TAG "
            f"({', '.join(tags) or 'none'})"
        )
    for _ in range(4):  # nested indexes
        if desc.media_type not in INDEX_TYPES:
            break
        nested = _read_verified(store, desc.digest, "image index")
        try:
            desc = select_platform(Index.parse(nested))
        except FormatError as exc:
            raise SourceError(f"{store.where}: {exc}") from None
    if desc.media_type not in MANIFEST_TYPES:
        raise SourceError(f"{store.where}: {desc.digest} is a {desc.media_type}, not an image")
    return desc


@dataclass(frozen=True)
class OciImageSource:
    """An image of an OCI layout (directory or tarball): manifest, config, tar layers."""

    config: bytes
    subject: Descriptor | None
    layers: Sequence[Layer]
    on_close: Callable[[], None] = field(default=lambda: None)

    @classmethod
    def open(
        cls, store: BlobStore, tag: str | None, on_close: Callable[[], None] = lambda: None
    ) -> OciImageSource:
        desc = _pick_manifest(store, tag)
        raw = _read_verified(store, desc.digest, "manifest")
        try:
            manifest = Manifest.parse(raw, desc.media_type)
        except FormatError as exc:
            raise SourceError(f"{store.where}: manifest {desc.digest}: {exc}") from None
        config = _read_verified(store, manifest.config.digest, "image config")
        subject = Descriptor(desc.media_type, desc.digest, len(raw))
        return cls.of_manifest(manifest, subject, config, store.open, on_close)

    @classmethod
    def of_manifest(
        cls,
        manifest: Manifest,
        subject: Descriptor,
        config: bytes,
        open_blob: Callable[[Digest], BinaryIO],
        on_close: Callable[[], None] = lambda: None,
    ) -> OciImageSource:
        n = len(manifest.layers)
        layers: list[Layer] = []
        for i, layer in enumerate(manifest.layers):
            name = f"layer {i + 1}/{n} ({layer.digest.algorithm}:{layer.digest.short})"
            opener = functools.partial(open_blob, layer.digest)
            if is_tar_media_type(layer.media_type):
                known = layer.media_type in LAYER_COMPRESSION
                layers.append(
                    TarLayer(
                        name=name,
                        open_raw=opener,
                        media_type=layer.media_type if known else None,
                        size=layer.size,
                        digest=layer.digest,
                    )
                )
                continue
            path = artifact_file_path(layer, name)
            if path is None:
                raise SourceError(
                    f"{name} has unknown layer media type {layer.media_type!r}: neither a "
                    "tar layer nor a file with a title annotation"
                )
            layers.append(FileLayer(name, path, opener, layer.size, layer.digest))
        if manifest.config.media_type not in IMAGE_CONFIG_TYPES:
            config = dir_config()  # an artifact (a model): its own config is not an image's
        return cls(config, subject, tuple(layers), on_close)

    def close(self) -> None:
        self.on_close()


def open_oci_layout(path: Path, tag: str | None) -> OciImageSource:
    return OciImageSource.open(LayoutStore(path), tag)


def open_image_store(store: ImageStore, platform: Mapping[str, str] | None = None) -> LayerSource:
    """A source image behind an `ImageStore` (a registry, plugged in at the edge): the
    manifest for `platform`, its config, and its layers streamed as they are read."""
    desc, manifest = store.resolve_manifest(platform)
    config = store.read_blob(manifest.config.digest)
    subject = Descriptor(desc.media_type, desc.digest, desc.size)
    return OciImageSource.of_manifest(manifest, subject, config, store.open_blob)


# ---------------------------------------------------------------------------------------------
# docker save archives


def open_docker_archive(path: Path) -> LayerSource:
    """A `docker save` tarball: classic (manifest.json with Config and Layers), or with an
    OCI layout inside (oci-layout + index.json, as docker 25 and later write)."""
    try:
        tar = tarfile.open(path, "r:*", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
    except FileNotFoundError:
        raise NotFoundError(f"source {path} does not exist") from None
    except STREAM_ERRORS as exc:
        raise SourceError(f"{path} is not a readable tar archive: {exc}") from None
    try:
        members: dict[str, tarfile.TarInfo] = {}
        for info in tar.getmembers():
            name = info.name
            while name.startswith("./"):
                name = name[2:]
            members[name] = info
        if "oci-layout" in members and "index.json" in members:
            return OciImageSource.open(TarStore(tar, members, str(path)), None, tar.close)
        return _classic_archive(tar, members, path)
    except ImagefsError:
        tar.close()
        raise
    except STREAM_ERRORS as exc:
        tar.close()
        raise SourceError(f"{path}: cannot read docker archive: {exc}") from None


def _open_member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> BinaryIO:
    f = tar.extractfile(info)
    assert f is not None
    return cast(BinaryIO, f)


def _classic_archive(
    tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], path: Path
) -> OciImageSource:
    def member(name: str, what: str) -> IO[bytes]:
        info = members.get(name)
        f = tar.extractfile(info) if info is not None else None
        if f is None:
            raise NotFoundError(f"{path}: {what} {name!r} is missing from the archive")
        return f

    if "manifest.json" not in members:
        raise SourceError(f"{path} is not a docker archive (no manifest.json, no index.json)")
    with member("manifest.json", "file") as f:
        doc = f.read()
    try:
        entries = json.loads(doc)
    except ValueError:
        raise SourceError(f"{path}: manifest.json is not valid JSON") from None
    if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict):
        count = len(entries) if isinstance(entries, list) else 0
        raise SourceError(f"{path}: expected one image in manifest.json, found {count}")
    config_name, layer_names = entries[0].get("Config"), entries[0].get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list):
        raise SourceError(f"{path}: manifest.json lacks Config or Layers")
    with member(config_name, "config") as f:
        config = f.read()
    n = len(layer_names)
    layers = []
    for i, name in enumerate(layer_names):
        info = members.get(str(name))
        if info is None or not info.isreg():
            raise NotFoundError(f"{path}: layer {name!r} is missing from the archive")
        layers.append(
            TarLayer(
                name=f"layer {i + 1}/{n} ({name})",
                open_raw=functools.partial(_open_member, tar, info),
                size=info.size,
            )
        )
    return OciImageSource(config, None, tuple(layers), tar.close)


# ---------------------------------------------------------------------------------------------
# A directory as a one-layer image


def _dir_xattrs(path: bytes) -> tuple[tuple[bytes, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # ENOTSUP and friends: no xattrs
        return ()
    out = []
    for name in sorted(names):
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        out.append((os.fsencode(name), value))
    return tuple(sorted(out))


def _check_directory(root: Path) -> os.stat_result:
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        raise NotFoundError(f"source directory {root} does not exist") from None
    except OSError as exc:
        raise SourceError(f"cannot read {root}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SourceError(f"source {root} is not a directory")
    return st


def walk_directory(root: Path) -> Iterator[tuple[Entry, bytes]]:
    """(entry, absolute path) for a directory and everything below it, depth-first in sorted
    name order (deterministic), as the walk goes (it overlaps with chunking). Hard-linked
    files become HARDLINK entries naming the first path reached; sockets are skipped (tar
    cannot hold them)."""
    base = os.fsencode(root)
    st = _check_directory(root)
    first_path: dict[tuple[int, int], bytes] = {}

    def meta(abs_path: bytes, rel: bytes, st: os.stat_result, kind: EntryKind) -> Entry:
        return Entry(
            path=rel,
            kind=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            mtime_ns=st.st_mtime_ns,
            xattrs=_dir_xattrs(abs_path),
        )

    def listing(abs_dir: bytes) -> Iterator[bytes]:
        try:
            return iter(sorted(os.listdir(abs_dir)))
        except OSError as exc:
            raise SourceError(f"cannot list {show(abs_dir)}: {exc.strerror}") from None

    def entry(abs_path: bytes, rel: bytes) -> Entry | None:
        st = os.lstat(abs_path)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            return meta(abs_path, rel, st, EntryKind.DIR)
        if stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in first_path:
                return Entry(rel, EntryKind.HARDLINK, link=first_path[key])
            first_path[key] = rel
            return _with_size(meta(abs_path, rel, st, EntryKind.FILE), st.st_size)
        if stat.S_ISLNK(mode):
            target = os.readlink(abs_path)
            return _with_link(meta(abs_path, rel, st, EntryKind.SYMLINK), target)
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            kind = EntryKind.CHAR if stat.S_ISCHR(mode) else EntryKind.BLOCK
            return _with_rdev(meta(abs_path, rel, st, kind), st.st_rdev)
        if stat.S_ISFIFO(mode):
            return meta(abs_path, rel, st, EntryKind.FIFO)
        return None  # sockets

    yield meta(base, b"", st, EntryKind.DIR), base
    stack = [(base, b"", listing(base))]  # pre-order depth-first, sorted by name
    while stack:
        abs_dir, rel_dir, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        abs_path = os.path.join(abs_dir, name)
        rel = join_path(rel_dir, name)
        try:
            found = entry(abs_path, rel)
        except OSError as exc:
            raise SourceError(f"cannot read {show(abs_path)}: {exc.strerror}") from None
        if found is None:
            continue
        yield found, abs_path
        if found.kind is EntryKind.DIR:
            stack.append((abs_path, rel, listing(abs_path)))


def _with_size(e: Entry, size: int) -> Entry:
    return Entry(e.path, e.kind, e.mode, e.uid, e.gid, e.mtime_ns, size, xattrs=e.xattrs)


def _with_link(e: Entry, target: bytes) -> Entry:
    return Entry(e.path, e.kind, e.mode, e.uid, e.gid, e.mtime_ns, link=target, xattrs=e.xattrs)


def _with_rdev(e: Entry, rdev: int) -> Entry:
    return Entry(
        e.path,
        e.kind,
        e.mode,
        e.uid,
        e.gid,
        e.mtime_ns,
        rdev_major=os.major(rdev),
        rdev_minor=os.minor(rdev),
        xattrs=e.xattrs,
    )


@dataclass(frozen=True)
class DirLayer:
    """A directory walked lazily while it is converted (so its total size is unknown)."""

    name: str
    root: Path
    size: None = None

    def members(self, counter: ByteCounter) -> Iterator[Member]:
        """Files come as paths: the builder reads them (small ones on worker threads) and
        counts their bytes. The walk runs on its own thread, so that its system calls do
        not stall the thread that feeds the workers."""
        for entry, abs_path in in_background(walk_directory(self.root)):
            if entry.kind is EntryKind.FILE and entry.size:
                yield Member(entry, path=abs_path)
            else:
                yield Member(entry)


def in_background(items: Iterator[T], *, batch: int = 256, depth: int = 32) -> Iterator[T]:
    """Iterate `items` on a background thread, up to `depth` batches ahead; its exceptions
    are raised here. Closing this generator stops the thread."""
    out: queue.Queue[list[T] | BaseException | None] = queue.Queue(depth)
    stop = threading.Event()

    def put(item: list[T] | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            pending: list[T] = []
            for item in items:
                pending.append(item)
                if len(pending) >= batch:
                    if not put(pending):
                        return
                    pending = []
            put(pending)
            put(None)
        except BaseException as exc:
            put(exc)

    thread = threading.Thread(target=run, name="imagefs-walk", daemon=True)
    thread.start()
    try:
        while True:
            got = out.get()
            if got is None:
                return
            if isinstance(got, BaseException):
                raise got
            yield from got
    finally:
        stop.set()
        thread.join()


def dir_config() -> bytes:
    """The config synthesized for a directory source (deterministic: no timestamps)."""
    platform = current_platform()
    return canonical_json(
        {
            "architecture": platform["architecture"],
            "os": platform["os"],
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": []},
        }
    )


def open_directory(path: Path) -> MemorySource:
    _check_directory(path)
    return MemorySource(dir_config(), (DirLayer(f"directory {path}", path),), None)


# ---------------------------------------------------------------------------------------------


def open_source(ref: SourceRef) -> LayerSource:
    """Open the source a reference names. Close it with `close()` (or contextlib.closing)."""
    if ref.transport == "oci":
        try:
            return open_oci_layout(ref.path, ref.tag)
        except OSError as exc:
            raise SourceError(f"cannot read {ref.path}: {exc.strerror or exc}") from None
    if ref.transport == "docker-archive":
        return open_docker_archive(ref.path)
    return open_directory(ref.path)


@contextlib.contextmanager
def opened(ref: SourceRef) -> Iterator[LayerSource]:
    source = open_source(ref)
    try:
        yield source
    finally:
        source.close()
