"""The snapshotter's metadata store: containerd's snapshot semantics and persistence."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from fuse_mount.snapshotter.state import (
    METADATA_FILE,
    Kind,
    MetadataStore,
    SnapshotExists,
    SnapshotInvalid,
    SnapshotNotFound,
    SnapshotPrecondition,
    StoreError,
)
from imagefs.errors import ImagefsError, NotFoundError


def _store(root: Path) -> MetadataStore:
    ticks = itertools.count(1000)
    return MetadataStore(root, clock=lambda: next(ticks))


def _layers(store: MetadataStore) -> None:
    """Two committed layers L1 <- L2, as a pull makes them."""
    store.create("ns/1/extract-a", "", Kind.ACTIVE, {"a": "1"})
    store.commit("ns/2/L1", "ns/1/extract-a", {"b": "2"})
    store.create("ns/3/extract-b", "ns/2/L1", Kind.ACTIVE)
    store.commit("ns/4/L2", "ns/3/extract-b")


def test_prepare_commit_chain(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _layers(store)
    active = store.create("ns/5/ctr", "ns/4/L2", Kind.ACTIVE, {"x": "y"})
    assert active.kind is Kind.ACTIVE and active.parent == "ns/4/L2"
    assert [s.key for s in store.chain("ns/5/ctr")] == ["ns/4/L2", "ns/2/L1"]
    l1 = store.get("ns/2/L1")
    assert l1.kind is Kind.COMMITTED
    assert dict(l1.labels) == {"a": "1", "b": "2"}  # commit merges labels
    # the committed snapshot keeps the active one's id (and so its directory)
    assert l1.id == "1" and store.get("ns/4/L2").id == "2" and active.id == "3"
    with pytest.raises(SnapshotNotFound):
        store.get("ns/1/extract-a")  # renamed away by the commit
    assert [s.key for s in store.snapshots()] == ["ns/2/L1", "ns/4/L2", "ns/5/ctr"]
    assert [s.key for s in store.children("ns/2/L1")] == ["ns/4/L2"]


def test_ids_are_never_reused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    a = store.create("a", "", Kind.ACTIVE)
    store.remove("a")
    b = store.create("a", "", Kind.ACTIVE)
    assert a.id != b.id
    assert _store(tmp_path).create("c", "", Kind.VIEW).id not in {a.id, b.id}


def test_view(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _layers(store)
    view = store.create("v", "ns/4/L2", Kind.VIEW)
    assert view.kind is Kind.VIEW
    with pytest.raises(SnapshotPrecondition):
        store.commit("cv", "v")  # only an active snapshot commits
    with pytest.raises(SnapshotInvalid):
        store.create("on-view", "v", Kind.ACTIVE)  # a parent must be committed


@pytest.mark.parametrize(
    ("action", "error"),
    [
        (lambda s: s.create("ns/2/L1", "", Kind.ACTIVE), SnapshotExists),
        (lambda s: s.create("x", "missing", Kind.ACTIVE), SnapshotNotFound),
        (lambda s: s.create("x", "ns/5/ctr", Kind.ACTIVE), SnapshotInvalid),
        (lambda s: s.create("", "", Kind.ACTIVE), SnapshotInvalid),
        (lambda s: s.create("x", "", Kind.COMMITTED), SnapshotInvalid),
        (lambda s: s.commit("ns/4/L2", "ns/5/ctr"), SnapshotExists),
        (lambda s: s.commit("new", "missing"), SnapshotNotFound),
        (lambda s: s.commit("new", "ns/2/L1"), SnapshotPrecondition),
        (lambda s: s.commit("", "ns/5/ctr"), SnapshotInvalid),
        (lambda s: s.remove("ns/2/L1"), SnapshotPrecondition),  # has a child
        (lambda s: s.remove("missing"), SnapshotNotFound),
        (lambda s: s.get("missing"), SnapshotNotFound),
        (lambda s: s.update("missing", {}, []), SnapshotNotFound),
        (lambda s: s.update("ns/2/L1", {}, ["parent"]), SnapshotInvalid),
        (lambda s: s.update("ns/2/L1", {}, ["labels."]), SnapshotInvalid),
        (lambda s: s.add_committed("ns/4/L2", ""), SnapshotExists),
        (lambda s: s.add_committed("r", "ns/5/ctr"), SnapshotInvalid),
    ],
)
def test_errors_leave_the_store_unchanged(
    tmp_path: Path, action: Callable[[MetadataStore], object], error: type[Exception]
) -> None:
    store = _store(tmp_path)
    _layers(store)
    store.create("ns/5/ctr", "ns/4/L2", Kind.ACTIVE)
    before = store.snapshots()
    on_disk = (tmp_path / METADATA_FILE).read_bytes()
    with pytest.raises(error):
        action(store)
    assert store.snapshots() == before
    assert (tmp_path / METADATA_FILE).read_bytes() == on_disk
    assert issubclass(error, ImagefsError)


def test_not_found_is_the_one_error_tree(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        _store(tmp_path).get("nope")


def test_remove_children_first(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _layers(store)
    assert store.remove("ns/4/L2").key == "ns/4/L2"
    assert store.remove("ns/2/L1").id == "1"
    assert store.snapshots() == []


def test_update_field_masks(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.create("a", "", Kind.ACTIVE, {"keep": "1", "drop": "2", "change": "3"})
    s = store.update(
        "a", {"change": "30", "new": "4", "ignored": "5"}, ["labels.change", "labels.new"]
    )
    assert dict(s.labels) == {"keep": "1", "drop": "2", "change": "30", "new": "4"}
    s = store.update("a", {}, ["labels.drop"])  # absent from the request: removed
    assert dict(s.labels) == {"keep": "1", "change": "30", "new": "4"}
    s = store.update("a", {"only": "x"}, ["labels"])
    assert dict(s.labels) == {"only": "x"}
    s = store.update("a", {"all": "y"}, [])  # no mask: replace the labels
    assert dict(s.labels) == {"all": "y"}
    assert s.updated_ns > s.created_ns
    assert s.kind is Kind.ACTIVE and s.parent == ""


def test_persistence_round_trip(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _layers(store)
    store.create("ns/5/ctr", "ns/4/L2", Kind.ACTIVE, {"k": "v"})
    store.create("ns/6/view", "ns/2/L1", Kind.VIEW)
    store.update("ns/2/L1", {"gc": "x"}, ["labels.gc"])
    reopened = MetadataStore(tmp_path)
    assert reopened.snapshots() == store.snapshots()
    assert reopened.create("next", "", Kind.ACTIVE).id == "5"  # next_id persisted too
    doc = json.loads((tmp_path / METADATA_FILE).read_text())
    assert doc["version"] == 1
    assert doc["snapshots"]["ns/5/ctr"]["kind"] == "active"
    assert not [p for p in tmp_path.iterdir() if p.name != METADATA_FILE]  # no temp files left


def test_empty_root_and_missing_file(tmp_path: Path) -> None:
    root = tmp_path / "not-yet"
    assert MetadataStore(root).snapshots() == []
    assert not root.exists()  # nothing written until something changes


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        '{"version": 1}',
        '{"version": 1, "next_id": 2, "snapshots": {"a": {"id": 1, "kind": "weird"}}}',
        '{"version": 1, "next_id": 2, "snapshots": {"a": {"id": 1, "kind": "active", '
        '"created_ns": 1, "updated_ns": 1, "labels": {"a": 1}}}}',
        "[]",
    ],
)
def test_corrupt_metadata_is_a_clear_error(tmp_path: Path, content: str) -> None:
    (tmp_path / METADATA_FILE).write_text(content)
    with pytest.raises(StoreError, match="corrupt"):
        MetadataStore(tmp_path)


def test_unknown_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / METADATA_FILE).write_text('{"version": 2, "next_id": 1, "snapshots": {}}')
    with pytest.raises(StoreError, match="unknown metadata version 2"):
        MetadataStore(tmp_path)


def test_failed_write_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    store.create("a", "", Kind.ACTIVE)

    def no_space(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("fuse_mount.snapshotter.state.os.replace", no_space)
    with pytest.raises(StoreError, match="No space left"):
        store.create("b", "", Kind.ACTIVE)
    assert [s.key for s in store.snapshots()] == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == [METADATA_FILE]  # the temp file is gone
    monkeypatch.undo()
    assert [s.key for s in MetadataStore(tmp_path).snapshots()] == ["a"]


def test_add_committed_for_remote_layers(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _layers(store)
    snap = store.add_committed("sha256:c3", "ns/4/L2", {"containerd.io/snapshot.ref": "sha256:c3"})
    assert snap.kind is Kind.COMMITTED and snap.parent == "ns/4/L2"
    assert MetadataStore(tmp_path).get("sha256:c3") == snap
