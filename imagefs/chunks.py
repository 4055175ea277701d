"""Chunk sources and the chunk cache: how a reader gets verified chunk bytes.

Seams (typing.Protocol): `BlobReader` (ranged reads of a blob), `ChunkCache` (digest ->
bytes), `ChunkSource` (refs -> verified bytes). Wrappers compose in one wiring function
(`build_chunk_source`): a cache in front of a fetcher that coalesces neighbouring chunks of
one blob into few range reads, decodes and verifies every chunk before anyone sees it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from imagefs.digest import ChunkDigest, Digest
from imagefs.errors import (
    CacheError,
    FormatError,
    IntegrityError,
    NotFoundError,
    SourceError,
    UsageError,
)
from imagefs.format import (
    BLOB_FOOTER_SIZE,
    BlobChunk,
    ChunkCodec,
    ChunkRef,
    decode_blob_footer,
    decode_blob_table,
)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Protocols


class BlobReader(Protocol):
    """Reads byte ranges of blobs (local files, a registry, a mirror)."""

    def read_range(self, blob: Digest, offset: int, length: int) -> bytes: ...


class ChunkCache(Protocol):
    """Verified, uncompressed chunk bytes by digest. `put` may silently decline."""

    def get(self, digest: ChunkDigest) -> bytes | None: ...

    def put(self, digest: ChunkDigest, data: bytes) -> None: ...


class ChunkSource(Protocol):
    """Returns the verified uncompressed bytes of each ref, in order."""

    def get_chunks(self, refs: Sequence[ChunkRef]) -> list[bytes]: ...


# ---------------------------------------------------------------------------------------------
# Statistics


@dataclass
class ReadStats:
    """Counters of one mount (or one reader), safe to update from many threads."""

    bytes_read: int = 0
    read_calls: int = 0
    bytes_fetched: int = 0
    chunks_fetched: int = 0
    cache_hits: int = 0
    requests: int = 0
    integrity_errors: int = 0
    prefetch_chunks: int = 0
    prefetch_bytes: int = 0
    fetched_by_blob: dict[str, int] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                setattr(self, key, getattr(self, key) + value)

    def fetched(self, blob: Digest, nbytes: int, seconds: float) -> None:
        with self._lock:
            self.requests += 1
            self.bytes_fetched += nbytes
            key = str(blob)
            self.fetched_by_blob[key] = self.fetched_by_blob.get(key, 0) + nbytes
            if len(self.latencies_s) < 100_000:
                self.latencies_s.append(seconds)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            lat = sorted(self.latencies_s)

            def pct(p: float) -> float:
                return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 3) if lat else 0.0

            return {
                "bytes_read": self.bytes_read,
                "read_calls": self.read_calls,
                "bytes_fetched": self.bytes_fetched,
                "chunks_fetched": self.chunks_fetched,
                "cache_hits": self.cache_hits,
                "requests": self.requests,
                "integrity_errors": self.integrity_errors,
                "prefetch_chunks": self.prefetch_chunks,
                "prefetch_bytes": self.prefetch_bytes,
                "bytes_fetched_by_blob": dict(sorted(self.fetched_by_blob.items())),
                "request_latency_ms": {
                    "p50": pct(0.5),
                    "p90": pct(0.9),
                    "p99": pct(0.99),
                    "max": pct(1.0),
                },
            }


# ---------------------------------------------------------------------------------------------
# Range planning (pure)


@dataclass(frozen=True, slots=True)
class RangePlan:
    """One read of `length` bytes at `offset` of `blob` that serves `refs`."""

    blob: Digest
    offset: int
    length: int
    refs: tuple[ChunkRef, ...]


def plan_ranges(refs: Sequence[ChunkRef], max_bytes: int, max_gap: int) -> list[RangePlan]:
    """Group chunks of one blob that lie close together into few reads.

    Chunks are sorted by (blob, offset); a chunk joins the current read when it starts at
    most `max_gap` bytes after the read's end and the read stays within `max_bytes` (a single
    chunk larger than `max_bytes` is still read whole). Duplicate refs are read once.
    """
    unique = sorted(
        {(r.blob, r.offset, r.stored_size): r for r in refs}.values(),
        key=lambda r: (r.blob, r.offset),
    )
    plans: list[RangePlan] = []
    group: list[ChunkRef] = []
    start = end = 0
    for ref in unique:
        if group and (
            ref.blob == group[0].blob
            and ref.offset - end <= max_gap
            and ref.offset + ref.stored_size - start <= max_bytes
            and ref.offset >= end
        ):
            group.append(ref)
            end = max(end, ref.offset + ref.stored_size)
            continue
        if group:
            plans.append(RangePlan(group[0].blob, start, end - start, tuple(group)))
        group, start, end = [ref], ref.offset, ref.offset + ref.stored_size
    if group:
        plans.append(RangePlan(group[0].blob, start, end - start, tuple(group)))
    return plans


# ---------------------------------------------------------------------------------------------
# Fetching


class FetchingChunkSource:
    """Fetches chunks through a `BlobReader` in coalesced ranges, decodes and verifies them.

    A chunk that fails verification is fetched once more on its own; a second failure is
    an `IntegrityError`. Wrong bytes never leave this class.
    """

    def __init__(
        self,
        reader: BlobReader,
        stats: ReadStats,
        *,
        coalesce_max_bytes: int = 4 << 20,
        coalesce_gap_bytes: int = 64 << 10,
        fetch_threads: int = 1,
    ) -> None:
        self._reader = reader
        self._stats = stats
        self._max = coalesce_max_bytes
        self._gap = coalesce_gap_bytes
        self._local = threading.local()
        self._threads = fetch_threads
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def _codec(self) -> ChunkCodec:
        codec: ChunkCodec | None = getattr(self._local, "codec", None)
        if codec is None:
            codec = self._local.codec = ChunkCodec()
        return codec

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="imagefs-fetch")
            return self._pool

    def _read(self, blob: Digest, offset: int, length: int) -> bytes:
        t0 = time.perf_counter()
        data = self._reader.read_range(blob, offset, length)
        self._stats.fetched(blob, len(data), time.perf_counter() - t0)
        if len(data) != length:
            raise IntegrityError(f"short read from blob {blob}: {len(data)} of {length} bytes")
        return data

    def _fetch(self, plan: RangePlan) -> list[tuple[ChunkDigest, bytes]]:
        data = self._read(plan.blob, plan.offset, plan.length)
        view = memoryview(data)
        codec = self._codec()
        out = []
        for ref in plan.refs:
            at = ref.offset - plan.offset
            try:
                chunk = codec.decode(view[at : at + ref.stored_size], ref)
            except IntegrityError:
                self._stats.add(integrity_errors=1)
                again = self._read(ref.blob, ref.offset, ref.stored_size)
                chunk = codec.decode(again, ref)
            out.append((ref.digest, chunk))
        self._stats.add(chunks_fetched=len(plan.refs))
        return out

    def get_chunks(self, refs: Sequence[ChunkRef]) -> list[bytes]:
        """Independent ranges are fetched in parallel (up to `fetch_threads` at a time)."""
        plans = plan_ranges(refs, self._max, self._gap)
        got: dict[ChunkDigest, bytes] = {}
        if len(plans) > 1 and self._threads > 1:
            for part in self._executor().map(self._fetch, plans):
                got.update(part)
        else:
            for plan in plans:
                got.update(self._fetch(plan))
        return [got[r.digest] for r in refs]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class CachedChunkSource:
    """Serves chunks from a cache, fetching the misses in one batch from `inner`.

    Single-flight: a chunk that another thread is already fetching is waited for, not
    fetched again (the kernel issues parallel readahead requests for neighbouring pages).
    """

    def __init__(self, inner: ChunkSource, cache: ChunkCache, stats: ReadStats) -> None:
        self._inner = inner
        self._cache = cache
        self._stats = stats
        self._lock = threading.Lock()
        self._inflight: dict[ChunkDigest, threading.Event] = {}

    def get_chunks(self, refs: Sequence[ChunkRef]) -> list[bytes]:
        found: dict[ChunkDigest, bytes] = {}
        missing: dict[ChunkDigest, ChunkRef] = {}
        for r in refs:
            if r.digest not in found and r.digest not in missing:
                data = self._cache.get(r.digest)
                if data is None:
                    missing[r.digest] = r
                else:
                    found[r.digest] = data
        if found:
            self._stats.add(cache_hits=sum(1 for r in refs if r.digest in found))
        if missing:
            mine: list[ChunkRef] = []
            waits: list[tuple[ChunkRef, threading.Event]] = []
            with self._lock:
                for digest, r in missing.items():
                    event = self._inflight.get(digest)
                    if event is None:
                        self._inflight[digest] = threading.Event()
                        mine.append(r)
                    else:
                        waits.append((r, event))
            try:
                if mine:
                    for ref, data in zip(mine, self._inner.get_chunks(mine), strict=True):
                        self._cache.put(ref.digest, data)
                        found[ref.digest] = data
            finally:
                with self._lock:
                    for r in mine:
                        self._inflight.pop(r.digest).set()
            for r, event in waits:
                event.wait()
                data = self._cache.get(r.digest)
                if data is None:  # the other fetch failed, or the cache declined the entry
                    data = self._inner.get_chunks([r])[0]
                    self._cache.put(r.digest, data)
                found[r.digest] = data
        return [found[r.digest] for r in refs]


# ---------------------------------------------------------------------------------------------
# Caches


class MemoryChunkCache:
    """A bounded in-process LRU of chunk bytes (also the in-memory fake for tests)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[ChunkDigest, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, digest: ChunkDigest) -> bytes | None:
        with self._lock:
            data = self._items.get(digest)
            if data is not None:
                self._items.move_to_end(digest)
            return data

    def put(self, digest: ChunkDigest, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(digest, None)
            if old is not None:
                self._size -= len(old)
            self._items[digest] = data
            self._size += len(data)
            while self._size > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._size -= len(dropped)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size(self) -> int:
        return self._size


_U64 = struct.Struct(">Q")
_INDEX = struct.Struct(">QQ")  # access stamp, value size
_CACHE_VERSION = b"1"


class _SharedEnv:
    """One LMDB environment per cache directory per process, shared by reference count.

    LMDB forbids opening the same environment twice in one process (closing one handle
    would drop the other's POSIX locks), so `LmdbChunkCache` objects on one directory share
    this.
    """

    _lock = threading.Lock()
    _open: dict[str, _SharedEnv] = {}  # noqa: RUF012 - process-wide registry

    def __init__(self, env: Any, dbs: tuple[Any, Any, Any, Any]) -> None:
        self.env = env
        self.chunks, self.index, self.lru, self.meta = dbs
        self.refs = 0
        # Transactions of this process, so that adopting a map another process grew
        # (`set_mapsize(0)` after MapResizedError) happens while none is running.
        self._gate = threading.Condition()
        self._active = 0
        self._resizing = False

    def _enter(self) -> None:
        with self._gate:
            self._gate.wait_for(lambda: not self._resizing)
            self._active += 1

    def _leave(self) -> None:
        with self._gate:
            self._active -= 1
            if self._active == 0:
                self._gate.notify_all()

    def _adopt_map_size(self) -> None:
        with self._gate:
            if self._resizing:
                self._gate.wait_for(lambda: not self._resizing)
                return
            self._resizing = True
            try:
                self._gate.wait_for(lambda: self._active == 0)
                self.env.set_mapsize(0)
            finally:
                self._resizing = False
                self._gate.notify_all()

    @contextlib.contextmanager
    def begin(self, *, write: bool = False, db: Any = None) -> Iterator[Any]:
        """A transaction; when another process grew the map, adopt its size and retry."""
        import lmdb

        self._enter()
        try:
            try:
                txn = self.env.begin(write=write, db=db, buffers=False)
            except lmdb.MapResizedError:
                self._leave()
                try:
                    self._adopt_map_size()
                finally:
                    self._enter()
                txn = self.env.begin(write=write, db=db, buffers=False)
            with txn:
                yield txn
        finally:
            self._leave()

    @classmethod
    def acquire(cls, path: Path, map_size: int) -> tuple[str, _SharedEnv]:
        import lmdb

        key = os.path.realpath(path)
        with cls._lock:
            shared = cls._open.get(key)
            if shared is None:
                env = lmdb.open(
                    key,
                    map_size=map_size,
                    max_dbs=4,
                    subdir=True,
                    lock=True,
                    metasync=False,
                    sync=False,
                    readahead=False,
                    max_readers=1024,
                )
                try:
                    env.reader_check()  # free reader slots of killed processes
                    with env.begin(write=True) as txn:
                        dbs = tuple(
                            env.open_db(name, txn=txn)
                            for name in (b"chunks", b"index", b"lru", b"meta")
                        )
                        version = txn.get(b"version", db=dbs[3])
                        if version is None:
                            txn.put(b"version", _CACHE_VERSION, db=dbs[3])
                            _drop_unnamed_entries(txn)
                        elif version != _CACHE_VERSION:
                            raise CacheError(
                                f"the chunk cache at {key} has layout version "
                                f"{version.decode(errors='replace')}, this imagefs reads "
                                f"{_CACHE_VERSION.decode()}; remove the directory to start afresh"
                            )
                except BaseException:
                    env.close()
                    raise
                shared = cls(env, dbs)  # type: ignore[arg-type]
                cls._open[key] = shared
            elif map_size > shared.env.info()["map_size"]:
                with contextlib.suppress(lmdb.Error):
                    shared.env.set_mapsize(map_size)
            shared.refs += 1
            return key, shared

    @classmethod
    def release(cls, key: str) -> None:
        with cls._lock:
            shared = cls._open.get(key)
            if shared is None:
                return
            shared.refs -= 1
            if shared.refs <= 0:
                del cls._open[key]
                shared.env.close()


def _drop_unnamed_entries(txn: Any) -> None:
    """Remove chunk entries an earlier layout kept in the unnamed database (32-byte keys)."""
    cursor = txn.cursor()
    stale = [k for k in cursor.iternext(values=False) if len(k) == 32]
    for k in stale:
        txn.delete(k)


class LmdbChunkCache:
    """The node-wide chunk cache: one LMDB environment per node, shared by every mount.

    Layout (one environment, four named databases):

    - `chunks`: 32-byte chunk digest -> verified uncompressed bytes;
    - `index`:  digest -> (access stamp, size), two big-endian u64;
    - `lru`:    stamp (big-endian u64) + digest -> empty; the oldest stamp sorts first;
    - `meta`:   `version`, `total_bytes` (sum of the values in `chunks`) and `clock` (the
      last stamp handed out; a logical clock, so ordering never depends on wall time).

    Every change (insert, eviction, removal of a corrupt entry) touches all four in one
    write transaction, so a killed process leaves either the whole entry with its
    accounting or nothing. Values are re-verified against their blake3 digest on every
    read; a mismatch is deleted and reported as a miss, so wrong bytes are never served.

    Bounding: `put` of an entry larger than `max_bytes` is declined. Otherwise, in the same
    transaction as the insert, least-recently-used entries (lowest stamps) are evicted until
    `total_bytes + len(data) <= max_bytes`. The map is `max_bytes * 1.25 + 64 MiB`: LMDB
    copies pages on write and cannot reuse pages freed in the running transaction. If the
    map is full anyway (free pages pinned by a long reader), one transaction evicts down to
    3/4 of the cap and commits, the insert is retried once, and then declined.

    Recency is approximate: `get` is one read transaction, and hits are remembered in
    memory and written as new stamps in one write transaction every `touch_batch` hits or
    `touch_interval_s` seconds (and on `gc`, `stats` and `close`). Hits served by the
    in-memory tier in front of this cache do not reach it. Concurrent processes rely on
    LMDB's own locking (`lock=True`); objects on one directory in one process share one
    environment. Durability: `sync=False`, so a killed process loses nothing committed, and
    an OS crash may lose the last entries; verification on read covers the rest.
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        *,
        touch_batch: int = 256,
        touch_interval_s: float = 2.0,
    ) -> None:
        import lmdb

        self._lmdb = lmdb
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.map_bytes = int(max_bytes * 1.25) + (64 << 20)
        self._touch_batch = touch_batch
        self._touch_interval_s = touch_interval_s
        self._touched: dict[bytes, None] = {}
        self._touch_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._closed = False
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._key, self._shared = _SharedEnv.acquire(self.path, self.map_bytes)
        except (OSError, lmdb.Error) as exc:
            raise CacheError(f"cannot open the chunk cache at {self.path}: {exc}") from None
        self._env = self._shared.env

    # -- reads

    def get(self, digest: ChunkDigest) -> bytes | None:
        raw = digest.raw
        try:
            with self._shared.begin(db=self._shared.chunks) as txn:
                data: bytes | None = txn.get(raw)
        except self._lmdb.Error as exc:
            raise CacheError(f"chunk cache read failed: {exc}") from None
        if data is None:
            return None
        if ChunkDigest.of(data) != digest:
            with contextlib.suppress(self._lmdb.Error), self._shared.begin(write=True) as txn:
                self._remove(txn, raw)
            return None
        self._touch(raw)
        return data

    def _touch(self, raw: bytes) -> None:
        with self._touch_lock:
            self._touched.pop(raw, None)
            self._touched[raw] = None
            due = len(self._touched) >= self._touch_batch or (
                time.monotonic() - self._last_flush >= self._touch_interval_s
            )
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the remembered hits as fresh access stamps, in one transaction."""
        if not self._flush_lock.acquire(blocking=False):
            return  # another thread is flushing; these hits go in the next batch
        try:
            with self._touch_lock:
                batch, self._touched = self._touched, {}
                self._last_flush = time.monotonic()
            if not batch or self._closed:
                return
            s = self._shared
            try:
                with self._shared.begin(write=True) as txn:
                    clock = self._clock(txn)
                    for raw in batch:
                        entry = txn.get(raw, db=s.index)
                        if entry is None:
                            continue  # evicted meanwhile
                        stamp, size = _INDEX.unpack(entry)
                        clock += 1
                        txn.delete(_U64.pack(stamp) + raw, db=s.lru)
                        txn.put(_U64.pack(clock) + raw, b"", db=s.lru)
                        txn.put(raw, _INDEX.pack(clock, size), db=s.index)
                    txn.put(b"clock", _U64.pack(clock), db=s.meta)
            except self._lmdb.Error:
                pass  # recency is best effort; the entries themselves are intact
        finally:
            self._flush_lock.release()

    # -- writes

    def put(self, digest: ChunkDigest, data: bytes) -> None:
        if len(data) > self.max_bytes or self._closed:
            return
        raw = digest.raw
        try:
            try:
                self._insert(raw, data)
            except self._lmdb.MapFullError:
                try:
                    self._evict_to(max(0, self.max_bytes * 3 // 4 - len(data)))
                    self._insert(raw, data)
                except self._lmdb.MapFullError:
                    return
        except self._lmdb.Error as exc:
            raise CacheError(f"chunk cache write failed: {exc}") from None

    def _insert(self, raw: bytes, data: bytes) -> None:
        s = self._shared
        with self._shared.begin(write=True) as txn:
            if txn.get(raw, db=s.index) is not None:
                self._touch_later(raw)
                return
            total = self._total(txn)
            if total + len(data) > self.max_bytes:
                total -= self._evict(txn, self.max_bytes - len(data))[1]
            clock = self._clock(txn) + 1
            txn.put(raw, data, db=s.chunks)
            txn.put(raw, _INDEX.pack(clock, len(data)), db=s.index)
            txn.put(_U64.pack(clock) + raw, b"", db=s.lru)
            txn.put(b"clock", _U64.pack(clock), db=s.meta)
            txn.put(b"total_bytes", _U64.pack(total + len(data)), db=s.meta)

    def _touch_later(self, raw: bytes) -> None:
        with self._touch_lock:
            self._touched.pop(raw, None)
            self._touched[raw] = None

    def _total(self, txn: Any) -> int:
        value = txn.get(b"total_bytes", db=self._shared.meta)
        return int(_U64.unpack(value)[0]) if value is not None else 0

    def _clock(self, txn: Any) -> int:
        value = txn.get(b"clock", db=self._shared.meta)
        return int(_U64.unpack(value)[0]) if value is not None else 0

    def _evict(self, txn: Any, target: int) -> tuple[int, int]:
        """Delete least-recently-used entries until the total is at most `target`
        (the caller commits, and updates `total_bytes` when it inserts)."""
        s = self._shared
        total = self._total(txn)
        entries = freed = 0
        cursor = txn.cursor(db=s.lru)
        while total - freed > target and cursor.first():
            raw = cursor.key()[8:]
            entry = txn.get(raw, db=s.index)
            size = _INDEX.unpack(entry)[1] if entry is not None else 0
            cursor.delete()
            txn.delete(raw, db=s.index)
            txn.delete(raw, db=s.chunks)
            entries += 1
            freed += size
        txn.put(b"total_bytes", _U64.pack(total - freed), db=s.meta)
        return entries, freed

    def _evict_to(self, target: int) -> tuple[int, int]:
        with self._shared.begin(write=True) as txn:
            return self._evict(txn, target)

    def _remove(self, txn: Any, raw: bytes) -> None:
        s = self._shared
        entry = txn.get(raw, db=s.index)
        txn.delete(raw, db=s.chunks)
        if entry is not None:
            stamp, size = _INDEX.unpack(entry)
            txn.delete(raw, db=s.index)
            txn.delete(_U64.pack(stamp) + raw, db=s.lru)
            txn.put(b"total_bytes", _U64.pack(max(0, self._total(txn) - size)), db=s.meta)

    # -- maintenance (the `imagefs cache` commands)

    def stats(self) -> dict[str, int]:
        """entries, bytes stored, the cap, the LMDB map size and the pages in use."""
        self.flush()
        try:
            with self._shared.begin() as txn:
                entries = int(txn.stat(self._shared.index)["entries"])
                total = self._total(txn)
            info = self._env.info()
            psize = self._env.stat()["psize"]
        except self._lmdb.Error as exc:
            raise CacheError(f"chunk cache read failed: {exc}") from None
        return {
            "entries": entries,
            "bytes": total,
            "max_bytes": self.max_bytes,
            "map_bytes": int(info["map_size"]),
            "used_bytes": int((info["last_pgno"] + 1) * psize),
        }

    def gc(self, max_bytes: int | None = None) -> dict[str, int]:
        """Evict least-recently-used entries down to `max_bytes` (default: the cap)."""
        self.flush()
        target = self.max_bytes if max_bytes is None else max_bytes
        if target < 0:
            raise UsageError("--max-bytes must not be negative")
        try:
            entries, freed = self._evict_to(target)
        except self._lmdb.Error as exc:
            raise CacheError(f"chunk cache gc failed: {exc}") from None
        return {"evicted_entries": entries, "freed_bytes": freed}

    def clear(self) -> dict[str, int]:
        """Remove every entry in one transaction (safe while other processes use the cache)."""
        s = self._shared
        with self._touch_lock:
            self._touched.clear()
        try:
            with self._shared.begin(write=True) as txn:
                entries = int(txn.stat(s.index)["entries"])
                total = self._total(txn)
                for db in (s.chunks, s.index, s.lru):
                    txn.drop(db, delete=False)
                txn.put(b"total_bytes", _U64.pack(0), db=s.meta)
        except self._lmdb.Error as exc:
            raise CacheError(f"chunk cache clear failed: {exc}") from None
        return {"evicted_entries": entries, "freed_bytes": total}

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True
        _SharedEnv.release(self._key)

    def __enter__(self) -> LmdbChunkCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TieredChunkCache:
    """A fast small cache in front of a larger one; hits in the second are promoted."""

    def __init__(self, first: ChunkCache, second: ChunkCache) -> None:
        self._first = first
        self._second = second
        self.put_failures = 0

    def get(self, digest: ChunkDigest) -> bytes | None:
        data = self._first.get(digest)
        if data is None:
            data = self._second.get(digest)
            if data is not None:
                self._first.put(digest, data)
        return data

    def put(self, digest: ChunkDigest, data: bytes) -> None:
        """A node cache that cannot take the chunk (its disk is full, say) does not fail
        the read: the verified bytes are served without being kept there."""
        self._first.put(digest, data)
        try:
            self._second.put(digest, data)
        except CacheError as exc:
            self.put_failures += 1
            if self.put_failures in (1, 100, 10_000):
                log.warning("chunk cache: %s (%d chunk(s) not cached)", exc, self.put_failures)


# ---------------------------------------------------------------------------------------------
# Blob readers


class FileBlobReader:
    """Reads blobs from files (an OCI layout's blobs/sha256 directory) with pread."""

    def __init__(self, blob_dir: Path) -> None:
        self._dir = Path(blob_dir)
        self._fds: dict[Digest, int] = {}
        self._lock = threading.Lock()

    def _fd(self, blob: Digest) -> int:
        fd = self._fds.get(blob)
        if fd is None:
            with self._lock:
                fd = self._fds.get(blob)
                if fd is None:
                    try:
                        fd = os.open(self._dir / blob.algorithm / blob.hex, os.O_RDONLY)
                    except FileNotFoundError:
                        raise NotFoundError(f"blob {blob} is missing from {self._dir}") from None
                    self._fds[blob] = fd
        return fd

    def read_range(self, blob: Digest, offset: int, length: int) -> bytes:
        try:
            return os.pread(self._fd(blob), length, offset)
        except OSError as exc:
            raise SourceError(f"cannot read blob {blob}: {exc.strerror}") from None

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


class MemoryBlobReader:
    """Blobs held in memory (the fake for tests)."""

    def __init__(self, blobs: dict[Digest, bytes]) -> None:
        self.blobs = blobs
        self.reads: list[tuple[Digest, int, int]] = []

    def read_range(self, blob: Digest, offset: int, length: int) -> bytes:
        self.reads.append((blob, offset, length))
        try:
            return self.blobs[blob][offset : offset + length]
        except KeyError:
            raise NotFoundError(f"blob {blob} not found") from None


def build_chunk_source(
    reader: BlobReader,
    stats: ReadStats,
    *,
    cache: ChunkCache | None = None,
    memory_cache_bytes: int = 64 << 20,
    coalesce_max_bytes: int = 4 << 20,
    coalesce_gap_bytes: int = 64 << 10,
    fetch_threads: int = 1,
) -> ChunkSource:
    """The one wiring of a reader's chunk path: memory LRU -> node cache -> verified fetch
    (coalesced ranges, independent ones in parallel)."""
    fetcher = FetchingChunkSource(
        reader,
        stats,
        coalesce_max_bytes=coalesce_max_bytes,
        coalesce_gap_bytes=coalesce_gap_bytes,
        fetch_threads=fetch_threads,
    )
    tier: ChunkCache = MemoryChunkCache(memory_cache_bytes)
    if cache is not None:
        tier = TieredChunkCache(tier, cache)
    return CachedChunkSource(fetcher, tier, stats)


def iter_blob_chunks(reader: BlobReader, blob: Digest, size: int) -> Iterator[BlobChunk]:
    """The chunk table a blob carries about itself (footer, then table)."""
    if size < BLOB_FOOTER_SIZE:
        raise FormatError(f"blob {blob} is too short to be an imagefs blob")
    footer = decode_blob_footer(
        reader.read_range(blob, size - BLOB_FOOTER_SIZE, BLOB_FOOTER_SIZE), size
    )
    table = reader.read_range(blob, footer.table_offset, footer.table_size)
    yield from decode_blob_table(table, footer)
