"""A small forward HTTP proxy for tests (what `registry_proxy` points at): it relays each
request to the origin named in the request line and counts them. With `strip_range` it drops
the Range header, so the origin answers 200 with the whole blob, as some registries and
object stores do. Always stopped by the context manager."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import socketserver
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te"}


@dataclass
class Proxy:
    url: str
    requests: list[str] = field(default_factory=list)  # "METHOD URL" as received


@contextlib.contextmanager
def run_proxy(*, strip_range: bool = False) -> Iterator[Proxy]:
    proxy = Proxy("")

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
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in HOP_BY_HOP and not (strip_range and k.lower() == "range")
            }
            conn = http.client.HTTPConnection(url.netloc, timeout=30)
            try:
                target = url.path + (f"?{url.query}" if url.query else "")
                conn.request(self.command, target, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            finally:
                conn.close()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
