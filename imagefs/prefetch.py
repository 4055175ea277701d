"""Background prefetch: the files of the image's prefetch list or, without one, the files
its entrypoint needs to start (the Entrypoint/Cmd program, a script's interpreter, the ELF
interpreter and shared libraries, transitively). Their chunks are fetched in large batches
through the normal chunk source (so the cache fills and neighbouring chunks of one blob
coalesce into few range reads), in order, until done or stopped. Then the header regions of
every safetensors and GGUF file, which a model loader reads first."""

from __future__ import annotations

import errno
import functools
import json
import logging
import posixpath
import stat
import threading
from collections.abc import Sequence

from imagefs.digest import ChunkDigest
from imagefs.elf import elf_deps
from imagefs.errors import FsError, ImagefsError
from imagefs.format import ChunkRef
from imagefs.tensors import model_format, tensor_layout
from imagefs.view import ROOT_INO, FileSystemView

log = logging.getLogger(__name__)

BATCH_BYTES = 16 << 20  # uncompressed chunk bytes requested per get_chunks call


def run_prefetch(
    view: FileSystemView,
    stop: threading.Event,
    *,
    batch_bytes: int = BATCH_BYTES,
    indices: Sequence[int] | None = None,
) -> int:
    """Fetch the chunks of `indices` (default: the bootstrap's prefetch list); returns the
    chunk count prefetched.

    Never raises: a failed batch is logged and skipped (reads fetch on their own)."""
    boot = view.bootstrap
    seen: set[ChunkDigest] = set()
    batch: list[ChunkRef] = []
    size = 0
    done = 0

    def flush() -> None:
        nonlocal batch, size, done
        if batch and not stop.is_set():
            try:
                view.chunks.get_chunks(batch)
            except Exception as exc:  # a read will retry and report it
                log.warning("prefetch batch failed: %s", exc)
            else:
                view.stats.add(prefetch_chunks=len(batch), prefetch_bytes=size)
                done += len(batch)
        batch, size = [], 0

    for index in boot.prefetch if indices is None else indices:
        if stop.is_set():
            break
        try:
            if not boot.inode(index).is_reg:
                continue
            placed = list(boot.file_chunks(index))
        except Exception as exc:
            log.warning("prefetch of inode %d skipped: %s", index, exc)
            continue
        for _, ref in placed:
            if ref.digest in seen:
                continue
            seen.add(ref.digest)
            batch.append(ref)
            size += ref.size
            if size >= batch_bytes:
                flush()
    flush()
    return done


# ---------------------------------------------------------------------------------------------
# What the entrypoint needs

LIBRARY_DIRS = (
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
)
MAX_SYMLINKS = 40
MAX_FILES = 64


def resolve(view: FileSystemView, path: str) -> int | None:
    """Inode of `path` in the image, following symlinks (absolute ones from the image's
    root, never outside it); None when it does not resolve."""
    parts = [p for p in path.split("/") if p]
    ino = ROOT_INO
    stack: list[int] = []  # inodes of the directories above `ino`
    hops = 0
    while parts:
        name = parts.pop(0)
        if name == ".":
            continue
        if name == "..":
            ino = stack.pop() if stack else ROOT_INO
            continue
        try:
            child = view.lookup(ino, name.encode())
            attr = view.getattr(child)
        except FsError:
            return None
        if stat.S_ISLNK(attr.mode):
            hops += 1
            if hops > MAX_SYMLINKS:
                return None
            target = view.readlink(child).decode(errors="surrogateescape")
            parts = [p for p in target.split("/") if p] + parts
            if target.startswith("/"):
                ino, stack = ROOT_INO, []
            continue
        stack.append(ino)
        ino = child
    return ino


def _command(config: bytes) -> tuple[str | None, str]:
    """The program the image runs (Entrypoint, else Cmd) and its PATH."""
    try:
        doc = json.loads(config)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, ""
    runtime = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(runtime, dict):
        return None, ""
    path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    for item in runtime.get("Env") or []:
        if isinstance(item, str) and item.startswith("PATH="):
            path = item[5:]
    for key in ("Entrypoint", "Cmd"):
        argv = runtime.get(key)
        if isinstance(argv, list) and argv and isinstance(argv[0], str) and argv[0]:
            return argv[0], path
    return None, path


def _find_program(view: FileSystemView, program: str, path: str) -> int | None:
    if "/" in program:
        return resolve(view, program if program.startswith("/") else "/" + program)
    for directory in path.split(":"):
        if directory.startswith("/"):
            ino = resolve(view, posixpath.join(directory, program))
            if ino is not None:
                return ino
    return None


def entrypoint_files(view: FileSystemView, config: bytes) -> list[int]:
    """Inode indices of the files the image's entrypoint needs to start, in the order it
    loads them: the program (a `#!` script's interpreter after it), the ELF interpreter,
    then the shared libraries, breadth first. Reads headers through the view (which fetches
    the chunks it touches). Best effort: whatever cannot be resolved is left out."""
    program, path = _command(config)
    if program is None:
        return []
    first = _find_program(view, program, path)
    queue = [first] if first is not None else []
    out: list[int] = []
    while queue and len(out) < MAX_FILES:
        ino = queue.pop(0)
        if ino - 1 in out:
            continue
        try:
            attr = view.getattr(ino)
            if not stat.S_ISREG(attr.mode):
                continue
            out.append(ino - 1)
            head = view.read(ino, 0, 256)
        except ImagefsError as exc:
            if not (isinstance(exc, FsError) and exc.errno == errno.ENOENT):
                log.info("entrypoint prefetch: %s", exc)
            continue
        if head.startswith(b"#!"):
            interp = head[2:].split(b"\n", 1)[0].strip().split(b" ", 1)[0]
            found = resolve(view, interp.decode(errors="surrogateescape"))
            if found is not None:
                queue.append(found)
            continue
        try:
            deps = elf_deps(functools.partial(view.read, ino), attr.size)
        except ImagefsError as exc:
            log.info("entrypoint prefetch: %s", exc)
            continue
        if deps.interpreter:
            found = resolve(view, deps.interpreter)
            if found is not None:
                queue.append(found)
        for name in deps.needed:
            for directory in LIBRARY_DIRS:
                found = resolve(view, f"{directory}/{name}")
                if found is not None:
                    queue.append(found)
                    break
    return out


# ---------------------------------------------------------------------------------------------
# Model headers


def model_files(view: FileSystemView) -> list[tuple[bytes, int]]:
    """(path, inode index) of every regular file named *.safetensors or *.gguf, in path
    order, each inode once."""
    out: list[tuple[bytes, int]] = []
    seen: set[int] = set()
    boot = view.bootstrap
    for path, ino in view.walk():
        index = ino - 1
        if model_format(path) is None or index in seen:
            continue
        node = boot.inode(index)
        if node.is_reg and node.size:
            seen.add(index)
            out.append((path, index))
    return out


class _HeadFetcher:
    """A file's first bytes, whole chunks at a time, fetched as prefetch."""

    def __init__(self, view: FileSystemView, index: int, seen: set[ChunkDigest]) -> None:
        self.view = view
        self.index = index
        self.size = view.bootstrap.inode(index).size
        self.seen = seen
        self.head = bytearray()

    def fetch(self, n: int) -> bytes:
        n = min(n, self.size)
        if n > len(self.head):
            refs = [r for _, r in self.view.bootstrap.file_chunks(self.index, len(self.head), n)]
            for data in self.view.chunks.get_chunks(refs):
                self.head += data
            _count(self.view, refs, self.seen)
        return bytes(self.head)


def _count(view: FileSystemView, refs: Sequence[ChunkRef], seen: set[ChunkDigest]) -> None:
    new = {r.digest: r.size for r in refs if r.digest not in seen}
    seen.update(new)
    view.stats.add(prefetch_chunks=len(new), prefetch_bytes=sum(new.values()))


def model_header_ranges(
    view: FileSystemView, stop: threading.Event | None = None, *, batch_bytes: int = BATCH_BYTES
) -> list[tuple[int, int]]:
    """(inode index, header end) of each safetensors and GGUF file of the image whose header
    parses: [0, 8 + N) of a safetensors file, [0, data start) of a GGUF file. Finding them
    fetches the chunks of those regions (counted as prefetch). Never raises: a file whose
    header cannot be read or parsed is logged and left out."""
    out: list[tuple[int, int]] = []
    seen: set[ChunkDigest] = set()
    files = model_files(view)
    fetchers = [_HeadFetcher(view, index, seen) for _, index in files]
    # the first chunk of every file in few large requests: most safetensors headers are
    # exactly that chunk, and most of a small GGUF header is in it
    pending: list[_HeadFetcher] = []
    size = 0
    for at, fetcher in enumerate(fetchers):
        pending.append(fetcher)
        size += min(fetcher.size, 1 << 20)
        if size >= batch_bytes or at == len(fetchers) - 1:
            if stop is not None and stop.is_set():
                return out
            try:
                firsts = [next(view.bootstrap.file_chunks(f.index, 0, 1))[1] for f in pending]
                for f, data in zip(pending, view.chunks.get_chunks(firsts), strict=True):
                    f.head += data
                _count(view, firsts, seen)
            except Exception as exc:  # each file's own fetch retries below
                log.warning("model header prefetch batch failed: %s", exc)
            pending, size = [], 0
    for (path, index), fetcher in zip(files, fetchers, strict=True):
        if stop is not None and stop.is_set():
            break
        try:
            layout = tensor_layout(path, fetcher.fetch, fetcher.size)
        except Exception as exc:  # a read will retry and report it
            log.warning("model header prefetch of %r failed: %s", path, exc)
            continue
        if layout is not None:
            out.append((index, layout.header_end))
    return out


def prefetch_model_headers(view: FileSystemView, stop: threading.Event) -> int:
    """Fetch the header regions of every safetensors and GGUF file (and tell the view where
    they end, see `FileSystemView.set_header_end`); their count."""
    ranges = model_header_ranges(view, stop)
    for index, end in ranges:
        view.set_header_end(index + 1, end)
    return len(ranges)
