"""A real OCI registry on loopback: Debian's `docker-registry` (CNCF distribution 2.8) with
its storage in a temp dir, optionally behind htpasswd (bcrypt) Basic auth. Always stopped by
PID and its temp dir removed."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

REGISTRY_BIN = "/usr/bin/docker-registry"


@dataclass(frozen=True)
class RunningRegistry:
    url: str  # http://127.0.0.1:PORT
    host: str  # 127.0.0.1:PORT
    root: Path
    pid: int
    data: Path  # the storage root directory

    def blob_file(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob's bytes (`sha256:HEX`)."""
        hexd = digest.split(":", 1)[1]
        return self.data / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def completed(self, since: int = 0) -> list[str]:
        """The log's "response completed" lines, from log line `since` on."""
        return [ln for ln in self.log.splitlines()[since:] if "response completed" in ln]

    def requests(self, method: str, path_part: str) -> int:
        """How many completed requests with `method` had `path_part` in their URI."""
        return sum(
            1
            for line in self.log.splitlines()
            if "response completed" in line
            and f"http.request.method={method} " in line
            and path_part in line
        )

    @property
    def log(self) -> str:
        return (self.root / "registry.log").read_text(errors="replace")


def matching(lines: list[str], method: str, uri_part: str, status: int | None = None) -> list[str]:
    """The completed-request log lines with `method`, `uri_part` in the URI and `status`."""
    return [
        ln
        for ln in lines
        if f"http.request.method={method} " in ln
        and uri_part in ln
        and (status is None or f"http.response.status={status} " in ln)
    ]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash for htpasswd. Uses the C library's crypt(3) (libxcrypt does `$2b$`)
    through the stdlib `crypt` module: no bcrypt package, no apache2-utils needed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # deprecated since 3.11, removed in 3.13

        # cost 4 (bcrypt's minimum): the registry checks the hash on every request, and the
        # default cost 12 makes each one take ~0.25 s
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
    if not hashed or not hashed.startswith("$2"):
        raise RuntimeError("crypt(3) on this system cannot make bcrypt hashes")
    return hashed


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url + "/v2/", timeout=1) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"docker-registry did not answer /v2/ in {timeout_s}s:\n{log.read_text()}")


@contextlib.contextmanager
def run_registry(
    users: Mapping[str, str] | None = None,
    token: TokenServer | None = None,
    *,
    proxy_remote: str | None = None,
    port: int | None = None,
    data_dir: Path | None = None,
    redirect_base: str | None = None,
) -> Iterator[RunningRegistry]:
    """Start a registry, with htpasswd Basic auth for `users` or Bearer auth against the
    `token` service when given, and always stop it.

    `proxy_remote` (http://HOST:PORT) makes it a pull-through cache (a mirror) of that
    registry. `port` and `data_dir` let a test stop a registry and start it again at the
    same address with the same contents (`data_dir` is then left for the caller).
    `redirect_base` turns on distribution's `redirect` storage middleware: blob GETs are
    answered with a redirect to that base URL plus the blob's storage path, as registries
    backed by object storage do."""
    root = Path(tempfile.mkdtemp(prefix="ifs-reg-", dir="/tmp"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        port = port or free_port()
        data = data_dir if data_dir is not None else root / "data"
        auth = ""
        if users:
            htpasswd = root / "htpasswd"
            htpasswd.write_text("".join(f"{u}:{bcrypt_hash(p)}\n" for u, p in users.items()))
            auth = f"auth:\n  htpasswd:\n    realm: imagefs-test\n    path: {htpasswd}\n"
        elif token is not None:
            auth = (
                f"auth:\n  token:\n    realm: {token.realm}\n    service: {TOKEN_SERVICE}\n"
                f"    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {token.cert}\n"
            )
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: info\n"
            f"storage:\n  filesystem:\n    rootdirectory: {data}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{port}\n"
            + auth
            + (f"proxy:\n  remoteurl: {proxy_remote}\n" if proxy_remote else "")
            + (
                "middleware:\n  storage:\n    - name: redirect\n      options:\n"
                f"        baseurl: {redirect_base}\n"
                if redirect_base
                else ""
            )
        )
        log = root / "registry.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, proc, log, timeout_s=15)
        yield RunningRegistry(url, f"127.0.0.1:{port}", root, proc.pid, data)
    finally:
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------ a token service


TOKEN_SERVICE = "imagefs-test-registry"
TOKEN_ISSUER = "imagefs-test-issuer"


@dataclass(frozen=True)
class TokenServer:
    realm: str  # http://127.0.0.1:PORT/token
    cert: Path  # the signing certificate, the registry's rootcertbundle
    issued: list[str]  # the scopes of tokens handed out, for assertions


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@contextlib.contextmanager
def run_token_server(
    users: Mapping[str, str], readers: frozenset[str] = frozenset()
) -> Iterator[TokenServer]:
    """A minimal distribution token service (like docker_auth): RS256 JWTs signed with a
    fresh self-signed key (openssl CLI), the certificate sent in `x5c`. Known users get the
    actions they ask for (users in `readers` only `pull`); anonymous callers get a token
    granting nothing; a wrong password gets 401."""
    root = Path(tempfile.mkdtemp(prefix="ifs-tok-", dir="/tmp"))
    server: http.server.ThreadingHTTPServer | None = None
    thread: threading.Thread | None = None
    try:
        key, cert = root / "key.pem", root / "cert.pem"
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-subj", "/CN=imagefs-test-token", "-keyout", str(key), "-out", str(cert)),
            ],
            check=True,
            capture_output=True,
        )
        pem = cert.read_text()
        x5c = "".join(pem.split("-----")[2].split())  # base64 DER between the PEM markers
        issued: list[str] = []

        def sign(claims: dict[str, object]) -> str:
            header = {"typ": "JWT", "alg": "RS256", "x5c": [x5c]}
            signing_input = (
                _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
            )
            sig = subprocess.run(
                ["openssl", "dgst", "-sha256", "-sign", str(key)],
                input=signing_input.encode(),
                capture_output=True,
                check=True,
            ).stdout
            return signing_input + "." + _b64url(sig)

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                subject = ""
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                    if users.get(user) != password:
                        self.send_response(401)
                        self.end_headers()
                        return
                    subject = user
                access = []
                for scope in query.get("scope", []):
                    kind, _, rest = scope.partition(":")
                    name, _, actions = rest.rpartition(":")
                    granted = actions.split(",") if subject else []
                    if subject in readers:
                        granted = [a for a in granted if a == "pull"]
                    access.append({"type": kind, "name": name, "actions": granted})
                    issued.append(scope)
                now = int(time.time())
                token = sign(
                    {
                        "iss": TOKEN_ISSUER,
                        "sub": subject,
                        "aud": query.get("service", [""])[0],
                        "exp": now + 300,
                        "nbf": now - 10,
                        "iat": now,
                        "jti": os.urandom(8).hex(),
                        "access": access,
                    }
                )
                body = json.dumps({"token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        port = server.server_address[1]
        yield TokenServer(f"http://127.0.0.1:{port}/token", cert, issued)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=10)
        shutil.rmtree(root, ignore_errors=True)
