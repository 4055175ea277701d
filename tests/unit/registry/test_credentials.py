"""Where credentials come from: --creds, credHelpers, inline auths, credsStore (docker's
order), and the credential-helper protocol (a real program in tmp_path)."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from imagefs.errors import ConfigError, UsageError
from registry.auth import Credentials
from registry.credentials import (
    helper_for,
    parse_creds,
    parse_helper_output,
    resolve_credentials,
    server_url,
)


def test_parse_creds_keeps_colons_in_the_password() -> None:
    assert parse_creds("bob:pa:ss") == Credentials("bob", "pa:ss")
    for bad in ("bob", ":pw", ""):
        with pytest.raises(UsageError):
            parse_creds(bad)


def test_credentials_never_show_in_repr() -> None:
    assert "hunter2" not in repr(parse_creds("bob:hunter2"))


def test_helper_for_prefers_the_registry_entry() -> None:
    config = {"credHelpers": {"reg:5000": "pass"}, "credsStore": "desktop"}
    assert helper_for(config, "reg:5000") == ("pass", True)
    assert helper_for(config, "other") == ("desktop", False)
    assert helper_for({}, "reg:5000") == (None, False)
    hub = {"credHelpers": {"https://index.docker.io/v1/": "hub"}}
    assert helper_for(hub, "registry-1.docker.io") == ("hub", True)
    assert server_url("registry-1.docker.io") == "https://index.docker.io/v1/"


def test_parse_helper_output() -> None:
    out = json.dumps({"ServerURL": "r", "Username": "u", "Secret": "s"}).encode()
    assert parse_helper_output(out, "x") == Credentials("u", "s")
    for bad in (b"nope", b"{}", json.dumps({"Username": "<token>", "Secret": "t"}).encode()):
        with pytest.raises(ConfigError):
            parse_helper_output(bad, "x")


def _helper(tmp_path: Path, name: str, script: str) -> None:
    path = tmp_path / "bin" / f"docker-credential-{name}"
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _config(tmp_path: Path, doc: object) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.fixture
def helpers_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    # `get` reads the server URL on stdin; only reg:5000 has credentials
    _helper(
        tmp_path,
        "test",
        'read url; echo "$url" >> "$(dirname "$0")/asked"\n'
        'if [ "$url" = "reg:5000" ]; then\n'
        '  echo \'{"ServerURL":"reg:5000","Username":"helped","Secret":"s3"}\'\n'
        "else echo 'credentials not found in native keychain'; exit 1; fi\n",
    )
    _helper(tmp_path, "broken", "exit 3\n")
    return tmp_path / "bin"


def test_resolve_in_docker_order(tmp_path: Path, helpers_on_path: Path) -> None:
    inline = base64.b64encode(b"inline:pw").decode()
    config = _config(
        tmp_path,
        {
            "auths": {"reg:5000": {"auth": inline}, "plain:1": {"auth": inline}},
            "credHelpers": {"reg:5000": "test"},
            "credsStore": "test",
        },
    )
    explicit = Credentials("me", "x")
    assert resolve_credentials("reg:5000", config, explicit) == explicit
    assert resolve_credentials("reg:5000", config) == Credentials("helped", "s3")
    assert resolve_credentials("plain:1", config) == Credentials("inline", "pw")
    assert resolve_credentials("other:2", config) is None  # credsStore has none for it
    assert (helpers_on_path / "asked").read_text().split() == ["reg:5000", "other:2"]
    assert resolve_credentials("reg:5000", str(tmp_path / "missing.json")) is None


def test_helper_failures_are_config_errors(tmp_path: Path, helpers_on_path: Path) -> None:
    with pytest.raises(ConfigError, match="docker-credential-broken failed"):
        resolve_credentials("r:1", _config(tmp_path, {"credHelpers": {"r:1": "broken"}}))
    with pytest.raises(ConfigError, match="not on PATH"):
        resolve_credentials("r:1", _config(tmp_path, {"credsStore": "absent"}))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="docker config"):
        resolve_credentials("r:1", str(bad))
