"""Snapshot and compare unpacked file trees; produce the reference tree with ``umoci raw unpack``.

umoci 0.4.7 behaviour the comparisons rely on (checked with the sample images):

* Directory mtimes: umoci restores a directory's mtime after adding, replacing or whiting
  out entries below it, even when the layer has no entry for the directory itself, so a
  directory keeps the mtime of the last tar entry that named it. Directories umoci has to
  create for a missing parent get the unpack time, and the rootfs itself ends up with the
  unpack time or 0; the rootfs is therefore left out of snapshots. Ignore ``"dir_mtime"``
  only for images whose layers omit parent directories.
* Symlink mtimes are applied (lutimes) like those of other entries.
* xattrs of the user., trusted., security. and system. (ACL) namespaces are applied
  byte-exact, except that umoci drops exactly ``security.selinux`` and
  ``trusted.overlay.opaque`` with a "forbidden xattr" warning, and Go's tar reader drops
  xattrs whose value is empty.
* tar+zstd layers are rejected ("blob is not correct mediatype"): see
  :func:`umoci_raw_unpack`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from tests.support.oci import MEDIA_TYPE_LAYER_ZSTD, read_layers, recompress_layout

Kind = Literal["reg", "dir", "symlink", "chr", "blk", "fifo", "sock"]

#: Fields :func:`diff_snapshots` can ignore, plus ``dir_mtime`` (mtime of directories only),
#: ``symlink_mtime`` and ``xattr:<name>`` (one attribute).
FIELDS = (
    "kind",
    "mode",
    "uid",
    "gid",
    "mtime",
    "size",
    "sha256",
    "link_target",
    "xattrs",
    "rdev",
    "nlink",
)
DIR_MTIME_UNSTABLE = frozenset({"dir_mtime"})


@dataclass(frozen=True)
class EntryMeta:
    """Metadata of one path, comparable across filesystems (no inode numbers, no atime).

    ``mode`` is ``st_mode & 0o7777``; ``size``, ``sha256`` and ``nlink`` are set for regular
    files only (0 / "" / 0 otherwise); ``rdev`` only for devices; ``link_target`` only for
    symlinks. ``xattrs`` holds every attribute listed without following symlinks."""

    kind: Kind
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int = 0
    sha256: str = ""
    link_target: str = ""
    xattrs: Mapping[str, bytes] = field(default_factory=dict, hash=False)
    rdev: tuple[int, int] | None = None
    nlink: int = 0


def _kind(st_mode: int) -> Kind:
    if stat.S_ISREG(st_mode):
        return "reg"
    if stat.S_ISDIR(st_mode):
        return "dir"
    if stat.S_ISLNK(st_mode):
        return "symlink"
    if stat.S_ISCHR(st_mode):
        return "chr"
    if stat.S_ISBLK(st_mode):
        return "blk"
    if stat.S_ISFIFO(st_mode):
        return "fifo"
    if stat.S_ISSOCK(st_mode):
        return "sock"
    raise ValueError(f"unknown file type in mode {st_mode:o}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_xattrs(path: Path) -> dict[str, bytes]:
    """All xattrs of *path* (not following symlinks); {} where the filesystem has none."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    out: dict[str, bytes] = {}
    for name in sorted(names):
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
    return out


def entry_meta(path: Path) -> EntryMeta:
    """Describe one path without following it if it is a symlink."""
    st = os.lstat(path)
    kind = _kind(st.st_mode)
    meta = EntryMeta(
        kind=kind,
        mode=st.st_mode & 0o7777,
        uid=st.st_uid,
        gid=st.st_gid,
        mtime=int(st.st_mtime),
        xattrs=read_xattrs(path),
    )
    if kind == "reg":
        return replace(meta, size=st.st_size, sha256=file_sha256(path), nlink=st.st_nlink)
    if kind == "symlink":
        return replace(meta, link_target=os.readlink(path))
    if kind in ("chr", "blk"):
        return replace(meta, rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)))
    return meta


def _walk(root: Path) -> list[tuple[str, Path]]:
    """(relative posix path, absolute path) of everything below *root*, sorted, no following."""
    out: list[tuple[str, Path]] = []
    stack: list[tuple[str, Path]] = [("", root)]
    while stack:
        rel, directory = stack.pop()
        with os.scandir(directory) as it:
            for item in it:
                child_rel = f"{rel}/{item.name}" if rel else item.name
                child = Path(item.path)
                out.append((child_rel, child))
                if item.is_dir(follow_symlinks=False):
                    stack.append((child_rel, child))
    out.sort(key=lambda pair: pair[0].encode("utf-8", "surrogateescape"))
    return out


def snapshot_tree(root: Path, *, include_root: bool = False) -> dict[str, EntryMeta]:
    """Map every path below *root* (relative, posix, no ``./``) to its :class:`EntryMeta`.

    The root itself is left out by default: its metadata comes from whoever created the
    directory (umoci: the unpack time and the rootfs' creation mode), not from the image.
    With ``include_root=True`` it is included under the key ``"."``."""
    snap = {rel: entry_meta(path) for rel, path in _walk(root)}
    if include_root:
        snap["."] = entry_meta(root)
    return snap


def hardlink_groups(root: Path) -> set[frozenset[str]]:
    """Sets of relative paths of regular files sharing one inode (only where nlink > 1)."""
    by_inode: dict[tuple[int, int], set[str]] = {}
    for rel, path in _walk(root):
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            by_inode.setdefault((st.st_dev, st.st_ino), set()).add(rel)
    return {frozenset(paths) for paths in by_inode.values()}


def _fmt(name: str, value: object) -> str:
    if name == "mode" and isinstance(value, int):
        return f"0o{value:o}"
    if name == "sha256" and isinstance(value, str):
        return value[:16]
    return repr(value)


def _diff_xattrs(
    path: str,
    ma: EntryMeta,
    mb: EntryMeta,
    ignored: Collection[str],
    labels: tuple[str, str],
) -> list[str]:
    out = []
    for name in sorted((ma.xattrs.keys() | mb.xattrs.keys()) - set(ignored)):
        va, vb = ma.xattrs.get(name), mb.xattrs.get(name)
        if va != vb:
            sa = "absent" if va is None else repr(va)
            sb = "absent" if vb is None else repr(vb)
            out.append(f"{path}: xattr {name} {labels[0]}={sa} {labels[1]}={sb}")
    return out


def diff_snapshots(
    a: Mapping[str, EntryMeta],
    b: Mapping[str, EntryMeta],
    *,
    ignore: Collection[str] = frozenset(),
    labels: tuple[str, str] = ("a", "b"),
) -> list[str]:
    """Human-readable differences between two snapshots, empty when they are equal.

    *ignore* names :data:`FIELDS` to skip, and also accepts ``dir_mtime`` (mtime of
    directories), ``symlink_mtime`` and ``xattr:<name>`` (one attribute, e.g.
    ``xattr:security.selinux``)."""
    unknown = {
        token
        for token in ignore
        if token not in FIELDS
        and token not in ("dir_mtime", "symlink_mtime")
        and not token.startswith("xattr:")
    }
    if unknown:
        raise ValueError(f"unknown ignore tokens: {sorted(unknown)}")
    ignored_xattrs = {t.removeprefix("xattr:") for t in ignore if t.startswith("xattr:")}
    la, lb = labels
    out: list[str] = []
    for path in sorted(a.keys() | b.keys()):
        if path not in b:
            out.append(f"only in {la}: {path} ({a[path].kind})")
            continue
        if path not in a:
            out.append(f"only in {lb}: {path} ({b[path].kind})")
            continue
        ma, mb = a[path], b[path]
        if ma.kind != mb.kind:
            out.append(f"{path}: kind {la}={ma.kind} {lb}={mb.kind}")
            continue
        for name in FIELDS:
            if name in ignore:
                continue
            if name == "mtime" and (
                (ma.kind == "dir" and "dir_mtime" in ignore)
                or (ma.kind == "symlink" and "symlink_mtime" in ignore)
            ):
                continue
            if name == "xattrs":
                out.extend(_diff_xattrs(path, ma, mb, ignored_xattrs, labels))
                continue
            va: object = getattr(ma, name)
            vb: object = getattr(mb, name)
            if va != vb:
                out.append(f"{path}: {name} {la}={_fmt(name, va)} {lb}={_fmt(name, vb)}")
    return out


def diff_hardlink_groups(
    a: set[frozenset[str]], b: set[frozenset[str]], *, labels: tuple[str, str] = ("a", "b")
) -> list[str]:
    """Human-readable differences between two :func:`hardlink_groups` results."""
    la, lb = labels
    out = [f"hard-link group only in {la}: {sorted(g)}" for g in a - b]
    out += [f"hard-link group only in {lb}: {sorted(g)}" for g in b - a]
    return sorted(out)


def compare_trees(
    expected: Path,
    actual: Path,
    *,
    ignore: Collection[str] = frozenset(),
    labels: tuple[str, str] = ("expected", "actual"),
) -> list[str]:
    """Snapshot and hard-link differences between two trees (empty when they match)."""
    out = diff_snapshots(
        snapshot_tree(expected), snapshot_tree(actual), ignore=ignore, labels=labels
    )
    return out + diff_hardlink_groups(
        hardlink_groups(expected), hardlink_groups(actual), labels=labels
    )


class UmociError(RuntimeError):
    """``umoci raw unpack`` failed; the message carries its stderr."""


def _has_zstd_layers(layout: Path, tag: str) -> bool:
    try:
        layers = read_layers(layout, tag)
    except (KeyError, OSError, ValueError):
        return False  # let umoci report what is wrong with the layout
    return any(layer.media_type == MEDIA_TYPE_LAYER_ZSTD for layer in layers)


def umoci_raw_unpack(layout: Path, tag: str, dest: Path, *, transcode_zstd: bool = True) -> Path:
    """Unpack image *tag* of OCI layout *layout* into *dest* (the rootfs itself) and return it.

    Runs ``umoci raw unpack --image <layout>:<tag> <dest>``, which needs root for devices,
    ownership and trusted./security. xattrs. *dest* may be absent or an empty directory.
    umoci 0.4.7 rejects ``tar+zstd`` layers ("blob is not correct mediatype"), so with
    *transcode_zstd* an image that has any is first copied to a gzip layout in a temporary
    directory (same diff_ids, same tree)."""
    if shutil.which("umoci") is None:
        raise UmociError("umoci is not installed")
    with tempfile.TemporaryDirectory(prefix="umoci-src-") as tmp:
        source = layout
        if transcode_zstd and _has_zstd_layers(layout, tag):
            source = Path(tmp) / "layout"
            recompress_layout(layout, tag, source, "gzip")
        result = subprocess.run(
            ["umoci", "raw", "unpack", "--image", f"{source}:{tag}", str(dest)],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        raise UmociError(
            f"umoci raw unpack of {layout}:{tag} failed ({result.returncode}):\n{result.stderr}"
        )
    return dest
