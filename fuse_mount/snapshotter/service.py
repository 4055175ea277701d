"""The gRPC servicer of containerd.services.snapshots.v1.Snapshots: translates requests into
`Snapshotter` calls and our errors into the status codes containerd's `errdefs.FromGRPC`
understands (NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, INVALID_ARGUMENT).

containerd's proxy passes keys as `<namespace>/<n>/<key>` and sends no namespace metadata,
so keys are opaque strings here. The `snapshotter` field of each request (the proxy
plugin's name) is ignored: one process serves one snapshotter.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from fuse_mount.snapshotter import protos
from fuse_mount.snapshotter.mounts import Mount
from fuse_mount.snapshotter.snapshotter import Snapshotter
from fuse_mount.snapshotter.state import (
    Kind,
    Snapshot,
    SnapshotExists,
    SnapshotInvalid,
    SnapshotNotFound,
    SnapshotPrecondition,
)
from imagefs.errors import ImagefsError, NotFoundError, UsageError

log = logging.getLogger(__name__)

# the snapshotter's own errors first, then the general kinds a remote-layer hook may raise
_CODES: tuple[tuple[type[ImagefsError], grpc.StatusCode], ...] = (
    (SnapshotNotFound, grpc.StatusCode.NOT_FOUND),
    (SnapshotExists, grpc.StatusCode.ALREADY_EXISTS),
    (SnapshotPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (SnapshotInvalid, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (UsageError, grpc.StatusCode.INVALID_ARGUMENT),
)


def status_code(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status for an error raised by the snapshotter."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return (
        grpc.StatusCode.INTERNAL if not isinstance(exc, ImagefsError) else grpc.StatusCode.UNKNOWN
    )


F = TypeVar("F", bound=Callable[..., Any])


class RpcStats:
    """Calls, outcomes and time per RPC (for the metrics endpoint), thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: dict[tuple[str, str], int] = {}
        self.seconds: dict[str, float] = {}

    def record(self, method: str, code: str, seconds: float) -> None:
        with self._lock:
            self.calls[(method, code)] = self.calls.get((method, code), 0) + 1
            self.seconds[method] = self.seconds.get(method, 0.0) + seconds

    def snapshot(self) -> tuple[dict[tuple[str, str], int], dict[str, float]]:
        with self._lock:
            return dict(self.calls), dict(self.seconds)


RPC_STATS = RpcStats()


def _rpc(method: F) -> F:
    """Log the call at debug level and turn exceptions into a gRPC status."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: SnapshotsService, request: Any, context: grpc.ServicerContext) -> Any:
        start = time.monotonic()
        fields = {f.name: v for f, v in request.ListFields() if f.name != "snapshotter"}
        try:
            result = method(self, request, context)
        except ImagefsError as exc:
            code = status_code(exc)
            RPC_STATS.record(name, code.name, time.monotonic() - start)
            log.debug("%s %s -> %s: %s", name, _brief(fields), code.name, exc)
            context.abort(code, str(exc))
        except Exception as exc:
            RPC_STATS.record(name, "INTERNAL", time.monotonic() - start)
            log.exception("%s %s failed", name, _brief(fields))
            context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        RPC_STATS.record(name, "OK", time.monotonic() - start)
        log.debug("%s %s ok (%.1f ms)", name, _brief(fields), (time.monotonic() - start) * 1e3)
        return result

    return wrapper  # type: ignore[return-value]


def _brief(fields: dict[str, Any]) -> str:
    parts = []
    for key, value in fields.items():
        if key == "labels" or hasattr(value, "items"):
            parts.append(f"{key}={dict(value)}")
        elif hasattr(value, "ListFields"):
            parts.append(f"{key}={{{str(value).strip().replace(chr(10), ' ')}}}")
        else:
            parts.append(f"{key}={value!r}")
    return " ".join(parts)


class SnapshotsService:
    """The servicer; registered with `add_SnapshotsServicer_to_server` (duck-typed, so the
    generated base class is not needed)."""

    def __init__(self, snapshotter: Snapshotter) -> None:
        self.snapshotter = snapshotter
        self._pb = protos.snapshots_pb2()
        self._mount_pb = protos.mount_pb2()
        self._empty_pb = protos.empty_pb2()
        self._kinds = {
            Kind.VIEW: self._pb.VIEW,
            Kind.ACTIVE: self._pb.ACTIVE,
            Kind.COMMITTED: self._pb.COMMITTED,
        }

    # ------------------------------------------------------------------ conversions

    def _mounts(self, mounts: list[Mount]) -> list[Any]:
        return [
            self._mount_pb.Mount(type=m.type, source=m.source, options=list(m.options))
            for m in mounts
        ]

    def _info(self, snap: Snapshot) -> Any:
        info = self._pb.Info(
            name=snap.key, parent=snap.parent, kind=self._kinds[snap.kind], labels=snap.labels
        )
        info.created_at.FromNanoseconds(snap.created_ns)
        info.updated_at.FromNanoseconds(snap.updated_ns)
        return info

    # ------------------------------------------------------------------ RPCs

    @_rpc
    def Prepare(self, request: Any, context: grpc.ServicerContext) -> Any:
        log.debug(
            "Prepare %r parent=%r labels=%s", request.key, request.parent, dict(request.labels)
        )
        mounts = self.snapshotter.prepare(request.key, request.parent, dict(request.labels))
        return self._pb.PrepareSnapshotResponse(mounts=self._mounts(mounts))

    @_rpc
    def View(self, request: Any, context: grpc.ServicerContext) -> Any:
        mounts = self.snapshotter.view(request.key, request.parent, dict(request.labels))
        return self._pb.ViewSnapshotResponse(mounts=self._mounts(mounts))

    @_rpc
    def Mounts(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._pb.MountsResponse(mounts=self._mounts(self.snapshotter.mounts(request.key)))

    @_rpc
    def Commit(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.snapshotter.commit(request.name, request.key, dict(request.labels))
        return self._empty()

    @_rpc
    def Remove(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.snapshotter.remove(request.key)
        return self._empty()

    @_rpc
    def Stat(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._pb.StatSnapshotResponse(info=self._info(self.snapshotter.stat(request.key)))

    @_rpc
    def Update(self, request: Any, context: grpc.ServicerContext) -> Any:
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else []
        snap = self.snapshotter.update(request.info.name, dict(request.info.labels), paths)
        return self._pb.UpdateSnapshotResponse(info=self._info(snap))

    def List(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        """Server streaming: all snapshots, in batches; filters are ignored because
        containerd applies them again to what it receives."""
        log.debug("List filters=%s", list(request.filters))
        try:
            snaps = self.snapshotter.snapshots()
        except ImagefsError as exc:
            context.abort(status_code(exc), str(exc))
        for i in range(0, len(snaps), 100):
            yield self._pb.ListSnapshotsResponse(info=[self._info(s) for s in snaps[i : i + 100]])
        log.debug("List -> %d snapshot(s)", len(snaps))

    @_rpc
    def Usage(self, request: Any, context: grpc.ServicerContext) -> Any:
        usage = self.snapshotter.usage(request.key)
        return self._pb.UsageResponse(size=usage.size_bytes, inodes=usage.inodes)

    @_rpc
    def Cleanup(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.snapshotter.cleanup()
        return self._empty()

    def _empty(self) -> Any:
        return self._empty_pb.Empty()
