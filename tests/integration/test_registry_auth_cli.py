"""Every way of authenticating to a registry, through the real CLI: convert a small image into
a real `docker-registry` and read it back (inspect, mount) with anonymous access, htpasswd
Basic from a docker config `auths` entry, a Bearer token service with flags or environment
variables, and a `docker-credential-*` helper named by `credHelpers` or `credsStore`. Failures
are one line, exit 10 (auth) or 5 (not found), name the reference and never echo a password."""

from __future__ import annotations

import base64
import json
import os
import random
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Env, Mount, Mounter
from tests.integration.registry_fixture import (
    RunningRegistry,
    TokenServer,
    run_registry,
    run_token_server,
)
from tests.support.layers import LayerBuilder
from tests.support.oci import write_oci_layout

USER = "alice"
PASSWORD = "Good-Pw-5e1f9a"
WRONG = "Wr0ngPw-d41c8e7b"  # distinctive: must never show up in any output
USERS = {USER: PASSWORD}
HELPER = "imagefstest"

CONTENT = {
    "etc/hello.txt": b"hello from the registry\n",
    "data/rand.bin": random.Random(7).randbytes(200 * 1024),
    "data/text.txt": b"line of text\n" * 3000,
}


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("auth-src")
    layer = LayerBuilder().dirs("etc", "data")
    for path, data in CONTENT.items():
        layer.file(path, data)
    write_oci_layout(root / "layout", [layer.blob()], tag="t")
    return f"oci:{root / 'layout'}:t"


@pytest.fixture(scope="module")
def plain_registry() -> Iterator[RunningRegistry]:
    with run_registry() as reg:
        yield reg


@pytest.fixture(scope="module")
def basic_registry() -> Iterator[RunningRegistry]:
    with run_registry(USERS) as reg:
        yield reg


@pytest.fixture(scope="module")
def token_server() -> Iterator[TokenServer]:
    with run_token_server(USERS) as tok:
        yield tok


@pytest.fixture(scope="module")
def token_registry(token_server: TokenServer) -> Iterator[RunningRegistry]:
    with run_registry(token=token_server) as reg:
        yield reg


@pytest.fixture
def env(imagefs_env: Env, tmp_path: Path) -> Env:
    """The CLI environment with no docker config unless a test writes one."""
    imagefs_env.extra["IMAGEFS_DOCKER_CONFIG"] = str(tmp_path / "no-docker-config.json")
    for name in ("IMAGEFS_CREDS", "IMAGEFS_SRC_CREDS", "IMAGEFS_DEST_CREDS"):
        assert name not in os.environ, f"{name} is set in the test environment"
    return imagefs_env


@dataclass(frozen=True)
class Helper:
    """A `docker-credential-imagefstest` program on PATH that logs every call."""

    bin_dir: Path
    log: Path

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def _write_helper(tmp: Path, answers: dict[str, tuple[str, str]]) -> Helper:
    """A credential helper answering `get` for the registries in `answers` and saying
    "credentials not found" (exit 1) for any other."""
    bin_dir = tmp / "helper-bin"
    bin_dir.mkdir()
    log = tmp / "helper-calls.jsonl"
    program = bin_dir / f"docker-credential-{HELPER}"
    program.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"ANSWERS = {answers!r}\n"
        "action = sys.argv[1] if len(sys.argv) > 1 else ''\n"
        "server = sys.stdin.read().strip()\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(json.dumps([action, server]) + '\\n')\n"
        "if action == 'get' and server in ANSWERS:\n"
        "    user, secret = ANSWERS[server]\n"
        "    print(json.dumps({'ServerURL': server, 'Username': user, 'Secret': secret}))\n"
        "    sys.exit(0)\n"
        "print('credentials not found in native keychain')\n"
        "sys.exit(1)\n"
    )
    program.chmod(program.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return Helper(bin_dir, log)


def _use_helper(env: Env, helper: Helper) -> None:
    env.extra["PATH"] = f"{helper.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


def _write_docker_config(env: Env, tmp: Path, doc: dict[str, object]) -> Path:
    path = tmp / "docker" / "config.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(doc))
    env.extra["IMAGEFS_DOCKER_CONFIG"] = str(path)
    return path


def _auth_entry(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


# ------------------------------------------------------------------ helpers


def _one_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("imagefs: "), lines[0]
    return lines[0]


def _convert(env: Env, source: str, target: str, *args: str) -> str:
    res = env.run("convert", source, target, *args, "--json")
    data = json.loads(res.stdout)
    assert data["target"] == target.removeprefix("docker://")
    digest: str = data["manifest_digest"]
    assert digest.startswith("sha256:")
    return digest


def _inspect_digest(env: Env, ref: str, *args: str) -> str:
    digest: str = env.json("inspect", ref, *args)["manifest_digest"]
    return digest


def _read_back(mount_image: Mounter, ref: str, name: str, *args: str) -> Mount:
    m = mount_image(ref, name, *args)
    for path, data in CONTENT.items():
        assert (m.path / path).read_bytes() == data, path
    return m


def _mount_expecting_failure(
    mount_image: Mounter, ref: str, name: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run `imagefs mount` that should fail; a mount that comes up anyway is handed to the
    fixture so that it is always unmounted."""
    path = mount_image.tmp / name
    path.mkdir(parents=True, exist_ok=True)
    res = mount_image.env.run("mount", ref, str(path), *args, check=False)
    if res.returncode == 0:
        pid = int(res.stderr.rsplit("pid ", 1)[1].split(")")[0])
        mount_image.mounts.append(Mount(mount_image.env, ref, path, pid))
    return res


def _granted(issued: list[str], repository: str, actions: set[str]) -> bool:
    """Whether one of the `issued` token scopes is exactly `actions` on `repository` (the
    registry's challenge lists the actions in no fixed order)."""
    prefix = f"repository:{repository}:"
    return any(
        set(scope.removeprefix(prefix).split(",")) == actions
        for scope in issued
        if scope.startswith(prefix)
    )


def _no_secret_anywhere(env: Env, secret: str, *results: subprocess.CompletedProcess[str]) -> None:
    """Not in any command's output, nor in the mount processes' logs (in the run dir)."""
    for res in results:
        assert secret not in res.stdout and secret not in res.stderr, res.args
    logs = [p for p in (env.root / "run").rglob("*.log") if p.is_file()]
    assert logs, "no mount log was written"
    for path in logs:
        assert secret.encode() not in path.read_bytes(), path


# ------------------------------------------------------------------ success, per auth mode


def test_anonymous_registry_round_trip(
    env: Env, mount_image: Mounter, source: str, plain_registry: RunningRegistry
) -> None:
    ref = f"docker://{plain_registry.host}/auth/anon:v1"
    digest = _convert(env, source, ref)
    assert _inspect_digest(env, ref) == digest
    assert _inspect_digest(env, f"{plain_registry.host}/auth/anon@{digest}") == digest
    m = _read_back(mount_image, ref, "anon")
    assert m.stats()["manifest_digest"] == digest
    assert plain_registry.requests("PUT", "/v2/auth/anon/manifests/v1") == 1


@pytest.mark.parametrize("how", ["DOCKER_CONFIG", "IMAGEFS_DOCKER_CONFIG"])
def test_basic_auth_from_docker_config_auths(
    env: Env,
    mount_image: Mounter,
    source: str,
    basic_registry: RunningRegistry,
    tmp_path: Path,
    how: str,
) -> None:
    path = _write_docker_config(
        env, tmp_path, {"auths": {basic_registry.host: _auth_entry(USER, PASSWORD)}}
    )
    if how == "DOCKER_CONFIG":  # the directory holding config.json, as docker reads it
        env.extra["IMAGEFS_DOCKER_CONFIG"] = ""
        env.extra["DOCKER_CONFIG"] = str(path.parent)
    repo = f"auth/basic-{how.lower()}"
    ref = f"{basic_registry.host}/{repo}:v1"
    digest = _convert(env, source, ref)
    assert _inspect_digest(env, ref) == digest
    _read_back(mount_image, ref, "basic")
    assert any(
        'msg="authorized request"' in ln and f"uri=/v2/{repo}/manifests/v1 " in ln
        for ln in basic_registry.log.splitlines()
        if "http.request.method=PUT " in ln
    )
    assert basic_registry.requests("PUT", f"/v2/{repo}/manifests/v1") == 1


def test_bearer_token_with_flags(
    env: Env,
    mount_image: Mounter,
    source: str,
    token_registry: RunningRegistry,
    token_server: TokenServer,
) -> None:
    ref = f"{token_registry.host}/auth/tok-flags:v1"
    creds = f"{USER}:{PASSWORD}"
    digest = _convert(env, source, ref, "--dest-creds", creds)
    assert _granted(token_server.issued, "auth/tok-flags", {"pull", "push"})
    before = len(token_server.issued)
    assert _inspect_digest(env, ref, "--creds", creds) == digest
    assert _granted(token_server.issued[before:], "auth/tok-flags", {"pull"})
    m = _read_back(mount_image, ref, "tok", "--creds", creds)
    assert m.stats()["manifest_digest"] == digest


def test_mount_process_does_not_show_the_password(
    env: Env, mount_image: Mounter, source: str, token_registry: RunningRegistry
) -> None:
    """`ps` shows a mount process for as long as the mount lives: `--creds` must not be in
    its command line (the short-lived `imagefs mount` that the user ran is another matter)."""
    ref = f"{token_registry.host}/auth/tok-ps:v1"
    creds = f"{USER}:{PASSWORD}"
    _convert(env, source, ref, "--dest-creds", creds)
    m = _read_back(mount_image, ref, "tok-ps", "--creds", creds)
    with open(f"/proc/{m.pid}/cmdline", "rb") as f:
        cmdline = f.read()
    assert PASSWORD.encode() not in cmdline, cmdline.replace(b"\0", b" ").decode()


def test_bearer_token_with_environment_credentials(
    env: Env,
    mount_image: Mounter,
    source: str,
    token_registry: RunningRegistry,
    plain_registry: RunningRegistry,
) -> None:
    ref = f"{token_registry.host}/auth/tok-env:v1"
    env.extra["IMAGEFS_DEST_CREDS"] = f"{USER}:{PASSWORD}"
    digest = _convert(env, source, ref)
    del env.extra["IMAGEFS_DEST_CREDS"]

    denied = env.run("inspect", ref, "--json", check=False)
    assert denied.returncode == 10, denied.stderr

    env.extra["IMAGEFS_CREDS"] = f"{USER}:{PASSWORD}"
    assert _inspect_digest(env, ref) == digest
    _read_back(mount_image, ref, "tok-env")
    del env.extra["IMAGEFS_CREDS"]

    # a registry source with IMAGEFS_SRC_CREDS, copied to an anonymous registry
    env.extra["IMAGEFS_SRC_CREDS"] = f"{USER}:{PASSWORD}"
    copy_ref = f"{plain_registry.host}/auth/from-tok:v1"
    copied = env.json("copy", ref, copy_ref)
    del env.extra["IMAGEFS_SRC_CREDS"]
    assert copied["manifest_digest"] == digest
    assert _inspect_digest(env, copy_ref) == digest


def test_credential_helper_from_cred_helpers(
    env: Env,
    mount_image: Mounter,
    source: str,
    basic_registry: RunningRegistry,
    tmp_path: Path,
) -> None:
    host = basic_registry.host
    helper = _write_helper(tmp_path, {host: (USER, PASSWORD)})
    _use_helper(env, helper)
    # credHelpers comes before an inline auths entry (here a wrong one)
    _write_docker_config(
        env,
        tmp_path,
        {"credHelpers": {host: HELPER}, "auths": {host: _auth_entry(USER, WRONG)}},
    )
    ref = f"{host}/auth/helper:v1"
    digest = _convert(env, source, ref)
    after_convert = len(helper.calls())
    assert after_convert >= 1
    assert _inspect_digest(env, ref) == digest
    after_inspect = len(helper.calls())
    assert after_inspect > after_convert
    _read_back(mount_image, ref, "helper")
    assert len(helper.calls()) > after_inspect  # the mount process asked too
    assert all(call == ["get", host] for call in helper.calls()), helper.calls()


def test_credential_helper_from_creds_store(
    env: Env,
    mount_image: Mounter,
    source: str,
    basic_registry: RunningRegistry,
    tmp_path: Path,
) -> None:
    host = basic_registry.host
    helper = _write_helper(tmp_path, {host: (USER, PASSWORD)})
    _use_helper(env, helper)
    _write_docker_config(env, tmp_path, {"credsStore": HELPER, "auths": {}})
    ref = f"{host}/auth/store:v1"
    digest = _convert(env, source, ref)
    assert _inspect_digest(env, ref) == digest
    _read_back(mount_image, ref, "store")
    assert len(helper.calls()) >= 3  # convert, inspect, the mount process
    assert all(call == ["get", host] for call in helper.calls()), helper.calls()


def test_inline_auths_come_before_creds_store(
    env: Env, source: str, basic_registry: RunningRegistry, tmp_path: Path
) -> None:
    host = basic_registry.host
    helper = _write_helper(tmp_path, {host: (USER, WRONG)})
    _use_helper(env, helper)
    _write_docker_config(
        env, tmp_path, {"credsStore": HELPER, "auths": {host: _auth_entry(USER, PASSWORD)}}
    )
    ref = f"{host}/auth/inline-first:v1"
    digest = _convert(env, source, ref)
    assert _inspect_digest(env, ref) == digest
    assert helper.calls() == []


def test_creds_store_without_an_entry_is_anonymous(
    env: Env, source: str, basic_registry: RunningRegistry, tmp_path: Path
) -> None:
    host = basic_registry.host
    helper = _write_helper(tmp_path, {"other.example:5000": (USER, PASSWORD)})
    _use_helper(env, helper)
    _write_docker_config(env, tmp_path, {"credsStore": HELPER})
    ref = f"{host}/auth/store-none:v1"
    res = env.run("convert", source, ref, check=False)
    assert res.returncode == 10, res.stderr
    msg = _one_line(res)
    assert f"{host}/auth/store-none" in msg and f"docker login {host}" in msg
    assert helper.calls() == [["get", host]]


# ------------------------------------------------------------------ failures


def test_no_credentials_is_an_auth_error_naming_the_reference(
    env: Env, source: str, basic_registry: RunningRegistry
) -> None:
    host = basic_registry.host
    ref = f"{host}/auth/nocreds:v1"
    res = env.run("convert", source, ref, check=False)
    assert res.returncode == 10, res.stderr
    msg = _one_line(res)
    assert f"{host}/auth/nocreds" in msg and "401" in msg
    assert f"docker login {host}" in msg
    assert res.stdout == ""
    assert basic_registry.requests("PUT", "/v2/auth/nocreds/") == 0

    for command in (("inspect", ref, "--json"), ("check", ref)):
        res = env.run(*command, check=False)
        assert res.returncode == 10, (command, res.stderr)
        msg = _one_line(res)
        assert ref in msg and f"docker login {host}" in msg, msg


def test_mount_without_credentials_fails_naming_the_reference(
    env: Env, mount_image: Mounter, basic_registry: RunningRegistry
) -> None:
    ref = f"{basic_registry.host}/auth/nocreds-mount:v1"
    res = _mount_expecting_failure(mount_image, ref, "nocreds")
    assert res.returncode == 10, res.stderr
    msg = _one_line(res)
    assert ref in msg and f"docker login {basic_registry.host}" in msg


def test_wrong_password_is_rejected_and_never_echoed(
    env: Env,
    mount_image: Mounter,
    source: str,
    basic_registry: RunningRegistry,
    token_registry: RunningRegistry,
    tmp_path: Path,
) -> None:
    bad = f"{USER}:{WRONG}"
    failures = []
    for reg in (basic_registry, token_registry):
        ref = f"{reg.host}/auth/wrong:v1"
        res = env.run("convert", source, ref, "--dest-creds", bad, check=False)
        assert res.returncode == 10, res.stderr
        msg = _one_line(res)
        assert f"{reg.host}/auth/wrong" in msg, msg
        assert "check the username and password" in msg, msg
        failures.append(res)

        res = env.run("inspect", ref, "--creds", bad, "--json", check=False)
        assert res.returncode == 10, res.stderr
        assert ref in _one_line(res)
        failures.append(res)

        env.extra["IMAGEFS_CREDS"] = bad
        res = env.run("unpack", ref, str(tmp_path / f"unpacked-{reg.pid}"), check=False)
        del env.extra["IMAGEFS_CREDS"]
        assert res.returncode == 10, res.stderr
        failures.append(res)

        res = _mount_expecting_failure(mount_image, ref, f"wrong-{reg.pid}", "--creds", bad)
        assert res.returncode == 10, res.stderr
        assert ref in _one_line(res)
        failures.append(res)

    # a wrong password from the docker config
    _write_docker_config(env, tmp_path, {"auths": {basic_registry.host: _auth_entry(USER, WRONG)}})
    res = env.run("inspect", f"{basic_registry.host}/auth/wrong:v1", check=False)
    assert res.returncode == 10, res.stderr
    failures.append(res)

    _no_secret_anywhere(env, WRONG, *failures)
    assert basic_registry.requests("PUT", "/v2/auth/wrong/") == 0
    assert token_registry.requests("PUT", "/v2/auth/wrong/") == 0


def test_missing_tag_is_not_found_naming_the_reference(
    env: Env,
    mount_image: Mounter,
    source: str,
    plain_registry: RunningRegistry,
    tmp_path: Path,
) -> None:
    _convert(env, source, f"{plain_registry.host}/auth/missing:v1")
    ref = f"{plain_registry.host}/auth/missing:no-such-tag"
    commands = [
        ("inspect", ref, "--json"),
        ("check", ref),
        ("unpack", ref, str(tmp_path / "unpacked")),
        ("inspect", f"{plain_registry.host}/auth/no-such-repo:v1"),
    ]
    for command in commands:
        res = env.run(*command, check=False)
        assert res.returncode == 5, (command, res.stderr)
        msg = _one_line(res)
        assert command[1] in msg and "not found" in msg, msg
    assert not (tmp_path / "unpacked").exists() or not any((tmp_path / "unpacked").iterdir())

    res = _mount_expecting_failure(mount_image, ref, "missing")
    assert res.returncode == 5, res.stderr
    msg = _one_line(res)
    assert ref in msg and "not found" in msg
