"""Serve the snapshotter on a unix socket until SIGTERM or SIGINT."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType

import grpc

from fuse_mount.snapshotter import protos
from fuse_mount.snapshotter.service import SnapshotsService
from fuse_mount.snapshotter.snapshotter import RemoteLayers, Snapshotter
from imagefs.errors import ImagefsError, UsageError

log = logging.getLogger(__name__)

MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with the terminating NUL
STOP_GRACE_S = 5.0


class ServeError(ImagefsError):
    """The snapshotter cannot listen on its socket."""


def socket_path(address: str) -> Path:
    """`unix:///path`, `unix:/path` or a plain path -> the socket's absolute path."""
    for prefix in ("unix://", "unix:"):
        if address.startswith(prefix):
            address = address[len(prefix) :]
            break
    path = Path(address).absolute()
    if len(os.fsencode(str(path))) > MAX_SOCKET_PATH:
        raise UsageError(f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes")
    return path


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket file nobody listens on; refuse if something answers there."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_socket():
        raise UsageError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink()
        log.info("removed stale socket %s", path)
        return
    finally:
        probe.close()
    raise UsageError(f"another process is serving on {path}")


class SnapshotterServer:
    """A started gRPC server for one snapshotter root; `stop()` ends it."""

    def __init__(
        self,
        address: str,
        root: Path,
        *,
        remote: RemoteLayers | None = None,
        max_workers: int = 16,
    ) -> None:
        self.socket = socket_path(address)
        self.snapshotter = Snapshotter(root.absolute(), remote)
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_socket(self.socket)
        self._server = grpc.server(ThreadPoolExecutor(max_workers=max_workers))
        protos.snapshots_pb2_grpc().add_SnapshotsServicer_to_server(
            SnapshotsService(self.snapshotter), self._server
        )
        old_umask = os.umask(0o177)  # the socket is created 0600, never briefly wider
        try:
            bound = self._server.add_insecure_port(f"unix://{self.socket}")
        except RuntimeError as exc:
            raise ServeError(f"cannot listen on {self.socket}: {exc}") from exc
        finally:
            os.umask(old_umask)
        if not bound:
            raise ServeError(f"cannot listen on {self.socket}")
        self._server.start()
        os.chmod(self.socket, 0o600)
        log.info("snapshotter serving on unix://%s, root %s", self.socket, self.snapshotter.root)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        self._server.stop(grace_s).wait()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        log.info("snapshotter stopped")


def serve(address: str, root: Path, *, remote: RemoteLayers | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then stop cleanly (in-flight RPCs get a grace
    period) and remove the socket."""
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server = SnapshotterServer(address, root, remote=remote)
        try:
            while not stop.wait(1.0):
                pass
            log.info("signal %s received, stopping", signal.Signals(received[0]).name)
        finally:
            server.stop()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
