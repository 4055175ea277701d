"""Prometheus metrics of the snapshotter (`--metrics-address HOST:PORT`): its image mounts
(how many, bytes read and fetched, cache hits, requests and their latency, integrity errors,
asked of each mount's control socket at scrape time) and its RPCs (calls by outcome, time)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from fuse_mount.snapshotter.service import RPC_STATS, RpcStats
from imagefs.errors import ImagefsError, UsageError

log = logging.getLogger(__name__)

QueryMount = Callable[[Path], dict[str, Any]]
MOUNT_COUNTERS = (
    ("bytes_read", "Bytes read from the mount by its processes"),
    ("bytes_fetched", "Bytes fetched from the registry (or its mirrors)"),
    ("chunks_fetched", "Chunks fetched and verified"),
    ("cache_hits", "Chunk reads served by the chunk cache"),
    ("requests", "Range requests made"),
    ("integrity_errors", "Chunks that failed verification (each refetched once)"),
    ("prefetch_bytes", "Bytes prefetched in the background"),
)


class SnapshotterCollector(Collector):
    def __init__(self, mounts_root: Path, query: QueryMount, rpcs: RpcStats = RPC_STATS) -> None:
        self.mounts_root = mounts_root
        self.query = query
        self.rpcs = rpcs

    def _mounts(self) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        if not self.mounts_root.is_dir():
            return out
        for path in sorted(self.mounts_root.iterdir()):
            try:
                stats = self.query(path)
            except ImagefsError:  # not mounted (yet, or any more)
                continue
            out.append((str(stats.get("image", path.name)), stats))
        return out

    def collect(self) -> Iterator[Any]:
        mounts = self._mounts()
        yield GaugeMetricFamily(
            "imagefs_mounts", "Image mounts serving containers", value=len(mounts)
        )
        for key, doc in MOUNT_COUNTERS:
            family = CounterMetricFamily(f"imagefs_{key}", doc, labels=["image"])
            for image, stats in mounts:
                family.add_metric([image], float(stats.get(key, 0)))
            yield family
        latency = GaugeMetricFamily(
            "imagefs_request_latency_ms",
            "Range request latency percentiles per mount",
            labels=["image", "quantile"],
        )
        for image, stats in mounts:
            for q, value in (stats.get("request_latency_ms") or {}).items():
                latency.add_metric([image, q], float(value))
        yield latency
        calls, seconds = self.rpcs.snapshot()
        rpcs = CounterMetricFamily(
            "imagefs_snapshotter_rpcs", "Snapshots API calls by outcome", labels=["method", "code"]
        )
        for (method, code), n in sorted(calls.items()):
            rpcs.add_metric([method, code], float(n))
        yield rpcs
        errors = CounterMetricFamily(
            "imagefs_snapshotter_rpc_errors", "Snapshots API calls that failed", labels=["method"]
        )
        failed: dict[str, int] = {}
        for (method, code), n in calls.items():
            if code != "OK":
                failed[method] = failed.get(method, 0) + n
        for method, n in sorted(failed.items()):
            errors.add_metric([method], float(n))
        yield errors
        time_family = CounterMetricFamily(
            "imagefs_snapshotter_rpc_seconds",
            "Time spent in Snapshots API calls",
            labels=["method"],
        )
        for method, total in sorted(seconds.items()):
            time_family.add_metric([method], total)
        yield time_family


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"metrics address {address!r} must be HOST:PORT")
    return host or "127.0.0.1", int(port)


def serve_metrics(address: str, mounts_root: Path, query: QueryMount) -> CollectorRegistry:
    """Serve /metrics on `address` (a daemon thread); returns the registry it serves."""
    host, port = parse_address(address)
    registry = CollectorRegistry()
    registry.register(SnapshotterCollector(mounts_root, query))
    start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, port)
    return registry
