"""Where registry credentials come from, in docker's order: explicit `--creds`; the docker
config's `credHelpers` entry for the registry (a `docker-credential-NAME` program); an
inline `auths` entry; the config's `credsStore` program. The pure parts (`parse_creds`,
`helper_for`, `parse_helper_output`) are separate from running the program."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imagefs.errors import ConfigError, UsageError
from registry.auth import Credentials, credentials_from_docker_config
from registry.reference import DOCKER_HUB_ALIASES

log = logging.getLogger(__name__)
HELPER_TIMEOUT_S = 30.0
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"  # the key docker uses for Docker Hub


def parse_creds(text: str) -> Credentials:
    """`USER:PASSWORD` as given to `--creds` (the password may contain colons)."""
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise UsageError("credentials must be given as USER:PASSWORD")
    return Credentials(user, password)


def server_url(registry: str) -> str:
    return DOCKER_HUB_SERVER if registry in DOCKER_HUB_ALIASES else registry


def helper_for(config: Mapping[str, Any], registry: str) -> tuple[str | None, bool]:
    """The credential helper name for `registry`, and whether it is the per-registry
    `credHelpers` entry (True) or the catch-all `credsStore` (False)."""
    helpers = config.get("credHelpers")
    if isinstance(helpers, Mapping):
        for key in (registry, server_url(registry)):
            name = helpers.get(key)
            if isinstance(name, str) and name:
                return name, True
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        return store, False
    return None, False


def parse_helper_output(data: bytes, helper: str) -> Credentials:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        doc = None
    if not isinstance(doc, dict):
        raise ConfigError(f"credential helper docker-credential-{helper} printed no JSON")
    user, secret = doc.get("Username"), doc.get("Secret")
    if not isinstance(user, str) or not isinstance(secret, str) or not user:
        raise ConfigError(
            f"credential helper docker-credential-{helper} gave no Username and Secret"
        )
    if user == "<token>":
        raise ConfigError(
            f"credential helper docker-credential-{helper} gave an identity token, which "
            "imagefs does not support; use a username and password or --creds"
        )
    return Credentials(user, secret)


def run_helper(helper: str, registry: str) -> Credentials | None:
    """`docker-credential-NAME get` for `registry`: its credentials, or None when it has
    none for this registry."""
    program = shutil.which(f"docker-credential-{helper}")
    if program is None:
        raise ConfigError(
            f"the docker config names credential helper {helper!r}, but "
            f"docker-credential-{helper} is not on PATH"
        )
    try:
        proc = subprocess.run(
            [program, "get"],
            input=server_url(registry).encode(),
            capture_output=True,
            timeout=HELPER_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(
            f"credential helper docker-credential-{helper} did not answer within "
            f"{HELPER_TIMEOUT_S:.0f}s"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot run credential helper docker-credential-{helper}: {exc.strerror}"
        ) from None
    if proc.returncode != 0:
        if b"credentials not found" in proc.stdout.lower() + proc.stderr.lower():
            return None
        raise ConfigError(
            f"credential helper docker-credential-{helper} failed (exit {proc.returncode})"
        )
    return parse_helper_output(proc.stdout, helper)


def unsafe_permissions(mode: int) -> bool:
    """A credentials file others may read (group or world bits set)."""
    return bool(mode & 0o077)


def load_docker_config(path: str) -> Mapping[str, Any]:
    """The parsed docker config.json, or {} when there is none. A config holding inline
    credentials that other users can read is used, with a warning (docker writes 0600)."""
    if not path:
        return {}
    try:
        mode = os.stat(path).st_mode
        doc = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"docker config {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"docker config {path} is not a JSON object")
    if unsafe_permissions(mode) and isinstance(doc.get("auths"), dict) and doc["auths"]:
        log.warning(
            "docker config %s holds credentials and is readable by other users (mode %o); "
            "chmod 600 it",
            path,
            mode & 0o777,
        )
    return doc


def resolve_credentials(
    registry: str, docker_config: str, explicit: Credentials | None = None
) -> Credentials | None:
    """Credentials for `registry` (host[:port]) in docker's order of precedence."""
    if explicit is not None:
        return explicit
    config = load_docker_config(docker_config)
    helper, specific = helper_for(config, registry)
    if helper is not None and specific:
        return run_helper(helper, registry)
    inline = credentials_from_docker_config(config, registry)
    if inline is not None:
        return inline
    if helper is not None:
        return run_helper(helper, registry)
    return None
