"""The snapshotter's metadata store: which snapshots exist, of which kind, on which parent,
with which labels. Pure logic over an in-memory model, persisted atomically to one JSON file
(`ROOT/metadata.json`: write a temp file, fsync, rename, fsync the directory) after every
change, so a restarted snapshotter knows its snapshots.

Semantics follow containerd's own snapshotter storage (snapshots/storage in containerd 1.6):
a parent must exist and be committed, only an active snapshot can be committed, a snapshot
with children cannot be removed, and Update changes only labels. Each snapshot has a numeric
id that names its directory, ROOT/snapshots/<id>; the directories themselves are the
caller's business (see `snapshotter.py`).
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from imagefs.errors import ImagefsError, NotFoundError, TargetError, UsageError

METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1


class SnapshotNotFound(NotFoundError):
    """No snapshot with that key (gRPC NOT_FOUND)."""


class SnapshotExists(TargetError):
    """A snapshot with that key already exists (gRPC ALREADY_EXISTS)."""


class SnapshotPrecondition(ImagefsError):
    """The snapshot is in the wrong state for the request (gRPC FAILED_PRECONDITION)."""


class SnapshotInvalid(UsageError):
    """The request itself is malformed (gRPC INVALID_ARGUMENT)."""


class StoreError(ImagefsError):
    """The metadata file cannot be read or written."""


class Kind(enum.Enum):
    VIEW = "view"
    ACTIVE = "active"
    COMMITTED = "committed"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One snapshot as the store knows it. Times are nanoseconds since the epoch."""

    key: str
    id: str
    kind: Kind
    parent: str  # "" for none
    labels: Mapping[str, str] = field(default_factory=dict)
    created_ns: int = 0
    updated_ns: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "parent": self.parent,
            "labels": dict(self.labels),
            "created_ns": self.created_ns,
            "updated_ns": self.updated_ns,
        }

    @classmethod
    def from_json(cls, key: str, doc: Mapping[str, Any]) -> Snapshot:
        labels = doc.get("labels", {})
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise TypeError("labels")
        return cls(
            key=key,
            id=str(doc["id"]),
            kind=Kind(doc["kind"]),
            parent=str(doc.get("parent", "")),
            labels=dict(labels),
            created_ns=int(doc["created_ns"]),
            updated_ns=int(doc["updated_ns"]),
        )


def _check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k:
            raise SnapshotInvalid(f"invalid label {k!r}={v!r}")
        out[k] = v
    return out


class MetadataStore:
    """The snapshots of one snapshotter root. Thread-safe; every change is persisted before
    it becomes visible (a failed write leaves the model as it was)."""

    def __init__(self, root: Path, *, clock: Any = time.time_ns) -> None:
        self.root = root
        self.path = root / METADATA_FILE
        self._clock = clock
        self._lock = threading.RLock()
        self._snaps: dict[str, Snapshot] = {}
        self._next_id = 1
        self._load()

    # ------------------------------------------------------------------ persistence

    def _load(self) -> None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc
        try:
            doc = json.loads(text)
            if doc.get("version") != FORMAT_VERSION:
                raise StoreError(
                    f"{self.path}: unknown metadata version {doc.get('version')!r} "
                    f"(this snapshotter knows {FORMAT_VERSION})"
                )
            snaps = {k: Snapshot.from_json(k, v) for k, v in doc["snapshots"].items()}
            next_id = int(doc["next_id"])
        except StoreError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"{self.path} is corrupt: {type(exc).__name__}: {exc}") from exc
        self._snaps, self._next_id = snaps, next_id

    def _save(self, snaps: Mapping[str, Snapshot], next_id: int) -> None:
        doc = {
            "version": FORMAT_VERSION,
            "next_id": next_id,
            "snapshots": {k: s.to_json() for k, s in sorted(snaps.items())},
        }
        data = json.dumps(doc, indent=1, sort_keys=True).encode()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".metadata-", suffix=".tmp", dir=self.root)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            dfd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc}") from exc

    def _commit(self, snaps: dict[str, Snapshot], next_id: int | None = None) -> None:
        nid = self._next_id if next_id is None else next_id
        self._save(snaps, nid)
        self._snaps, self._next_id = snaps, nid

    # ------------------------------------------------------------------ queries

    def get(self, key: str) -> Snapshot:
        with self._lock:
            try:
                return self._snaps[key]
            except KeyError:
                raise SnapshotNotFound(f"snapshot {key!r} does not exist") from None

    def snapshots(self) -> list[Snapshot]:
        with self._lock:
            return sorted(self._snaps.values(), key=lambda s: int(s.id))

    def children(self, key: str) -> list[Snapshot]:
        with self._lock:
            return [s for s in self._snaps.values() if s.parent == key]

    def chain(self, key: str) -> list[Snapshot]:
        """The ancestors of `key`, nearest first (not including `key` itself)."""
        with self._lock:
            out: list[Snapshot] = []
            parent = self.get(key).parent
            while parent:
                snap = self._snaps.get(parent)
                if snap is None:
                    raise StoreError(f"snapshot {key!r}: ancestor {parent!r} is missing")
                out.append(snap)
                parent = snap.parent
            return out

    def ids(self) -> set[str]:
        with self._lock:
            return {s.id for s in self._snaps.values()}

    # ------------------------------------------------------------------ changes

    def create(
        self, key: str, parent: str, kind: Kind, labels: Mapping[str, str] | None = None
    ) -> Snapshot:
        """Prepare (kind ACTIVE) or View (kind VIEW) `key` on `parent` ("" for none)."""
        if kind is Kind.COMMITTED:
            raise SnapshotInvalid("a snapshot is created active or view, never committed")
        if not key:
            raise SnapshotInvalid("snapshot key must not be empty")
        with self._lock:
            if key in self._snaps:
                raise SnapshotExists(f"snapshot {key!r} already exists")
            if parent:
                p = self._snaps.get(parent)
                if p is None:
                    raise SnapshotNotFound(f"parent snapshot {parent!r} does not exist")
                if p.kind is not Kind.COMMITTED:
                    raise SnapshotInvalid(f"parent {parent!r} is not a committed snapshot")
            now = self._clock()
            snap = Snapshot(
                key=key,
                id=str(self._next_id),
                kind=kind,
                parent=parent,
                labels=_check_labels(labels or {}),
                created_ns=now,
                updated_ns=now,
            )
            self._commit({**self._snaps, key: snap}, self._next_id + 1)
            return snap

    def add_committed(
        self, name: str, parent: str, labels: Mapping[str, str] | None = None
    ) -> Snapshot:
        """A committed snapshot made by the snapshotter itself (a remote layer), with no
        active stage in between."""
        with self._lock:
            if name in self._snaps:
                raise SnapshotExists(f"snapshot {name!r} already exists")
            if parent and self.get(parent).kind is not Kind.COMMITTED:
                raise SnapshotInvalid(f"parent {parent!r} is not a committed snapshot")
            now = self._clock()
            snap = Snapshot(
                key=name,
                id=str(self._next_id),
                kind=Kind.COMMITTED,
                parent=parent,
                labels=_check_labels(labels or {}),
                created_ns=now,
                updated_ns=now,
            )
            self._commit({**self._snaps, name: snap}, self._next_id + 1)
            return snap

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> Snapshot:
        """Turn active `key` into committed `name` (same id, same directory), merging
        `labels` over the active snapshot's labels."""
        if not name:
            raise SnapshotInvalid("committed snapshot name must not be empty")
        with self._lock:
            active = self.get(key)
            if active.kind is not Kind.ACTIVE:
                raise SnapshotPrecondition(
                    f"snapshot {key!r} is {active.kind.value}, only an active snapshot commits"
                )
            if name in self._snaps:
                raise SnapshotExists(f"snapshot {name!r} already exists")
            now = self._clock()
            committed = replace(
                active,
                key=name,
                kind=Kind.COMMITTED,
                labels={**active.labels, **_check_labels(labels or {})},
                created_ns=now,
                updated_ns=now,
            )
            snaps = {k: v for k, v in self._snaps.items() if k != key}
            snaps[name] = committed
            self._commit(snaps)
            return committed

    def remove(self, key: str) -> Snapshot:
        """Forget `key`; FAILED_PRECONDITION while another snapshot has it as parent.
        Returns the removed snapshot, whose directory the caller then deletes."""
        with self._lock:
            snap = self.get(key)
            children = self.children(key)
            if children:
                raise SnapshotPrecondition(
                    f"snapshot {key!r} has {len(children)} child snapshot(s), "
                    f"e.g. {children[0].key!r}"
                )
            self._commit({k: v for k, v in self._snaps.items() if k != key})
            return snap

    def update(self, key: str, labels: Mapping[str, str], paths: Iterable[str]) -> Snapshot:
        """Update `key`'s labels by field mask: no paths or `labels` replace them all;
        `labels.K` sets K to `labels[K]` (removes K when absent or empty). Any other path
        is INVALID_ARGUMENT, as in containerd."""
        new = _check_labels(labels)
        with self._lock:
            snap = self.get(key)
            paths = list(paths)
            result = dict(snap.labels)
            if not paths:
                result = new
            for path in paths:
                if path == "labels":
                    result = dict(new)
                elif path.startswith("labels."):
                    name = path[len("labels.") :]
                    if not name:
                        raise SnapshotInvalid(f"invalid field path {path!r}")
                    if new.get(name):
                        result[name] = new[name]
                    else:
                        result.pop(name, None)
                else:
                    raise SnapshotInvalid(f"cannot update field {path!r} of snapshot {key!r}")
            updated = replace(snap, labels=result, updated_ns=self._clock())
            self._commit({**self._snaps, key: updated})
            return updated
