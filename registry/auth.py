"""Registry authentication, the pure part: `WWW-Authenticate` challenges, credentials from a
docker `config.json` (given as data), token responses and a token cache keyed by
(realm, service, scope). HTTP happens in `registry.client`."""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from imagefs.errors import AuthError, ConfigError
from registry.reference import DOCKER_HUB_ALIASES

DEFAULT_TOKEN_LIFETIME_S = 60  # the distribution token spec's default for expires_in


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge of a `WWW-Authenticate` header: a scheme and its auth-params."""

    scheme: str  # lower-cased: "basic", "bearer", ...
    params: Mapping[str, str] = field(default_factory=dict)  # keys lower-cased

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scope(self) -> str | None:
        return self.params.get("scope")


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True, slots=True)
class Token:
    value: str = field(repr=False)
    expires_at: float

    def header(self) -> str:
        return f"Bearer {self.value}"


TokenKey = tuple[str, str, str]  # (realm, service, scope)


# ------------------------------------------------------------------ WWW-Authenticate parsing

_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def skip_ws_commas(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t,":
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def token(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _TOKEN_CHARS:
            self.pos += 1
        return self.text[start : self.pos]

    def bare(self) -> str:
        """An unquoted value; lenient: anything up to a comma or whitespace (servers send
        unquoted URLs although RFC 7235 wants them quoted)."""
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in " \t,":
            self.pos += 1
        return self.text[start : self.pos]

    def quoted(self) -> str:
        # at the opening quote
        self.pos += 1
        out = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == "\\" and self.pos + 1 < len(self.text):
                out.append(self.text[self.pos + 1])
                self.pos += 2
                continue
            self.pos += 1
            if ch == '"':
                return "".join(out)
            out.append(ch)
        raise ValueError("unterminated quoted string")


def parse_challenges(header: str) -> tuple[Challenge, ...]:
    """Parse a `WWW-Authenticate` value (RFC 7235): one or more challenges, each a scheme
    followed by comma-separated `key=token` or `key="quoted, string"` params.

    Malformed input yields the challenges parsed before the fault (never raises)."""
    s = _Scanner(header)
    out: list[Challenge] = []
    s.skip_ws_commas()
    while s.pos < len(s.text):
        scheme = s.token()
        if not scheme:  # stray character (e.g. a token68's `=` padding): skip it
            s.pos += 1
            s.skip_ws_commas()
            continue
        params: dict[str, str] = {}
        s.skip_ws()
        try:
            while s.pos < len(s.text):
                mark = s.pos
                s.skip_ws_commas()
                key = s.token()
                s.skip_ws()
                if not key or s.peek() != "=":
                    s.pos = mark  # the next challenge's scheme (or token68) starts here
                    break
                s.pos += 1
                s.skip_ws()
                value = s.quoted() if s.peek() == '"' else s.bare()
                params[key.lower()] = value
                s.skip_ws()
                if s.peek() not in (",", ""):
                    break
        except ValueError:
            out.append(Challenge(scheme.lower(), params))
            return tuple(out)
        out.append(Challenge(scheme.lower(), params))
        s.skip_ws_commas()
    return tuple(out)


def pick_challenge(challenges: tuple[Challenge, ...]) -> Challenge | None:
    """Bearer over Basic; other schemes are not supported."""
    for scheme in ("bearer", "basic"):
        for c in challenges:
            if c.scheme == scheme:
                return c
    return None


def repository_scope(repository: str, actions: tuple[str, ...]) -> str:
    return f"repository:{repository}:{','.join(actions)}"


def token_params(challenge: Challenge, scope: str) -> dict[str, str]:
    """Query parameters for the token endpoint (the challenge's own scope wins)."""
    params = {}
    if challenge.service:
        params["service"] = challenge.service
    params["scope"] = challenge.scope or scope
    return params


def parse_token_response(data: bytes, now: float, registry: str) -> Token:
    """The token endpoint's JSON: `token` (or OAuth2 `access_token`) and `expires_in`."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        doc = None
    if not isinstance(doc, dict):
        raise AuthError(f"the token service of {registry} answered with something not JSON")
    value = doc.get("token") or doc.get("access_token")
    if not isinstance(value, str) or not value:
        raise AuthError(f"the token service of {registry} answered without a token")
    expires_in = doc.get("expires_in")
    if not isinstance(expires_in, int) or isinstance(expires_in, bool) or expires_in <= 0:
        expires_in = DEFAULT_TOKEN_LIFETIME_S
    return Token(value, now + expires_in)


class TokenCache:
    """Bearer tokens by (realm, service, scope); an entry is dropped a little before expiry."""

    def __init__(self, margin_s: float = 10.0) -> None:
        self._tokens: dict[TokenKey, Token] = {}
        self._lock = threading.Lock()
        self.margin_s = margin_s

    def get(self, key: TokenKey, now: float) -> Token | None:
        with self._lock:
            token = self._tokens.get(key)
            if token is None:
                return None
            if token.expires_at - self.margin_s <= now:
                del self._tokens[key]
                return None
            return token

    def put(self, key: TokenKey, token: Token) -> None:
        with self._lock:
            self._tokens[key] = token

    def discard(self, key: TokenKey) -> None:
        with self._lock:
            self._tokens.pop(key, None)

    def __len__(self) -> int:
        return len(self._tokens)


# ------------------------------------------------------------------ docker config.json


def _config_key_host(key: str) -> str:
    """`https://index.docker.io/v1/` -> `index.docker.io`; `host:5000` -> `host:5000`."""
    if "://" in key:
        return urlsplit(key).netloc
    return key.split("/", 1)[0]


def credentials_from_docker_config(config: Mapping[str, Any], registry: str) -> Credentials | None:
    """Credentials for `registry` (host[:port]) from a parsed docker `config.json`:
    `auths.<key>.auth` (base64 `user:password`) or `username`/`password`.

    Docker Hub's entry is keyed `https://index.docker.io/v1/`. Entries naming only a
    credential helper (`credsStore`, `credHelpers`) are not read here."""
    auths = config.get("auths")
    if not isinstance(auths, Mapping):
        return None
    wanted = {registry} | (set(DOCKER_HUB_ALIASES) if registry in DOCKER_HUB_ALIASES else set())
    for key, entry in auths.items():
        if not isinstance(key, str) or _config_key_host(key) not in wanted:
            continue
        if not isinstance(entry, Mapping):
            raise ConfigError(f"docker config: auths entry for {registry} is not an object")
        encoded = entry.get("auth")
        if isinstance(encoded, str) and encoded:
            try:
                decoded = base64.b64decode(encoded, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise ConfigError(
                    f"docker config: the auth entry for {registry} is not base64 of user:password"
                ) from None
            user, sep, password = decoded.partition(":")
            if not sep or not user:
                raise ConfigError(
                    f"docker config: the auth entry for {registry} is not base64 of user:password"
                )
            return Credentials(user, password)
        name, secret = entry.get("username"), entry.get("password")
        if isinstance(name, str) and name and isinstance(secret, str):
            return Credentials(name, secret)
    return None
