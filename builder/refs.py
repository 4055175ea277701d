"""Conversion references: `oci:PATH[:TAG]`, `docker-archive:PATH`, `dir:PATH` sources and
`oci:PATH[:TAG]` targets, parsed by one pure function each."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from imagefs.errors import UsageError

Transport = Literal["oci", "docker-archive", "dir"]
DEFAULT_TAG = "latest"
# An OCI image-layout ref name as skopeo and umoci accept it (a tag, not a path).
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_TRANSPORTS: dict[str, Transport] = {"oci": "oci", "docker-archive": "docker-archive", "dir": "dir"}
_SOURCE_FORMS = "oci:PATH[:TAG], docker-archive:PATH or dir:PATH"


@dataclass(frozen=True, slots=True)
class SourceRef:
    transport: Transport
    path: Path
    tag: str | None = None  # oci only; None: the layout's only image

    def __str__(self) -> str:
        return f"{self.transport}:{self.path}" + (f":{self.tag}" if self.tag else "")


@dataclass(frozen=True, slots=True)
class TargetRef:
    path: Path
    tag: str = DEFAULT_TAG

    def __str__(self) -> str:
        return f"oci:{self.path}:{self.tag}"


def _split_tag(body: str) -> tuple[str, str | None]:
    path, sep, tag = body.rpartition(":")
    if sep and _TAG.fullmatch(tag):
        return path, tag
    return body, None


def parse_source(text: str) -> SourceRef:
    transport, sep, body = text.partition(":")
    if not sep:
        raise UsageError(f"source {text!r} names no transport; use {_SOURCE_FORMS}")
    kind = _TRANSPORTS.get(transport)
    if kind is None:
        raise UsageError(f"unknown source transport {transport!r}; use {_SOURCE_FORMS}")
    path, tag = _split_tag(body) if kind == "oci" else (body, None)
    if not path:
        raise UsageError(f"source {text!r} has an empty path")
    return SourceRef(kind, Path(path), tag)


def parse_target(text: str) -> TargetRef:
    transport, sep, body = text.partition(":")
    if not sep or transport != "oci":
        raise UsageError(f"target {text!r} must be oci:PATH[:TAG]")
    path, tag = _split_tag(body)
    if not path:
        raise UsageError(f"target {text!r} has an empty path")
    return TargetRef(Path(path), tag or DEFAULT_TAG)
