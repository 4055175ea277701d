"""Prefetch lists end to end: `convert --prefetch-list` stores them, a mount fetches the
listed files in the background (and only those), and `mount --record-access` writes a list
that a second conversion takes back."""

from __future__ import annotations

import os
import time
from pathlib import Path

from imagefs.config import Config
from imagefs.image import open_image, open_store
from tests.conftest import Env, Mounter
from tests.support.layers import LayerBuilder
from tests.support.oci import write_oci_layout

MIB = 1 << 20


def _image(tmp_path: Path) -> tuple[str, dict[str, bytes]]:
    files = {
        "data/a.bin": os.urandom(3 * MIB),
        "data/middle.bin": os.urandom(2 * MIB),
        "data/z.bin": os.urandom(1 * MIB + 12345),
        "data/small.txt": b"hello\n",
    }
    layer = LayerBuilder().dir("data")
    for name, data in files.items():
        layer.file(name, data)
    write_oci_layout(tmp_path / "src", [layer.blob()], tag="t")
    return f"oci:{tmp_path / 'src'}:t", files


def _prefetch_of(target: str) -> list[bytes]:
    opened = open_image(open_store(target), Config())
    names = {ino - 1: path for path, ino in opened.view.walk()}
    return [names[i] for i in opened.bootstrap.prefetch]


def test_mount_prefetches_listed_files_only(
    imagefs_env: Env, mount_image: Mounter, tmp_path: Path
) -> None:
    source, files = _image(tmp_path)
    listing = tmp_path / "prefetch.txt"
    listing.write_text("# hot files first\n/data/z.bin\n\n/data/a.bin\n")
    target = f"oci:{tmp_path / 'out'}"
    imagefs_env.run("convert", source, target, "--prefetch-list", str(listing))
    assert _prefetch_of(target) == [b"data/z.bin", b"data/a.bin"]

    m = mount_image(target)
    want = len(files["data/a.bin"]) + len(files["data/z.bin"])
    deadline = time.monotonic() + 10
    stats = m.stats()
    while stats["prefetch_bytes"] < want and time.monotonic() < deadline:
        time.sleep(0.05)
        stats = m.stats()
    assert stats["prefetch_bytes"] == want, stats
    assert stats["prefetch_chunks"] > 0
    fetched = stats["bytes_fetched"]
    assert fetched < want + len(files["data/middle.bin"]), "the unlisted file was prefetched"

    for name in ("data/a.bin", "data/z.bin"):
        assert (m.path / name).read_bytes() == files[name]
    after = m.stats()
    assert after["bytes_fetched"] == fetched, "listed files must be served from the cache"
    assert after["bytes_read"] >= want

    assert (m.path / "data/middle.bin").read_bytes() == files["data/middle.bin"]
    assert m.stats()["bytes_fetched"] >= fetched + len(files["data/middle.bin"])


def test_record_access_then_convert_with_it(
    imagefs_env: Env, mount_image: Mounter, tmp_path: Path
) -> None:
    source, files = _image(tmp_path)
    target = f"oci:{tmp_path / 'out'}"
    imagefs_env.run("convert", source, target)
    record = tmp_path / "record.txt"
    m = mount_image(target, "mnt", "--record-access", str(record))
    os.stat(m.path / "data/a.bin")  # a stat is not an access
    assert (m.path / "data/small.txt").read_bytes() == b"hello\n"
    assert (m.path / "data/z.bin").read_bytes() == files["data/z.bin"]
    assert (m.path / "data/small.txt").read_bytes() == b"hello\n"  # first access wins
    imagefs_env.run("umount", str(m.path))
    assert record.read_text() == "/data/small.txt\n/data/z.bin\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".record")] == []

    again = f"oci:{tmp_path / 'again'}"
    imagefs_env.run("convert", source, again, "--prefetch-list", str(record))
    assert _prefetch_of(again) == [b"data/small.txt", b"data/z.bin"]


def test_bad_prefetch_path_exits_2(imagefs_env: Env, tmp_path: Path) -> None:
    source, _ = _image(tmp_path)
    listing = tmp_path / "prefetch.txt"
    listing.write_text("/data/a.bin\n/data/missing.bin\n")
    res = imagefs_env.run(
        "convert", source, f"oci:{tmp_path / 'out'}", "--prefetch-list", str(listing), check=False
    )
    assert res.returncode == 2, res.stderr
    assert "/data/missing.bin" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()

    res = imagefs_env.run(
        "convert",
        source,
        f"oci:{tmp_path / 'out'}",
        "--prefetch-list",
        str(tmp_path / "no"),
        check=False,
    )
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr


# the host's ls and what it loads (Debian 12 x86-64), copied into an image
ENTRYPOINT_FILES = {
    "usr/bin/ls": "/usr/bin/ls",
    "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    "lib/x86_64-linux-gnu/libc.so.6": "/lib/x86_64-linux-gnu/libc.so.6",
    "lib/x86_64-linux-gnu/libselinux.so.1": "/lib/x86_64-linux-gnu/libselinux.so.1",
    "lib/x86_64-linux-gnu/libpcre2-8.so.0": "/lib/x86_64-linux-gnu/libpcre2-8.so.0",
}


def test_without_a_list_the_entrypoint_and_its_libraries_are_prefetched(
    imagefs_env: Env, mount_image: Mounter, tmp_path: Path
) -> None:
    layer = LayerBuilder().dirs("usr/bin", "lib/x86_64-linux-gnu", "lib64", "data")
    for path, host in ENTRYPOINT_FILES.items():
        layer.file(path, Path(host).read_bytes(), mode=0o755)
    # /lib64/ld-linux-x86-64.so.2 (the PT_INTERP path) is an absolute symlink, as on Debian
    layer.symlink("lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    unrelated = os.urandom(3 * MIB)
    layer.file("data/unrelated.bin", unrelated)
    write_oci_layout(
        tmp_path / "src",
        [layer.blob()],
        tag="ls",
        config_extra={"config": {"Cmd": ["ls", "/"], "Env": ["PATH=/usr/bin:/bin"]}},
    )
    target = f"oci:{tmp_path / 'out'}:ls"
    imagefs_env.run("convert", f"oci:{tmp_path / 'src'}:ls", target)

    m = mount_image(target)
    wanted = sum(Path(h).stat().st_size for h in ENTRYPOINT_FILES.values())
    deadline = time.monotonic() + 30
    stats = m.stats()
    while stats["prefetch_bytes"] < wanted and time.monotonic() < deadline:
        time.sleep(0.05)
        stats = m.stats()
    assert stats["prefetch_bytes"] == wanted  # exactly the program and what it loads
    assert stats["bytes_fetched"] < wanted  # (compressed) and nothing of unrelated.bin
    before = stats["requests"]
    import subprocess

    out = subprocess.run(
        ["chroot", str(m.path), "/usr/bin/ls", "/"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert {"usr", "lib", "lib64", "data"} <= set(out)
    assert m.stats()["requests"] == before  # ls started from the cache alone
