"""Path-list files: one absolute image path per line (UTF-8), `#` comments and blank lines
ignored. Used by `convert --prefetch-list` (read) and `mount --record-access` (written)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from imagefs.errors import UsageError


def parse_path_list(text: str) -> list[str]:
    """The paths of a path-list file's text, in order."""
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            out.append(stripped)
    return out


def read_path_list(path: Path) -> list[str]:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read path list {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"path list {path} is not UTF-8") from None
    return parse_path_list(text)


def write_path_list(path: Path, paths: Iterable[str]) -> None:
    """Write `paths` to `path` atomically (temp file in the same directory, then rename)."""
    data = "".join(p + "\n" for p in paths).encode("utf-8", "surrogateescape")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
