"""Build a realistic OCI image for the benchmarks: Debian bookworm (minbase) plus python3.

The root filesystem comes from `debootstrap`, using the Debian mirror this machine's apt is
configured with (read from /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list), so it
needs no other network access. umoci then packs it as a one-layer gzip OCI image layout:

    bench/out/debian-work/rootfs            the debootstrapped tree (kept, reused on rebuild)
    bench/out/debian-bookworm-python/       the OCI image layout, tag `bookworm-python`

Both are cached: an existing layout with the tag is reused as is, an existing rootfs is
repacked without running debootstrap again. Must run as root (debootstrap, chroot, owners).

    .venv/bin/python bench/debian_image.py [--rebuild] [--mirror URL]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
WORK = OUT / "debian-work"
ROOTFS = WORK / "rootfs"
LAYOUT = OUT / "debian-bookworm-python"
TAG = "bookworm-python"
SUITE = "bookworm"
INCLUDE = "python3"
DEBOOTSTRAP_TIMEOUT_S = 3600
STEP_TIMEOUT_S = 1800
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SOURCES_DIR = Path("/etc/apt/sources.list.d")
SOURCES_LIST = Path("/etc/apt/sources.list")

# What apt leaves behind that a real image build would clean (as the official images do).
CLEAN_GLOBS = (
    "var/cache/apt/archives/*.deb",
    "var/cache/apt/archives/partial/*",
    "var/cache/apt/*.bin",
    "var/lib/apt/lists/*_Packages",
    "var/lib/apt/lists/*_Release",
    "var/lib/apt/lists/*_InRelease",
    "var/lib/apt/lists/*_Release.gpg",
    "var/log/apt/*",
    "var/log/dpkg.log",
    "var/log/bootstrap.log",
    "var/log/alternatives.log",
    "tmp/*",
)


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class DebianImage:
    layout: Path
    tag: str

    @property
    def oci_ref(self) -> str:
        return f"oci:{self.layout}:{self.tag}"


def require_tools(tools: Sequence[str]) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise BuildError(
            f"missing tools: {', '.join(missing)} (run scripts/bootstrap, or "
            "apt-get install debootstrap umoci skopeo docker-registry iproute2)"
        )


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, ""
            continue
        if line[0] in " \t" and key:
            current[key] += " " + line.strip()
            continue
        key, _, value = line.partition(":")
        key = key.strip().lower()
        current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def apt_mirror(suite: str = SUITE) -> str:
    """The first `deb` URI apt uses for `suite` (deb822 .sources files first, then the
    one-line sources.list format)."""
    sources = sorted(SOURCES_DIR.glob("*.sources")) if SOURCES_DIR.is_dir() else []
    for path in sources:
        for stanza in _deb822_stanzas(path.read_text(errors="replace")):
            if stanza.get("enabled", "yes").lower() == "no":
                continue
            if "deb" not in stanza.get("types", "").split():
                continue
            if suite in stanza.get("suites", "").split() and stanza.get("uris"):
                return stanza["uris"].split()[0]
    lists = [SOURCES_LIST] if SOURCES_LIST.is_file() else []
    lists += sorted(SOURCES_DIR.glob("*.list")) if SOURCES_DIR.is_dir() else []
    for path in lists:
        for line in path.read_text(errors="replace").splitlines():
            words = line.split("#", 1)[0].split()
            if words[:1] != ["deb"]:
                continue
            words = [w for w in words[1:] if not w.startswith("[")]  # drop [options]
            if len(words) >= 2 and words[1] == suite:
                return words[0]
    raise BuildError(f"no apt source for suite {suite!r} in {SOURCES_DIR} or {SOURCES_LIST}")


def _run(cmd: Sequence[str], *, timeout_s: float = STEP_TIMEOUT_S, log: Path | None = None) -> None:
    print("+ " + " ".join(cmd), file=sys.stderr)
    try:
        if log is None:
            res = subprocess.run(
                list(cmd), capture_output=True, text=True, timeout=timeout_s, check=False
            )
            detail = (res.stderr or res.stdout).strip()[-2000:]
        else:
            with log.open("w") as out:
                res = subprocess.run(
                    list(cmd), stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s, check=False
                )
            detail = log.read_text(errors="replace").strip()[-2000:] + f"\n(full log: {log})"
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"{cmd[0]} timed out after {timeout_s:.0f}s") from exc
    if res.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} exited {res.returncode}:\n{detail}")


def _clean_rootfs(rootfs: Path) -> None:
    for pattern in CLEAN_GLOBS:
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def ensure_rootfs(mirror: str | None = None, *, rebuild: bool = False) -> Path:
    if rebuild:
        shutil.rmtree(ROOTFS, ignore_errors=True)
    if ROOTFS.is_dir():
        return ROOTFS
    require_tools(["debootstrap"])
    if os.geteuid() != 0:
        raise BuildError("debootstrap needs root")
    mirror = mirror or apt_mirror()
    WORK.mkdir(parents=True, exist_ok=True)
    partial = WORK / "rootfs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    started = time.monotonic()
    print(f"debootstrap {SUITE} (+{INCLUDE}) from {mirror}; takes a few minutes", file=sys.stderr)
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={INCLUDE}",
            SUITE,
            str(partial),
            mirror,
        ],
        timeout_s=DEBOOTSTRAP_TIMEOUT_S,
        log=WORK / "debootstrap.log",
    )
    _clean_rootfs(partial)
    partial.rename(ROOTFS)
    print(f"debootstrap done in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return ROOTFS


def layout_has_tag(layout: Path, tag: str) -> bool:
    try:
        index = json.loads((layout / "index.json").read_text())
    except (OSError, ValueError):
        return False
    return any(
        m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
        for m in index.get("manifests", [])
    )


def ensure_image(mirror: str | None = None, *, rebuild: bool = False) -> DebianImage:
    """The cached image layout, built (debootstrap + umoci) when missing."""
    if not rebuild and layout_has_tag(LAYOUT, TAG):
        return DebianImage(LAYOUT, TAG)
    require_tools(["umoci"])
    rootfs = ensure_rootfs(mirror, rebuild=rebuild)
    _clean_rootfs(rootfs)
    tmp = OUT / "debian-bookworm-python.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    layout, bundle = tmp / "layout", tmp / "bundle"
    try:
        _run(["umoci", "init", "--layout", str(layout)])
        _run(["umoci", "new", "--image", f"{layout}:base"])
        _run(["umoci", "unpack", "--image", f"{layout}:base", str(bundle)])
        # cp -a keeps owners, modes, hard links, xattrs, device nodes and times.
        _run(["cp", "-a", "--", f"{rootfs}/.", str(bundle / "rootfs")])
        _run(["umoci", "repack", "--image", f"{layout}:{TAG}", str(bundle)])
        _run(
            [
                *("umoci", "config", "--image", f"{layout}:{TAG}"),
                *("--config.cmd", "/usr/bin/python3"),
                *("--config.env", f"PATH={IMAGE_PATH}"),
            ]
        )
        _run(["umoci", "rm", "--image", f"{layout}:base"])
        _run(["umoci", "gc", "--layout", str(layout)])
        shutil.rmtree(LAYOUT, ignore_errors=True)
        layout.rename(LAYOUT)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not layout_has_tag(LAYOUT, TAG):
        raise BuildError(f"umoci did not leave tag {TAG} in {LAYOUT}")
    return DebianImage(LAYOUT, TAG)


def layer_sizes(layout: Path, tag: str) -> list[int]:
    """Compressed sizes of the image's layers, from its manifest in the layout."""
    index = json.loads((layout / "index.json").read_text())
    for desc in index.get("manifests", []):
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            algo, _, hexdigest = desc["digest"].partition(":")
            manifest = json.loads((layout / "blobs" / algo / hexdigest).read_text())
            return [int(layer["size"]) for layer in manifest["layers"]]
    raise BuildError(f"tag {tag} not in {layout}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="run debootstrap and umoci again")
    parser.add_argument("--mirror", help="Debian mirror URL (default: the one apt uses)")
    args = parser.parse_args(argv)
    try:
        image = ensure_image(args.mirror, rebuild=args.rebuild)
    except BuildError as err:
        print(f"debian_image: {err}", file=sys.stderr)
        return 1
    sizes = layer_sizes(image.layout, image.tag)
    print(f"{image.oci_ref}: {len(sizes)} layer(s), {sum(sizes) / 1e6:.1f} MB compressed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
