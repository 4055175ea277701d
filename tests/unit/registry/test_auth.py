from __future__ import annotations

import base64

import pytest

from imagefs.errors import AuthError, ConfigError
from registry.auth import (
    Challenge,
    Credentials,
    Token,
    TokenCache,
    credentials_from_docker_config,
    parse_challenges,
    parse_token_response,
    pick_challenge,
    repository_scope,
    token_params,
)


def test_bearer_challenge_with_quoted_commas() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/ubuntu:pull,push"'
    )
    (c,) = parse_challenges(header)
    assert c.scheme == "bearer"
    assert c.realm == "https://auth.docker.io/token"
    assert c.service == "registry.docker.io"
    assert c.scope == "repository:library/ubuntu:pull,push"


def test_basic_challenge_and_case() -> None:
    (c,) = parse_challenges('BASIC Realm="imagefs test"')
    assert c == Challenge("basic", {"realm": "imagefs test"})


def test_several_challenges_in_one_header() -> None:
    cs = parse_challenges('Basic realm="a, b", Bearer realm=https://t/x , service=y')
    assert [c.scheme for c in cs] == ["basic", "bearer"]
    assert cs[0].realm == "a, b"
    assert cs[1].params == {"realm": "https://t/x", "service": "y"}
    assert pick_challenge(cs) == cs[1]


def test_escapes_token68_and_garbage() -> None:
    cs = parse_challenges(r'Negotiate abc==, Basic realm="say \"hi\""')
    assert cs[-1] == Challenge("basic", {"realm": 'say "hi"'})
    assert parse_challenges("") == ()
    assert parse_challenges('Bearer realm="unterminated') == (Challenge("bearer", {}),)
    assert pick_challenge(parse_challenges("Digest realm=x")) is None


def test_token_params_prefer_the_challenge_scope() -> None:
    c = Challenge("bearer", {"realm": "r", "service": "s", "scope": "repository:x:pull"})
    assert token_params(c, "repository:y:pull") == {"service": "s", "scope": "repository:x:pull"}
    assert token_params(Challenge("bearer", {"realm": "r"}), "repository:y:pull") == {
        "scope": "repository:y:pull"
    }
    assert repository_scope("a/b", ("pull", "push")) == "repository:a/b:pull,push"


def test_token_response() -> None:
    t = parse_token_response(b'{"token":"abc","expires_in":300}', 1000.0, "r")
    assert t == Token("abc", 1300.0) and t.header() == "Bearer abc"
    assert parse_token_response(b'{"access_token":"z"}', 0.0, "r").expires_at == 60.0
    for bad in (b"nope", b"[]", b'{"token":""}'):
        with pytest.raises(AuthError):
            parse_token_response(bad, 0.0, "r")


def test_token_cache_expiry() -> None:
    cache = TokenCache(margin_s=10)
    key = ("realm", "svc", "repository:a:pull")
    cache.put(key, Token("t", 100.0))
    assert cache.get(key, 50.0) == Token("t", 100.0)
    assert cache.get(("realm", "svc", "repository:b:pull"), 50.0) is None
    assert cache.get(key, 95.0) is None  # within the margin: treated as expired
    assert len(cache) == 0


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def test_docker_config_credentials() -> None:
    config = {
        "auths": {
            "https://index.docker.io/v1/": {"auth": _b64("hub:pw:with:colons")},
            "localhost:5000": {"username": "u", "password": "p"},
            "https://ghcr.io": {"auth": _b64("g:h")},
        }
    }
    assert credentials_from_docker_config(config, "registry-1.docker.io") == Credentials(
        "hub", "pw:with:colons"
    )
    assert credentials_from_docker_config(config, "localhost:5000") == Credentials("u", "p")
    assert credentials_from_docker_config(config, "ghcr.io") == Credentials("g", "h")
    assert credentials_from_docker_config(config, "quay.io") is None
    assert credentials_from_docker_config({}, "quay.io") is None
    assert credentials_from_docker_config({"auths": {"quay.io": {}}}, "quay.io") is None
    with pytest.raises(ConfigError):
        credentials_from_docker_config({"auths": {"q.io": {"auth": "!!"}}}, "q.io")
    with pytest.raises(ConfigError):
        credentials_from_docker_config({"auths": {"q.io": {"auth": _b64("nocolon")}}}, "q.io")


def test_credentials_never_in_repr() -> None:
    c = Credentials("user", "hunter2")
    assert "hunter2" not in repr(c)
    assert "hunter2" not in repr(Token("hunter2", 0.0))
    assert c.basic_header() == "Basic " + _b64("user:hunter2")
