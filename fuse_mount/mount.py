"""Mount lifecycle: serve a view through FUSE, run in the background, unmount, and the
per-mount control socket that `imagefs stats` talks to."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mfusepy
import setproctitle

from fuse_mount.fs import ImagefsOperations
from imagefs.config import Config
from imagefs.errors import ImagefsError, MountError, UsageError
from imagefs.image import OpenedImage
from imagefs.pathlist import write_path_list
from imagefs.prefetch import entrypoint_files, prefetch_model_headers, run_prefetch

log = logging.getLogger(__name__)


def _unescape_mountinfo(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mount_entry(mountpoint: Path) -> tuple[str, str] | None:
    """(filesystem type, "major:minor") of the mount exactly at `mountpoint`, or None."""
    target = os.path.realpath(mountpoint)
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) > 4 and _unescape_mountinfo(fields[4]) == target:
                found = (right.split()[0], fields[2])
    return found


def mount_fstype(mountpoint: Path) -> str | None:
    """The filesystem type mounted exactly at `mountpoint`, or None."""
    entry = _mount_entry(mountpoint)
    return entry[0] if entry else None


def _raise_readahead(mountpoint: Path, kib: int, timeout_s: float) -> None:
    """Widen the kernel readahead of our mount's bdi so sequential reads arrive as requests
    of up to `kib` KiB instead of 128 KiB (fewer, larger FUSE requests)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        entry = _mount_entry(mountpoint)
        if entry is not None and entry[0] == "fuse.imagefs":
            try:
                Path(f"/sys/class/bdi/{entry[1]}/read_ahead_kb").write_text(str(kib))
            except OSError as exc:
                log.debug("cannot set readahead for %s: %s", mountpoint, exc)
            return
        time.sleep(0.01)


def is_mounted(mountpoint: Path) -> bool:
    return mount_fstype(mountpoint) is not None


def control_socket(config: Config, mountpoint: Path) -> Path:
    key = hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:24]
    return config.run_dir / "mounts" / f"{key}.sock"


def log_file(config: Config, mountpoint: Path) -> Path:
    return control_socket(config, mountpoint).with_suffix(".log")


class _ControlServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, report: Callable[[], dict[str, Any]]) -> None:
        self.report = report
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        super().__init__(str(path), _ControlHandler)
        os.chmod(path, 0o600)


class _ControlHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline(256).strip()
        server: _ControlServer = self.server  # type: ignore[assignment]
        if line == b"stats":
            self.wfile.write(json.dumps(server.report()).encode() + b"\n")
        else:
            self.wfile.write(b'{"error": "unknown request"}\n')


class AccessRecorder:
    """Remembers the path of every inode opened, in first-access order (first path wins),
    and writes them as a path list: every `interval_s` while mounted and once at the end."""

    def __init__(self, path: Path, interval_s: float = 2.0) -> None:
        self.path = path
        self.interval_s = interval_s
        self._paths: dict[int, str] = {}
        self._lock = threading.Lock()
        self._written = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def on_access(self, ino: int, path: str) -> None:
        if ino not in self._paths:
            with self._lock:
                self._paths.setdefault(ino, path)

    def paths(self) -> list[str]:
        with self._lock:
            return list(self._paths.values())

    def write(self) -> None:
        with self._lock:
            count = len(self._paths)
            paths = list(self._paths.values())
        if count == self._written:
            return
        try:
            write_path_list(self.path, paths)
            self._written = count
        except OSError as exc:
            log.warning("cannot write the access record %s: %s", self.path, exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.write()

    def start(self) -> None:
        self.write()  # an empty record at once: the file exists while mounted
        self._thread = threading.Thread(target=self._loop, name="imagefs-record", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.write()


def serve(
    opened: OpenedImage,
    mountpoint: Path,
    config: Config,
    *,
    allow_other: bool = False,
    describe: str = "",
    record_access: Path | None = None,
    suid: bool = False,
    dev: bool = False,
) -> None:
    """Mount `opened` at `mountpoint` and serve until unmounted (blocks).

    With `record_access`, the paths of opened files are written there (see AccessRecorder).
    When the bootstrap has a prefetch list, a background thread fetches those files' chunks;
    without one (and with `prefetch_entrypoint`), the files the image's entrypoint needs;
    then (with `prefetch_model_headers`) the headers of every safetensors and GGUF file."""
    if not mountpoint.is_dir():
        raise MountError(f"mountpoint {mountpoint} is not a directory")
    if is_mounted(mountpoint):
        raise MountError(f"{mountpoint} is already a mount point")
    started = time.time()
    sock_path = control_socket(config, mountpoint)

    def report() -> dict[str, Any]:
        return {
            "mountpoint": os.path.realpath(mountpoint),
            "image": describe or opened.store.describe(),
            "manifest_digest": str(opened.manifest_descriptor.digest),
            "pid": os.getpid(),
            "uptime_s": round(time.time() - started, 3),
            **opened.stats.snapshot(),
        }

    if len(os.fsencode(sock_path)) >= 108:
        raise MountError(
            f"control socket path {sock_path} is too long for a unix socket; "
            "set a shorter run_dir (IMAGEFS_RUN_DIR)"
        )
    try:
        server = _ControlServer(sock_path, report)
    except OSError as exc:
        raise MountError(f"cannot create the control socket {sock_path}: {exc}") from None
    thread = threading.Thread(target=server.serve_forever, name="imagefs-control", daemon=True)
    thread.start()
    threading.Thread(
        target=_raise_readahead,
        args=(mountpoint, config.max_read_bytes // 1024, config.mount_timeout_s),
        name="imagefs-readahead",
        daemon=True,
    ).start()
    recorder = AccessRecorder(record_access.absolute()) if record_access is not None else None
    ops = ImagefsOperations(
        opened.view,
        entry_timeout_s=config.entry_timeout_s,
        attr_timeout_s=config.attr_timeout_s,
        max_read_bytes=config.max_read_bytes,
        on_access=recorder.on_access if recorder is not None else None,
    )
    stop_prefetch = threading.Event()
    if opened.bootstrap.prefetch or config.prefetch_entrypoint or config.prefetch_model_headers:
        threading.Thread(
            target=_prefetch,
            args=(opened, config, stop_prefetch),
            name="imagefs-prefetch",
            daemon=True,
        ).start()
    if recorder is not None:
        recorder.start()
    options: dict[str, Any] = {
        "foreground": True,
        "ro": True,
        "default_permissions": True,
        "fsname": f"imagefs:{describe or opened.store.describe()}"[:200].replace(",", "_"),
        "subtype": "imagefs",
        "max_read": config.max_read_bytes,
    }
    if allow_other:
        options["allow_other"] = True
    # set-user-ID bits and device files of an image only take effect when asked for (the
    # snapshotter does: containers need them); the kernel default for FUSE is nosuid,nodev
    if suid:
        options["suid"] = True
    if dev:
        options["dev"] = True
    try:
        mfusepy.FUSE(ops, str(mountpoint), **options)
    except RuntimeError as exc:
        raise MountError(f"FUSE mount of {mountpoint} failed (libfuse status {exc})") from None
    finally:
        stop_prefetch.set()
        opened.view.close()
        if recorder is not None:
            recorder.stop()  # before the socket goes: `umount` waits for that
        server.shutdown()
        server.server_close()
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()


def _prefetch(opened: OpenedImage, config: Config, stop: threading.Event) -> None:
    """The background prefetch: the prefetch list, or without one (and with
    `prefetch_entrypoint`) what the entrypoint needs; then (with `prefetch_model_headers`)
    the header regions of every safetensors and GGUF file."""
    if opened.bootstrap.prefetch:
        run_prefetch(opened.view, stop)
    elif config.prefetch_entrypoint:
        _prefetch_entrypoint(opened, stop)
    if config.prefetch_model_headers and not stop.is_set():
        try:
            prefetch_model_headers(opened.view, stop)
        except ImagefsError as exc:  # e.g. a corrupt bootstrap: reads report it
            log.info("model header prefetch skipped: %s", exc)


def _prefetch_entrypoint(opened: OpenedImage, stop: threading.Event) -> None:
    """Without a prefetch list: fetch what the image's entrypoint needs to start."""
    try:
        config = opened.store.read_blob(opened.image.manifest.config.digest)
        indices = entrypoint_files(opened.view, config)
    except ImagefsError as exc:
        log.info("entrypoint prefetch skipped: %s", exc)
        return
    if indices and not stop.is_set():
        run_prefetch(opened.view, stop, indices=indices)


def spawn_background(
    serve_fn: Callable[[], None],
    mountpoint: Path,
    config: Config,
    *,
    title: str = "imagefs mount",
    debug: bool = False,
) -> int:
    """Run `serve_fn` (a foreground mount) in a forked, detached child (its own session,
    stdio on /dev/null and the mount's log file) and wait until the mount is up; its PID.

    Forking, not re-executing, spares the child a second interpreter start and import, which
    on a node with a cold page cache is most of the time a mount takes. The caller must not
    have started threads. The child's command line becomes `title`: the caller's may hold
    credentials (`--creds`), and the mount process lives long and is visible in `ps`."""
    logpath = log_file(config, mountpoint)
    logpath.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            setproctitle.setproctitle(title)  # overwrites argv (and environ) in place
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            log = os.open(logpath, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os.dup2(log, 2)
            os.close(null)
            os.close(log)
            serve_fn()
            code = 0
        except ImagefsError as exc:
            if debug:
                traceback.print_exc()
            print(f"imagefs: {exc}", file=sys.stderr, flush=True)
            code = exc.exit_code
        except BaseException as exc:  # the child must never unwind into the caller's code
            traceback.print_exc()
            print(f"imagefs: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
            code = 1
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + config.mount_timeout_s
    sock = control_socket(config, mountpoint)
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            error = MountError(_last_line(logpath) or f"mount process exited with {code}")
            if code > 1:
                error.exit_code = code  # the child's own error class decided it
            raise error
        if is_mounted(mountpoint) and sock.exists():
            return pid
        time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    raise MountError(f"mount of {mountpoint} did not come up within {config.mount_timeout_s}s")


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].removeprefix("imagefs: ").strip() if lines else ""


def unmount(mountpoint: Path, *, lazy: bool = False, config: Config | None = None) -> None:
    fstype = mount_fstype(mountpoint)
    if fstype is None:
        raise MountError(f"{mountpoint} is not mounted")
    if fstype != "fuse.imagefs":
        raise UsageError(f"{mountpoint} is not an imagefs mount (it is {fstype})")
    cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [str(mountpoint)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        msg = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "unknown error"
        raise MountError(f"cannot unmount {mountpoint}: {msg}")
    if config is not None:
        # the serving process removes its socket as it exits; wait briefly for it
        sock = control_socket(config, mountpoint)
        deadline = time.monotonic() + 5
        while sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)


def query(mountpoint: Path, config: Config, request: str = "stats") -> dict[str, Any]:
    """Ask the process serving `mountpoint` for its report."""
    if mount_fstype(mountpoint) != "fuse.imagefs":
        raise MountError(f"{mountpoint} is not an imagefs mount")
    path = control_socket(config, mountpoint)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(path))
            s.sendall(request.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                part = s.recv(65536)
                if not part:
                    break
                data += part
    except OSError as exc:
        raise MountError(f"cannot reach the imagefs process of {mountpoint}: {exc}") from None
    try:
        value = json.loads(data)
    except json.JSONDecodeError:
        raise MountError(f"the imagefs process of {mountpoint} sent a bad reply") from None
    if not isinstance(value, dict):
        raise MountError(f"the imagefs process of {mountpoint} sent a bad reply")
    return value
