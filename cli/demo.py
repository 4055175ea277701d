"""`make demo`: build a small two-layer sample image from files this repository produces,
convert it, mount it lazily, run a command inside it with chroot, show bytes read against
bytes fetched, and unmount. Everything lives under ./demo-out."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from imagefs.oci import MEDIA_TYPE_OCI_MANIFEST, Descriptor, Manifest, OciLayout

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "demo-out"
BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "cat", "ls", "head", "wc", "md5sum", "sha256sum", "echo", "tail")
MTIME = 1_700_000_000


def _layer(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> tuple[bytes, bytes]:
    """(gzip layer, uncompressed tar) from tar entries, deterministic."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), tar_bytes


def _entry(
    name: str,
    data: bytes | None = None,
    *,
    kind: bytes = tarfile.REGTYPE,
    mode: int = 0o644,
    link: str = "",
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = MTIME
    info.linkname = link
    if data is not None:
        info.size = len(data)
    return info, data


def build_sample(layout_dir: Path) -> str:
    """Write the sample OCI image (layer 1: busybox userland; layer 2: an app) and its ref."""
    if not BUSYBOX.is_file():
        raise SystemExit(
            "demo: /bin/busybox is missing (scripts/bootstrap installs busybox-static)"
        )
    base = [
        _entry("bin", kind=tarfile.DIRTYPE, mode=0o755),
        _entry("bin/busybox", BUSYBOX.read_bytes(), mode=0o755),
        *[_entry(f"bin/{a}", kind=tarfile.SYMTYPE, mode=0o777, link="busybox") for a in APPLETS],
        _entry("etc", kind=tarfile.DIRTYPE, mode=0o755),
        _entry("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
        _entry("tmp", kind=tarfile.DIRTYPE, mode=0o1777),
    ]
    rng = random.Random(42)
    data = rng.randbytes(24 << 20)  # 24 MiB that the command below mostly does not read
    sources = sorted(p for p in (REPO / "imagefs").glob("*.py"))
    app = [
        _entry("app", kind=tarfile.DIRTYPE, mode=0o755),
        _entry("app/hello.txt", b"hello from a lazily mounted imagefs image\n"),
        _entry("app/model.bin", data),
        _entry("app/model-copy.bin", data),  # deduplicated: stored once
        _entry("app/src", kind=tarfile.DIRTYPE, mode=0o755),
        *[_entry(f"app/src/{p.name}", p.read_bytes()) for p in sources],
    ]
    layout = OciLayout.create(layout_dir)
    layers, diff_ids = [], []
    for entries in (base, app):
        blob, tar_bytes = _layer(entries)
        layers.append(Descriptor.of("application/vnd.oci.image.layer.v1.tar+gzip", blob))
        diff_ids.append(str(Descriptor.of("x", tar_bytes).digest))
        layout.write_blob(blob)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    cdesc = Descriptor.of("application/vnd.oci.image.config.v1+json", config)
    layout.write_blob(config)
    manifest = Manifest(MEDIA_TYPE_OCI_MANIFEST, cdesc, tuple(layers)).encode()
    mdesc = Descriptor.of(MEDIA_TYPE_OCI_MANIFEST, manifest)
    layout.write_blob(manifest)
    layout.set_tag(mdesc, "latest")
    return f"oci:{layout_dir}:latest"


def _imagefs(*args: str, capture: bool = False) -> str:
    cmd = [sys.executable, "-m", "cli.main", *args]
    print("$ imagefs " + " ".join(args), flush=True)
    res = subprocess.run(cmd, check=False, text=True, stdout=subprocess.PIPE if capture else None)
    if res.returncode != 0:
        raise SystemExit(f"demo: imagefs {args[0]} failed with exit code {res.returncode}")
    return res.stdout or ""


def main() -> None:
    mnt = OUT / "mnt"
    if mnt.is_dir() and os.path.ismount(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
    shutil.rmtree(OUT, ignore_errors=True)
    mnt.mkdir(parents=True)
    os.environ["IMAGEFS_CACHE_DIR"] = str(OUT / "cache")
    os.environ["IMAGEFS_RUN_DIR"] = str(OUT / "run")
    source = build_sample(OUT / "source")
    target = f"oci:{OUT / 'imagefs'}:latest"
    print(f"demo: built the sample image {source}")
    _imagefs("convert", source, target)
    _imagefs("inspect", target)
    _imagefs("mount", target, str(mnt))
    try:
        cmd = [
            "chroot",
            str(mnt),
            "/bin/sh",
            "-c",
            "cat /app/hello.txt; ls /app/src | head -3; head -c 1048576 /app/model.bin | md5sum",
        ]
        print("$ " + " ".join(cmd[:4]) + " '" + cmd[4] + "'", flush=True)
        subprocess.run(cmd, check=True)
        stats = json.loads(_imagefs("stats", str(mnt), "--json", capture=True))
        info = json.loads(_imagefs("inspect", target, "--json", capture=True))
        print(
            f"demo: image holds {info['bytes']:,} bytes in {info['files']} files; "
            f"the command read {stats['bytes_read']:,} bytes and imagefs fetched "
            f"{stats['bytes_fetched']:,} bytes ({stats['chunks_fetched']} chunks, "
            f"{stats['requests']} reads) from blob storage."
        )
    finally:
        _imagefs("umount", str(mnt))
    print("demo: ok")


if __name__ == "__main__":
    main()
