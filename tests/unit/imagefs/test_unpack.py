"""`imagefs.unpack`: the tree comes back with its metadata, and no name, symlink or hard
link in a (crafted) bootstrap makes a write land outside the target directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagefs.chunks import MemoryBlobReader, ReadStats, build_chunk_source
from imagefs.errors import TargetError, UnsafePathError
from imagefs.format import Bootstrap, InodeSpec, Kind, encode_bootstrap
from imagefs.unpack import unpack
from imagefs.view import FileSystemView
from tests.unit.imagefs.trees import TreeBuilder, pack_blobs


def _view(
    tree: TreeBuilder, packed: object, *, patch: dict[bytes, bytes] | None = None
) -> FileSystemView:
    raw = encode_bootstrap(tree.build(), packed.refs, packed.infos)  # type: ignore[attr-defined]
    for old, new in (patch or {}).items():
        # the string heap comes last: patch the name's occurrence there
        assert len(old) == len(new)
        at = raw.rindex(old)
        raw = raw[:at] + new + raw[at + len(old) :]
    boot = Bootstrap.decode(raw)
    stats = ReadStats()
    source = build_chunk_source(MemoryBlobReader(packed.blobs), stats)  # type: ignore[attr-defined]
    return FileSystemView(boot, source, stats)


def _tree(*names: bytes) -> tuple[TreeBuilder, object]:
    packed = pack_blobs([[b"secret\n" * 10, b"more data " * 5000]])
    tree = TreeBuilder()
    tree.dir(b"etc", mode=0o700)
    f = tree.file(b"etc/file", packed.refs, packed.refs)
    tree.link(b"etc/hardlink", f)
    tree.add(b"escape-abs", InodeSpec(Kind.LNK, 0o777, 0, 0, 5, target=b"/"))
    tree.add(b"escape-rel", InodeSpec(Kind.LNK, 0o777, 0, 0, 5, target=b"../../.."))
    for name in names:
        tree.file(name, packed.refs[:1], packed.refs)
    return tree, packed


def test_unpack_restores_the_tree(tmp_path: Path) -> None:
    tree, packed = _tree()
    dest = tmp_path / "dest"
    result = unpack(_view(tree, packed), dest)
    assert result.entries == 5
    data = (dest / "etc/file").read_bytes()
    assert data == b"secret\n" * 10 + b"more data " * 5000
    assert os.stat(dest / "etc").st_mode & 0o7777 == 0o700
    assert os.stat(dest / "etc/file").st_ino == os.stat(dest / "etc/hardlink").st_ino
    assert os.readlink(dest / "escape-abs") == "/"
    assert os.readlink(dest / "escape-rel") == "../../.."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]


@pytest.mark.parametrize(
    ("name", "evil"),
    [(b"zz", b".."), (b"a_b", b"a/b"), (b"z", b"."), (b"nul_", b"nul\0")],
)
def test_hostile_names_are_refused_and_nothing_escapes(
    tmp_path: Path, name: bytes, evil: bytes
) -> None:
    tree, packed = _tree(name)
    (tmp_path / "outside").mkdir()
    dest = tmp_path / "outside" / "dest"
    with pytest.raises(UnsafePathError):
        unpack(_view(tree, packed, patch={name: evil}), dest)
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["dest"]
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "outside" / "zz").exists()
    for path, _dirs, files in os.walk(tmp_path):
        assert "b" not in files, path


def test_unpack_refuses_a_non_empty_target(tmp_path: Path) -> None:
    tree, packed = _tree()
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "keep").write_text("mine")
    with pytest.raises(TargetError):
        unpack(_view(tree, packed), tmp_path / "dest")
    assert (tmp_path / "dest" / "keep").read_text() == "mine"
