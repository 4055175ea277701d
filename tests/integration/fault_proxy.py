"""A fault-injecting forward proxy for tests (what `registry_proxy` points at).

It relays every request to the origin named in the request line. While a fault is switched
on (`FaultProxy.inject`), blob range GETs (`GET .../blobs/sha256:...` with a `Range` header,
the reads of a mounted image) are answered badly; everything else (manifests, the
bootstrap, which is read whole) passes, so a mount can come up under any fault. `heal()`
switches the fault off and releases any response being held.

Faults (`kind`):

- `drop`: headers with the full Content-Length, half the body, then a TCP reset;
- `stall`: holds the response (no status line) until healed or `stall_s` has passed, then
  closes the connection;
- `truncate`: the full Content-Length, half the body, then a clean close (FIN);
- `flip`: the whole body with one byte inverted (in the middle);
- `status`: answers `status` (500, 503, 429...) itself, with `Retry-After` when given;
- `drip`: the right bytes, `drip_bytes` every `drip_interval_s` (never silent long enough
  for a read timeout).

`limit` caps the faulty responses served (then requests pass again); `served` counts them.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import socket
import struct
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.integration.http_proxy import HOP_BY_HOP, forward, serving

KINDS = ("drop", "stall", "truncate", "flip", "status", "drip")


@dataclass(frozen=True)
class Fault:
    kind: str
    status: int = 503
    retry_after: str | None = None
    limit: int | None = None
    stall_s: float = 60.0
    drip_bytes: int = 256
    drip_interval_s: float = 0.2

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault {self.kind!r}")


@dataclass
class FaultProxy:
    url: str = ""
    requests: list[str] = field(default_factory=list)  # "METHOD URL[ -> fault]"
    served: int = 0  # faulty responses served
    fault: Fault | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _released: threading.Event = field(default_factory=threading.Event)

    def inject(self, kind: str, **options: object) -> Fault:
        """Switch `kind` on (replacing any other fault); returns it."""
        fault = Fault(kind, **options)  # type: ignore[arg-type]
        with self._lock:
            self._released.clear()
            self.fault = fault
        return fault

    def heal(self) -> None:
        """Switch faults off; held (stalled, dripping) responses are let go at once."""
        with self._lock:
            self.fault = None
            self._released.set()

    def _take(self, method: str, path: str, has_range: bool) -> Fault | None:
        """The fault to apply to this request (counted as served), or None."""
        if method != "GET" or not has_range or "/blobs/sha256:" not in path:
            return None
        with self._lock:
            fault = self.fault
            if fault is None or (fault.limit is not None and self.served >= fault.limit):
                return None
            self.served += 1
            return fault


@contextlib.contextmanager
def run_fault_proxy() -> Iterator[FaultProxy]:
    proxy = FaultProxy()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            return

        def handle(self) -> None:
            with contextlib.suppress(ConnectionError):  # a client that gave up: not news
                super().handle()

        def _relay(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            body = None
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                body = self.rfile.read(length)
            fault = proxy._take(self.command, url.path, "Range" in self.headers)
            proxy.requests.append(
                f"{self.command} {self.path}" + (f" -> {fault.kind}" if fault else "")
            )
            if fault is not None and fault.kind == "status":
                self.send_response(fault.status)
                if fault.retry_after is not None:
                    self.send_header("Retry-After", fault.retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if fault is not None and fault.kind == "stall":
                proxy._released.wait(fault.stall_s)
                self.close_connection = True
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            status, resp_headers, data = forward(self.command, url, body, headers)
            if fault is not None and fault.kind == "flip" and data:
                flipped = bytearray(data)
                flipped[len(data) // 2] ^= 0xFF
                data = bytes(flipped)
            self.send_response(status)
            for k, v in resp_headers:
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command == "HEAD":
                return
            try:
                if fault is not None and fault.kind in ("drop", "truncate"):
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    if fault.kind == "drop":  # RST instead of FIN
                        self.connection.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    self.close_connection = True
                elif fault is not None and fault.kind == "drip":
                    for at in range(0, len(data), fault.drip_bytes):
                        self.wfile.write(data[at : at + fault.drip_bytes])
                        self.wfile.flush()
                        if proxy._released.wait(fault.drip_interval_s):
                            self.wfile.write(data[at + fault.drip_bytes :])
                            break
                else:
                    self.wfile.write(data)
            except OSError:  # the client gave up (timeout, reset): nothing more to send
                self.close_connection = True

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

    with serving(Handler) as proxy.url:
        try:
            yield proxy
        finally:
            proxy.heal()  # let held (stalled, dripping) handler threads finish first
