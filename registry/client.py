"""`RegistryClient`: the OCI distribution API over one pooled `requests.Session`.

Every call has a timeout; connection errors, 429 and 5xx are retried a bounded number of
times with exponential backoff and full jitter, honouring `Retry-After`. Requests start
anonymous; a 401 is answered from its challenge (Basic, or a Bearer token fetched with
optional credentials, cached by realm, service and scope) and retried once. Redirects are
followed by hand so that `Authorization` never leaves the registry's host. Everything read
is verified against its digest. `requests` exceptions are wrapped into `imagefs.errors`
here and go no further.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import io
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from imagefs.digest import Digest
from imagefs.errors import (
    AuthError,
    FormatError,
    ImagefsError,
    IntegrityError,
    NotFoundError,
    RegistryError,
    TargetError,
    UsageError,
)
from imagefs.oci import INDEX_TYPES, MANIFEST_TYPES, Descriptor
from registry.auth import (
    Challenge,
    Credentials,
    TokenCache,
    parse_challenges,
    parse_token_response,
    pick_challenge,
    repository_scope,
    token_params,
)
from registry.reference import Reference, is_loopback

DEFAULT_ACCEPT: tuple[str, ...] = tuple(sorted(MANIFEST_TYPES)) + tuple(sorted(INDEX_TYPES))
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # distribution's own limit for a manifest
MAX_REDIRECTS = 5
MAX_RETRY_AFTER_S = 60.0
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
PULL: tuple[str, ...] = ("pull",)
PUSH: tuple[str, ...] = ("pull", "push")


# ------------------------------------------------------------------ pure helpers


def parse_retry_after(value: str | None, now: float) -> float | None:
    """`Retry-After` as seconds from `now` (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def retry_delay(
    attempt: int,
    retry_after_s: float | None,
    base_s: float,
    cap_s: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number `attempt` (0-based): the server's `Retry-After`
    (bounded) when given, else full-jitter exponential backoff."""
    if retry_after_s is not None:
        return min(retry_after_s, MAX_RETRY_AFTER_S)
    return rand() * min(cap_s, base_s * 2.0**attempt)


def byte_range(offset: int, length: int) -> str:
    return f"bytes={offset}-{offset + length - 1}"


def slice_chunks(chunks: Iterable[bytes], offset: int, length: int) -> tuple[bytes, int]:
    """Bytes [offset, offset+length) of a stream given as chunks, reading no further than
    needed; returns them and how many bytes were consumed."""
    out = bytearray()
    pos = 0
    end = offset + length
    for chunk in chunks:
        chunk_end = pos + len(chunk)
        if chunk_end > offset:
            out += chunk[max(0, offset - pos) : end - pos]
        pos = chunk_end
        if pos >= end:
            break
    return bytes(out), pos


def _with_query(url: str, extra: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    parts = urlsplit(url)
    pairs = list(extra.items()) if isinstance(extra, Mapping) else list(extra)
    query = parse_qsl(parts.query, keep_blank_values=True) + pairs
    return urlunsplit(parts._replace(query=urlencode(query)))


def token_query(params: Mapping[str, str]) -> list[tuple[str, str]]:
    """Token endpoint query pairs: a space-separated scope (as a registry's challenge lists
    several) becomes one `scope` parameter each, as the token spec asks."""
    pairs = [(k, v) for k, v in params.items() if k != "scope"]
    pairs += [("scope", scope) for scope in params.get("scope", "").split() if scope]
    return pairs


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip()


# ------------------------------------------------------------------ the client


@dataclass
class ClientStats:
    """Counters for tests, `--json` and benchmarks."""

    requests: int = 0
    retries: int = 0
    auth_fetches: int = 0
    blobs_pushed: int = 0
    blobs_skipped: int = 0
    blobs_mounted: int = 0
    upload_chunks: int = 0
    bytes_pushed: int = 0
    bytes_read: int = 0


class RegistryClient:
    """One registry (`host[:port]`), any number of repositories in it."""

    def __init__(
        self,
        registry: str,
        *,
        plain_http: bool | None = None,
        credentials: Credentials | None = None,
        timeout_s: float = 30.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        backoff_cap_s: float = 8.0,
        pool_size: int = 16,
        ca_file: str | None = None,
        proxy: str | None = None,
        chunk_upload_bytes: int = 16 << 20,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.registry = registry
        host = registry[1:].partition("]")[0] if registry.startswith("[") else registry
        host = host.partition(":")[0] if not registry.startswith("[") else host
        if plain_http is None:
            plain_http = is_loopback(host)
        self.base = f"{'http' if plain_http else 'https'}://{registry}"
        self._netloc = urlsplit(self.base).netloc
        self.credentials = credentials
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_cap_s = backoff_cap_s
        self._sleep = sleep
        self.stats = ClientStats()
        self.tokens = TokenCache()
        self._auth: dict[str, str] = {}  # scope -> Authorization value that worked
        self._basic: str | None = None  # the registry wants Basic for every scope
        self._lock = threading.Lock()
        self.session = requests.Session()
        self.session.trust_env = False  # no ~/.netrc, no env proxies: config is explicit
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = "imagefs/0.1"
        if ca_file:
            self.session.verify = ca_file
        if proxy:
            self.session.proxies = {"http": proxy, "https": proxy}
        self.chunk_upload_bytes = chunk_upload_bytes

    @classmethod
    def for_reference(cls, ref: Reference, **kwargs: Any) -> RegistryClient:
        return cls(ref.registry, **kwargs)

    # context manager / lifecycle
    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -------------------------------------------------------------- public API

    def ping(self) -> int:
        """`GET /v2/`: the status (200, or 401 when the registry wants credentials)."""
        resp = self._send("GET", f"{self.base}/v2/", {}, None, stream=False)
        resp.close()
        return resp.status_code

    def get_manifest(
        self, ref: Reference, accept: Iterable[str] = DEFAULT_ACCEPT
    ) -> tuple[Descriptor, bytes]:
        """The manifest (or index) `ref` names, verified against its digest."""
        self._check_registry(ref)
        url = f"{self.base}/v2/{ref.repository}/manifests/{ref.reference}"
        what = f"manifest {ref}"
        with self._checked(
            "GET",
            url,
            ref.repository,
            PULL,
            what,
            headers={"Accept": ", ".join(accept)},
            stream=True,
        ) as resp:
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > MAX_MANIFEST_BYTES:
                raise FormatError(f"{what} is larger than {MAX_MANIFEST_BYTES} bytes")
            data = self._read_body(resp, what, limit=MAX_MANIFEST_BYTES)
            media_type = _media_type(resp.headers.get("Content-Type"))
            header_digest = resp.headers.get("Docker-Content-Digest")
        actual = Digest.of(data)
        if ref.digest is not None and actual != ref.digest:
            raise IntegrityError(f"{what}: the registry sent bytes with digest {actual}")
        if header_digest:
            try:
                claimed = Digest.parse(header_digest)
            except FormatError:
                claimed = None
            if claimed is not None and claimed != actual:
                raise IntegrityError(
                    f"{what}: Docker-Content-Digest {claimed} does not match the bytes ({actual})"
                )
        if media_type not in MANIFEST_TYPES | INDEX_TYPES:
            media_type = _sniff_media_type(data) or media_type
        return Descriptor(media_type, actual, len(data)), data

    def blob_exists(self, repository: str, digest: Digest) -> bool:
        url = f"{self.base}/v2/{repository}/blobs/{digest}"
        resp = self._checked(
            "HEAD", url, repository, PULL, f"blob {digest} in {self._name(repository)}", ok=(404,)
        )
        resp.close()
        return resp.status_code != 404

    def read_blob(self, repository: str, digest: Digest) -> bytes:
        what = f"blob {digest} in {self._name(repository)}"
        url = f"{self.base}/v2/{repository}/blobs/{digest}"
        with self._checked("GET", url, repository, PULL, what, stream=True) as resp:
            data = self._read_body(resp, what)
        if Digest.of(data) != digest:
            raise IntegrityError(f"{what}: the registry sent bytes that do not match the digest")
        return data

    def read_range(self, repository: str, digest: Digest, offset: int, length: int) -> bytes:
        """Exactly `length` bytes of the blob from `offset` (a short blob is an error)."""
        if offset < 0 or length < 0:
            raise UsageError("negative offset or length")
        if length == 0:
            return b""
        what = f"bytes {offset}+{length} of blob {digest} in {self._name(repository)}"
        url = f"{self.base}/v2/{repository}/blobs/{digest}"
        headers = {"Range": byte_range(offset, length), "Accept-Encoding": "identity"}
        with self._checked(
            "GET", url, repository, PULL, what, headers=headers, stream=True
        ) as resp:
            # a total deadline for the body: a server that trickles bytes (never silent
            # for a whole read timeout) must not hold a read for ever
            deadline = time.monotonic() + self.timeout_s
            if resp.status_code == 206:
                data = self._read_body(resp, what, limit=length, deadline=deadline)
            else:  # 200: the server ignored Range; skip to offset and slice
                data = self._slice_stream(resp, offset, length, what, deadline=deadline)
        if len(data) != length:
            raise IntegrityError(f"{what}: got {len(data)} bytes; the blob is shorter")
        return data

    def open_blob(self, repository: str, digest: Digest) -> BinaryIO:
        """The blob as a stream, read as it is consumed; at its end the bytes are checked
        against the digest (an `IntegrityError` then, never a silent mismatch)."""
        what = f"blob {digest} in {self._name(repository)}"
        url = f"{self.base}/v2/{repository}/blobs/{digest}"
        resp = self._checked("GET", url, repository, PULL, what, stream=True)
        return io.BufferedReader(_VerifiedStream(self, resp, digest, what), 1 << 20)

    def push_blob(self, repository: str, data: bytes) -> Digest:
        """Upload `data` unless the repository already holds it."""
        digest = Digest.of(data)
        self.push_blob_from(repository, digest, len(data), io.BytesIO(data))
        return digest

    def push_blob_from(
        self,
        repository: str,
        digest: Digest,
        size: int,
        file: BinaryIO,
        *,
        mount_from: Iterable[str] = (),
    ) -> str:
        """Upload `size` bytes of `file` as blob `digest`: skipped when the repository holds
        it (HEAD first), mounted from another repository of this registry when one of
        `mount_from` holds it, else uploaded monolithically (up to `chunk_upload_bytes`) or
        in chunks. The registry checks the digest. Returns "skipped", "mounted" or "pushed"."""
        if self.blob_exists(repository, digest):
            with self._lock:
                self.stats.blobs_skipped += 1
            return "skipped"
        for other in mount_from:
            if other != repository and self.mount_blob(repository, digest, other):
                return "mounted"
        what = f"upload of blob {digest} to {self._name(repository)}"
        location = self._start_upload(repository, what)
        if size <= self.chunk_upload_bytes:
            data = _read_exactly(file, size, what)
        else:
            offset = 0
            while offset < size:
                piece = _read_exactly(file, min(self.chunk_upload_bytes, size - offset), what)
                patch = self._checked(
                    "PATCH",
                    location,
                    repository,
                    PUSH,
                    what,
                    data=piece,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{offset + len(piece) - 1}",
                    },
                )
                patch.close()
                location = self._next_location(patch, what)
                offset += len(piece)
                with self._lock:
                    self.stats.upload_chunks += 1
            data = b""
        put = self._checked(
            "PUT",
            _with_query(location, {"digest": str(digest)}),
            repository,
            PUSH,
            what,
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        put.close()
        if put.status_code != 201:
            raise RegistryError(f"{what}: the registry answered {put.status_code}, not 201")
        with self._lock:
            self.stats.blobs_pushed += 1
            self.stats.bytes_pushed += size
        return "pushed"

    def mount_blob(self, repository: str, digest: Digest, from_repository: str) -> bool:
        """Cross-repository mount: make `from_repository`'s blob `digest` part of
        `repository` without uploading it. False when the registry declined (it then opened
        an upload, which is cancelled)."""
        what = f"mount of blob {digest} from {from_repository} into {self._name(repository)}"
        url = f"{self.base}/v2/{repository}/blobs/uploads/?" + urlencode(
            {"mount": str(digest), "from": from_repository}
        )
        try:
            resp = self._checked(
                "POST",
                url,
                repository,
                PUSH,
                what,
                extra_scope=repository_scope(from_repository, PULL),
            )
        except (AuthError, NotFoundError):
            return False
        resp.close()
        if resp.status_code == 201:
            with self._lock:
                self.stats.blobs_mounted += 1
            return True
        if "Location" in resp.headers:
            with contextlib.suppress(ImagefsError):
                cancel = self._checked(
                    "DELETE",
                    urljoin(resp.url, resp.headers["Location"]),
                    repository,
                    PUSH,
                    what,
                    ok=(404,),
                )
                cancel.close()
        return False

    def _start_upload(self, repository: str, what: str) -> str:
        start = self._checked(
            "POST", f"{self.base}/v2/{repository}/blobs/uploads/", repository, PUSH, what
        )
        start.close()
        if start.status_code != 202:
            raise RegistryError(f"{what}: the registry answered {start.status_code}, not 202")
        return self._next_location(start, what)

    def _next_location(self, resp: requests.Response, what: str) -> str:
        if "Location" not in resp.headers:
            raise RegistryError(
                f"{what}: the registry answered {resp.status_code} without Location"
            )
        return urljoin(resp.url, resp.headers["Location"])

    def push_manifest(self, ref: Reference, media_type: str, data: bytes) -> Descriptor:
        """PUT the manifest under `ref`'s tag (or digest); returns its descriptor."""
        self._check_registry(ref)
        digest = Digest.of(data)
        if ref.digest is not None and ref.digest != digest and ref.tag is None:
            raise IntegrityError(f"manifest for {ref} has digest {digest}")
        target = ref.tag if ref.tag is not None else str(digest)
        what = f"push of manifest {ref}"
        resp = self._checked(
            "PUT",
            f"{self.base}/v2/{ref.repository}/manifests/{target}",
            ref.repository,
            PUSH,
            what,
            data=data,
            headers={"Content-Type": media_type},
        )
        resp.close()
        if resp.status_code != 201:
            raise RegistryError(f"{what}: the registry answered {resp.status_code}, not 201")
        claimed = resp.headers.get("Docker-Content-Digest")
        if claimed and claimed != str(digest):
            raise IntegrityError(f"{what}: the registry stored it as {claimed}, not {digest}")
        return Descriptor(media_type, digest, len(data))

    def blob_reader(self, repository: str) -> RepositoryBlobReader:
        return RepositoryBlobReader(self, repository)

    # -------------------------------------------------------------- plumbing

    def _name(self, repository: str) -> str:
        return f"{self.registry}/{repository}"

    def _check_registry(self, ref: Reference) -> None:
        if ref.registry != self.registry:
            raise UsageError(f"{ref} is not on registry {self.registry}")

    def _checked(
        self,
        method: str,
        url: str,
        repository: str,
        actions: tuple[str, ...],
        what: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        stream: bool = False,
        ok: tuple[int, ...] = (),
        extra_scope: str | None = None,
    ) -> requests.Response:
        scope = repository_scope(repository, actions)
        if extra_scope:
            scope = f"{scope} {extra_scope}"
        hdrs = dict(headers or {})
        auth = self._auth_for(scope)
        if auth:
            hdrs["Authorization"] = auth
        resp = self._send(method, url, hdrs, data, stream=stream)
        if resp.status_code == 401:
            challenge = pick_challenge(parse_challenges(resp.headers.get("WWW-Authenticate", "")))
            resp.close()
            if challenge is None:
                raise AuthError(
                    f"{what}: {self.registry} wants authentication with a scheme imagefs "
                    "does not support (Basic and Bearer are)"
                )
            stale = hdrs.get("Authorization")  # a token the registry no longer accepts
            hdrs["Authorization"] = self._authorize(challenge, scope, what, stale)
            resp = self._send(method, url, hdrs, data, stream=stream)
            if resp.status_code == 401:
                again = pick_challenge(parse_challenges(resp.headers.get("WWW-Authenticate", "")))
                resp.close()
                with self._lock:
                    self._auth.pop(scope, None)
                    self._basic = None
                if (
                    self.credentials is not None
                    and again is not None
                    and (again.params.get("error") == "insufficient_scope")
                ):
                    action = "push to" if method in ("POST", "PUT", "PATCH") else "read"
                    raise AuthError(
                        f"{what}: {self.registry} denied access (insufficient scope); the "
                        f"account {self.credentials.username!r} may not {action} "
                        f"{self._name(repository)}: ask for {','.join(actions)} rights"
                    )
                if self.credentials is None:
                    raise AuthError(
                        f"{what}: {self.registry} requires authentication (401); log in with "
                        f"`docker login {self.registry}` or pass credentials"
                    )
                raise AuthError(
                    f"{what}: {self.registry} rejected the credentials (401); check the "
                    f"username and password (docker login {self.registry})"
                )
            with self._lock:
                self._auth[scope] = hdrs["Authorization"]
        if 200 <= resp.status_code < 300 or resp.status_code in ok:
            return resp
        resp.close()
        raise _status_error(resp.status_code, what, self.registry, method)

    def _auth_for(self, scope: str) -> str | None:
        with self._lock:
            return self._auth.get(scope) or self._basic

    def _authorize(
        self, challenge: Challenge, scope: str, what: str, stale: str | None = None
    ) -> str:
        if challenge.scheme == "basic":
            if self.credentials is None:
                raise AuthError(
                    f"{what}: {self.registry} requires a username and password (401); "
                    f"log in with `docker login {self.registry}` or pass credentials"
                )
            header = self.credentials.basic_header()
            with self._lock:
                self._basic = header
            return header
        realm = challenge.realm
        if not realm:
            raise AuthError(f"{what}: {self.registry} sent a Bearer challenge without a realm")
        params = token_params(challenge, scope)
        key = (realm, params.get("service", ""), params["scope"])
        cached = self.tokens.get(key, time.time())
        if cached is not None and cached.header() != stale:
            return cached.header()
        self.tokens.discard(key)  # expired early or revoked: fetch a fresh one
        hdrs = {}
        if self.credentials is not None:
            hdrs["Authorization"] = self.credentials.basic_header()
        token_url = _with_query(realm, token_query(params))
        with self._lock:
            self.stats.auth_fetches += 1
        # the realm is another service: send the credentials there, and only there
        realm_host = urlsplit(realm).netloc
        resp = self._send("GET", token_url, hdrs, None, stream=False, auth_host=realm_host)
        body = resp.content
        resp.close()
        if resp.status_code in (401, 403):
            hint = (
                "check the username and password"
                if self.credentials is not None
                else f"log in with `docker login {self.registry}` or pass credentials"
            )
            raise AuthError(
                f"{what}: the token service of {self.registry} refused access "
                f"({resp.status_code}); {hint}"
            )
        if resp.status_code != 200:
            raise RegistryError(
                f"{what}: the token service of {self.registry} answered {resp.status_code}"
            )
        token = parse_token_response(body, time.time(), self.registry)
        self.tokens.put(key, token)
        return token.header()

    def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        data: bytes | None,
        *,
        stream: bool,
        auth_host: str | None = None,
    ) -> requests.Response:
        """One logical request: retries (connection errors, 429, 5xx) and redirects."""
        trusted = auth_host or self._netloc
        attempt = 0
        deadline = time.monotonic() + self.timeout_s  # no retry starts after this
        while True:
            try:
                resp = self._follow(method, url, headers, data, stream, trusted)
            except requests.exceptions.SSLError:
                raise RegistryError(
                    f"TLS verification of {urlsplit(url).netloc} failed; trust its CA with "
                    "registry_ca_file, or list it in plain_http_registries if it speaks HTTP"
                ) from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt >= self.retries or time.monotonic() >= deadline:
                    raise RegistryError(
                        f"cannot reach {self.registry} ({type(exc).__name__}) after "
                        f"{attempt + 1} attempts; check the address and that it is up"
                    ) from None
                delay = retry_delay(attempt, None, self.backoff_s, self.backoff_cap_s)
            except requests.RequestException as exc:
                raise RegistryError(
                    f"request to {self.registry} failed: {type(exc).__name__}"
                ) from None
            else:
                if (
                    resp.status_code not in RETRY_STATUSES
                    or attempt >= self.retries
                    or time.monotonic() >= deadline
                ):
                    return resp
                after = parse_retry_after(resp.headers.get("Retry-After"), time.time())
                resp.close()
                delay = retry_delay(attempt, after, self.backoff_s, self.backoff_cap_s)
            attempt += 1
            with self._lock:
                self.stats.retries += 1
            self._sleep(min(delay, max(0.0, deadline - time.monotonic())))

    def _follow(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        data: bytes | None,
        stream: bool,
        trusted: str,
    ) -> requests.Response:
        hdrs = dict(headers)
        for _ in range(MAX_REDIRECTS + 1):
            if urlsplit(url).netloc != trusted:
                hdrs.pop("Authorization", None)
            with self._lock:
                self.stats.requests += 1
            resp = self.session.request(
                method,
                url,
                headers=hdrs,
                data=data,
                stream=stream,
                timeout=self.timeout_s,
                allow_redirects=False,
            )
            if resp.status_code not in (301, 302, 303, 307, 308) or "Location" not in resp.headers:
                return resp
            url = urljoin(resp.url, resp.headers["Location"])
            resp.close()
            if resp.status_code == 303:
                method, data = "GET", None
        raise RegistryError(f"{self.registry} redirected more than {MAX_REDIRECTS} times")

    def _pieces(
        self, resp: requests.Response, what: str, deadline: float | None
    ) -> Iterator[bytes]:
        """The body in pieces; with a `deadline`, as they arrive (each read waits at most
        the timeout) and a `RegistryError` once the deadline has passed."""
        if deadline is None:
            yield from resp.iter_content(chunk_size=1 << 16)
            return
        while True:
            try:
                piece = resp.raw.read1(1 << 16, decode_content=True)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise RegistryError(f"{what}: transfer failed ({type(exc).__name__})") from None
            if not piece:
                return
            yield piece
            if time.monotonic() > deadline:
                raise RegistryError(f"{what}: transfer too slow (not done in {self.timeout_s:g}s)")

    def _read_body(
        self,
        resp: requests.Response,
        what: str,
        limit: int | None = None,
        deadline: float | None = None,
    ) -> bytes:
        chunks = []
        total = 0
        try:
            for chunk in self._pieces(resp, what, deadline):
                chunks.append(chunk)
                total += len(chunk)
                if limit is not None and total > limit:
                    raise FormatError(f"{what}: the registry sent more than {limit} bytes")
        except requests.RequestException as exc:
            raise RegistryError(f"{what}: transfer failed ({type(exc).__name__})") from None
        with self._lock:
            self.stats.bytes_read += total
        return b"".join(chunks)

    def _slice_stream(
        self,
        resp: requests.Response,
        offset: int,
        length: int,
        what: str,
        deadline: float | None = None,
    ) -> bytes:
        try:
            data, consumed = slice_chunks(self._pieces(resp, what, deadline), offset, length)
        except requests.RequestException as exc:
            raise RegistryError(f"{what}: transfer failed ({type(exc).__name__})") from None
        with self._lock:
            self.stats.bytes_read += consumed
        return data


def _status_error(status: int, what: str, registry: str, method: str) -> ImagefsError:
    if status == 404:
        return NotFoundError(f"{what}: not found (404); check the repository name and tag")
    if status == 401:
        return AuthError(f"{what}: {registry} requires authentication (401)")
    if status == 403:
        action = "push to" if method in ("POST", "PUT", "PATCH") else "read"
        return AuthError(
            f"{what}: {registry} denied access (403); the account may not {action} this repository"
        )
    if status == 416:
        return FormatError(f"{what}: the range is outside the blob (416)")
    return RegistryError(f"{what}: {registry} answered HTTP {status}")


def _sniff_media_type(data: bytes) -> str | None:
    import json

    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(doc, dict):
        mt = doc.get("mediaType")
        if isinstance(mt, str):
            return mt
        if "manifests" in doc:
            return "application/vnd.oci.image.index.v1+json"
        if "layers" in doc:
            return "application/vnd.oci.image.manifest.v1+json"
    return None


class RepositoryBlobReader:
    """`imagefs.chunks.BlobReader` over one repository of a registry."""

    def __init__(self, client: RegistryClient, repository: str) -> None:
        self.client = client
        self.repository = repository

    def read_range(self, blob: Digest, offset: int, length: int) -> bytes:
        return self.client.read_range(self.repository, blob, offset, length)


def _read_exactly(file: BinaryIO, size: int, what: str) -> bytes:
    parts = []
    left = size
    while left:
        piece = file.read(left)
        if not piece:
            raise TargetError(f"{what}: the blob ended {left} bytes early")
        parts.append(piece)
        left -= len(piece)
    return b"".join(parts)


class _VerifiedStream(io.RawIOBase):
    """A blob response body as a raw stream, hashed as it is read and checked at EOF."""

    def __init__(
        self, client: RegistryClient, resp: requests.Response, digest: Digest, what: str
    ) -> None:
        self._client = client
        self._resp = resp
        self._digest = digest
        self._what = what
        self._hash = hashlib.new(digest.algorithm)
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._done:
            return 0
        try:
            data = self._resp.raw.read(len(buffer), decode_content=True)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise RegistryError(f"{self._what}: transfer failed ({type(exc).__name__})") from None
        if not data:
            self._done = True
            if self._hash.hexdigest() != self._digest.hex:
                raise IntegrityError(
                    f"{self._what}: the registry sent bytes that do not match the digest"
                )
            return 0
        n = len(data)
        buffer[:n] = data
        self._hash.update(data)
        with self._client._lock:
            self._client.stats.bytes_read += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._resp.close()
        super().close()
