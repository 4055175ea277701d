"""Small HTTP servers for tests, each stopped by its context manager.

`run_proxy`: a forward proxy (what `registry_proxy` points at) that relays each request to
the origin named in the request line and records it. With `strip_range` it drops the Range
header, so the origin answers 200 with the whole blob, as some registries and object stores
do; with `fail_first=N` it answers the first N blob requests itself with 503 and
`Retry-After`, as an overloaded registry does.

`run_file_server`: an "object store" serving a directory read-only (200, whole files, no
Range), recording each request's path and headers."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import socketserver
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te"}


def forward(
    method: str, url: urllib.parse.SplitResult, body: bytes | None, headers: dict[str, str]
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send one request on to the origin `url` names; its status, headers and whole body."""
    conn = http.client.HTTPConnection(url.netloc, timeout=30)
    try:
        target = url.path + (f"?{url.query}" if url.query else "")
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


@contextlib.contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve `handler` on a free loopback port in a thread; yields the base URL."""
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass
class Proxy:
    url: str
    requests: list[str] = field(default_factory=list)  # "METHOD URL" as received


@contextlib.contextmanager
def run_proxy(*, strip_range: bool = False, fail_first: int = 0) -> Iterator[Proxy]:
    proxy = Proxy("")
    failures = [fail_first]

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            return

        def _relay(self) -> None:
            proxy.requests.append(f"{self.command} {self.path}")
            url = urllib.parse.urlsplit(self.path)
            body = None
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                body = self.rfile.read(length)
            if failures[0] > 0 and "/blobs/sha256:" in url.path:
                failures[0] -= 1
                proxy.requests[-1] += " -> 503"
                self.send_response(503)
                self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in HOP_BY_HOP and not (strip_range and k.lower() == "range")
            }
            status, resp_headers, data = forward(self.command, url, body, headers)
            self.send_response(status)
            for k, v in resp_headers:
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

    with serving(Handler) as proxy.url:
        yield proxy


@dataclass
class FileServer:
    url: str
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # path, headers


@contextlib.contextmanager
def run_file_server(root: Path) -> Iterator[FileServer]:
    files = FileServer("")

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            return

        def do_GET(self) -> None:
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            files.requests.append((path, dict(self.headers.items())))
            target = (root / path.lstrip("/")).resolve()
            if not target.is_relative_to(root.resolve()) or not target.is_file():
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = target.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    with serving(Handler) as files.url:
        yield files
