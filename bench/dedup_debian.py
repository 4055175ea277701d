"""Debian image versions for bench/dedup.py, built with debootstrap + umoci.

All cached under bench/out/dedup/debian/:

    <name>/rootfs      a debootstrapped tree (bookworm minbase + the included packages)
    <name>/debootstrap.log
    layouts/<name>     a gzip OCI image layout, tag <name>

The versions:

    v1          the existing bench image (bench/debian_image.py): minbase + python3
    v2          v1 plus a second layer (/opt/app: a few MB of deterministic files)
    rebuild     minbase + python3 bootstrapped again (new mtimes, new layer digests)
    rebuild-less  minbase + python3,less (a slightly changed package set)

    .venv/bin/python bench/dedup_debian.py rootfs NAME INCLUDE   # debootstrap only
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import debian_image as deb

DEDUP_OUT = deb.OUT / "dedup"
DEBIAN = DEDUP_OUT / "debian"
LAYOUTS = DEBIAN / "layouts"
APP_BYTES = 4 << 20


def ensure_rootfs(name: str, include: str, mirror: str | None = None) -> Path:
    """A debootstrapped tree for `name`, built once (about 3 minutes)."""
    work = DEBIAN / name
    rootfs = work / "rootfs"
    if rootfs.is_dir():
        return rootfs
    deb.require_tools(["debootstrap"])
    if os.geteuid() != 0:
        raise deb.BuildError("debootstrap needs root")
    mirror = mirror or deb.apt_mirror()
    work.mkdir(parents=True, exist_ok=True)
    partial = work / "rootfs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    started = time.monotonic()
    deb._run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={include}",
            deb.SUITE,
            str(partial),
            mirror,
        ],
        timeout_s=deb.DEBOOTSTRAP_TIMEOUT_S,
        log=work / "debootstrap.log",
    )
    deb._clean_rootfs(partial)
    partial.rename(rootfs)
    print(f"debootstrap {name} done in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return rootfs


def write_app_files(dest: Path, total: int = APP_BYTES) -> None:
    """Deterministic /opt/app content: some text-like files and some random-like ones."""
    dest.mkdir(parents=True, exist_ok=True)
    i = 0
    written = 0
    while written < total:
        size = 64 * 1024 + (i * 37_813) % (256 * 1024)
        block = hashlib.sha256(f"app-{i}".encode()).digest()
        if i % 2:
            data = (block * (size // len(block) + 1))[:size]  # compressible
        else:
            out = bytearray()
            h = block
            while len(out) < size:
                h = hashlib.sha256(h).digest()
                out += h
            data = bytes(out[:size])
        path = dest / f"mod{i:03d}.bin"
        path.write_bytes(data)
        os.utime(path, (1_700_000_000, 1_700_000_000))
        written += size
        i += 1


def _layout_from_rootfs(name: str, rootfs: Path) -> Path:
    layout = LAYOUTS / name
    if deb.layout_has_tag(layout, name):
        return layout
    deb.require_tools(["umoci"])
    tmp = LAYOUTS / f"{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lay, bundle = tmp / "layout", tmp / "bundle"
    try:
        deb._run(["umoci", "init", "--layout", str(lay)])
        deb._run(["umoci", "new", "--image", f"{lay}:base"])
        deb._run(["umoci", "unpack", "--image", f"{lay}:base", str(bundle)])
        deb._run(["cp", "-a", "--", f"{rootfs}/.", str(bundle / "rootfs")])
        deb._run(["umoci", "repack", "--image", f"{lay}:{name}", str(bundle)])
        deb._run(["umoci", "rm", "--image", f"{lay}:base"])
        deb._run(["umoci", "gc", "--layout", str(lay)])
        shutil.rmtree(layout, ignore_errors=True)
        lay.rename(layout)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return layout


def ensure_v1() -> tuple[Path, str]:
    image = deb.ensure_image()
    return image.layout, image.tag


def ensure_v2(v1_layout: Path, v1_tag: str, v1_tree: Path) -> tuple[Path, str, Path]:
    """v1 plus a layer with /opt/app. Returns (layout, tag, tree). The tree is `cp -a` of
    v1's tree plus /opt/app, as a build on top of v1 leaves it (an unpacked tar would have
    whole-second mtimes everywhere, unlike v1's tree, which casync would count as changes)."""
    name = "v2"
    layout = LAYOUTS / name
    tree = DEBIAN / name / "tree"
    done = DEBIAN / name / "tree.done"
    if deb.layout_has_tag(layout, name) and done.is_file():
        return layout, name, tree
    deb.require_tools(["umoci"])
    tmp = LAYOUTS / f"{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lay, bundle = tmp / "layout", tmp / "bundle"
    try:
        shutil.copytree(v1_layout, lay)
        deb._run(["umoci", "unpack", "--image", f"{lay}:{v1_tag}", str(bundle)])
        write_app_files(bundle / "rootfs" / "opt" / "app")
        deb._run(["umoci", "repack", "--image", f"{lay}:{name}", str(bundle)])
        deb._run(["umoci", "rm", "--image", f"{lay}:{v1_tag}"])
        deb._run(["umoci", "gc", "--layout", str(lay)])
        shutil.rmtree(tree.parent, ignore_errors=True)
        tree.parent.mkdir(parents=True)
        deb._run(["cp", "-a", "--", str(v1_tree), str(tree)])
        write_app_files(tree / "opt" / "app")
        shutil.rmtree(layout, ignore_errors=True)
        lay.rename(layout)
        done.touch()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return layout, name, tree


def ensure_rebuilt(name: str, include: str) -> tuple[Path, str, Path]:
    rootfs = ensure_rootfs(name, include)
    return _layout_from_rootfs(name, rootfs), name, rootfs


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "rootfs":
        try:
            ensure_rootfs(argv[1], argv[2])
        except deb.BuildError as err:
            print(f"dedup_debian: {err}", file=sys.stderr)
            return 1
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
