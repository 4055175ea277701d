"""The one typed, frozen configuration and its one loader.

Precedence: defaults < TOML file < `IMAGEFS_*` environment < explicit overrides (flags).
Nothing else in imagefs reads `os.environ` for settings.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagefs.errors import ConfigError

KIB = 1024
MIB = 1024 * KIB
DEFAULT_CONFIG_FILE = Path("/etc/imagefs/config.toml")


@dataclass(frozen=True, slots=True)
class Config:
    # chunking and compression (convert)
    min_chunk_bytes: int = 16 * KIB
    avg_chunk_bytes: int = 64 * KIB
    max_chunk_bytes: int = 256 * KIB
    zstd_level: int = 3
    compress_min_saving: float = 0.05
    convert_threads: int = 0  # 0: one per CPU
    # chunk cache (mount)
    cache_dir: Path = Path("/var/lib/imagefs/cache")
    cache_max_bytes: int = 10 * 1024 * MIB
    memory_cache_bytes: int = 64 * MIB
    # mount
    run_dir: Path = Path("/run/imagefs")
    entry_timeout_s: float = 86400.0
    attr_timeout_s: float = 86400.0
    mount_timeout_s: float = 30.0
    max_read_bytes: int = 1 * MIB
    coalesce_max_bytes: int = 4 * MIB
    coalesce_gap_bytes: int = 64 * KIB
    readahead_bytes: int = 4 * MIB  # fetched in the background ahead of a sequential reader
    prefetch_entrypoint: bool = True  # no prefetch list: fetch what the entrypoint loads
    prefetch_model_headers: bool = True  # then the headers of safetensors and GGUF files
    locality_bytes: int = 0  # stored bytes after a file fetched when it is opened (0: off)
    fetch_threads: int = 4  # parallel Range requests of one read
    # registries
    registry_timeout_s: float = 30.0  # per HTTP request
    registry_retries: int = 3  # retries on connection errors, 429 and 5xx
    registry_mirrors: tuple[str, ...] = ()  # "REGISTRY=URL" ("*=URL" for all), tried first
    registry_proxy: str = ""  # http(s) proxy URL for registry traffic
    registry_ca_file: str = ""  # PEM bundle trusted for registry TLS (default: system CAs)
    plain_http_registries: tuple[str, ...] = ()  # host[:port] spoken to over plain HTTP
    docker_config: str = ""  # docker config.json for credentials ("": ~/.docker/config.json)

    def __post_init__(self) -> None:
        if not 64 <= self.min_chunk_bytes <= self.avg_chunk_bytes <= self.max_chunk_bytes:
            raise ConfigError(
                "chunk sizes must satisfy 64 <= min_chunk_bytes <= avg_chunk_bytes "
                "<= max_chunk_bytes"
            )
        if self.max_chunk_bytes > 16 * MIB or self.min_chunk_bytes > MIB:
            raise ConfigError("max_chunk_bytes must be at most 16 MiB and min at most 1 MiB")
        if not 256 <= self.avg_chunk_bytes <= 4 * MIB:
            raise ConfigError("avg_chunk_bytes must be between 256 bytes and 4 MiB")
        if not 1 <= self.zstd_level <= 22:
            raise ConfigError("zstd_level must be between 1 and 22")
        if not 0.0 <= self.compress_min_saving < 1.0:
            raise ConfigError("compress_min_saving must be in [0, 1)")
        if self.cache_max_bytes < 0 or self.memory_cache_bytes < 0:
            raise ConfigError("cache sizes must not be negative")
        if self.readahead_bytes < 0 or self.locality_bytes < 0 or not 1 <= self.fetch_threads <= 64:
            raise ConfigError("readahead_bytes must be >= 0 and fetch_threads in 1..64")
        if self.registry_timeout_s <= 0 or self.registry_retries < 0:
            raise ConfigError("registry_timeout_s must be > 0 and registry_retries >= 0")
        for mirror in self.registry_mirrors:
            host, sep, url = mirror.partition("=")
            if not sep or not host or not url.startswith(("http://", "https://")):
                raise ConfigError(
                    f"registry mirror {mirror!r} must be REGISTRY=http(s)://HOST[:PORT]"
                )

    def replace(self, **changes: Any) -> Config:
        return load(overrides=changes, base=self)


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce(name: str, value: Any, origin: str) -> Any:
    kind = type(getattr(Config(), name))
    try:
        if kind is Path:
            return Path(value).absolute()
        if kind is tuple:
            if isinstance(value, str):
                return tuple(x.strip() for x in value.split(",") if x.strip())
            if not isinstance(value, list | tuple) or not all(isinstance(x, str) for x in value):
                raise TypeError
            return tuple(value)
        if kind is bool:
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if kind is int and isinstance(value, str):
            return _parse_size(value)
        if isinstance(value, bool) or (kind is int and isinstance(value, float)):
            raise TypeError
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{origin}: invalid value {value!r} for {name}") from None


def _parse_size(text: str) -> int:
    text = text.strip()
    units = {
        "k": KIB,
        "ki": KIB,
        "kib": KIB,
        "m": MIB,
        "mi": MIB,
        "mib": MIB,
        "g": 1024 * MIB,
        "gi": 1024 * MIB,
        "gib": 1024 * MIB,
    }
    number = text.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    unit = text[len(number) :].lower()
    if unit and unit not in units:
        raise ValueError(text)
    return int(number) * units.get(unit, 1)


def load(
    *,
    file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Config | None = None,
) -> Config:
    """Build the config: defaults (or `base`) < TOML `file` < environment < overrides.

    `file` None means `IMAGEFS_CONFIG` or /etc/imagefs/config.toml when it exists.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = dataclasses.asdict(base) if base is not None else {}
    if base is None:
        path = file or (Path(env["IMAGEFS_CONFIG"]) if env.get("IMAGEFS_CONFIG") else None)
        if path is None and DEFAULT_CONFIG_FILE.is_file():
            path = DEFAULT_CONFIG_FILE
        if path is not None:
            try:
                doc = tomllib.loads(path.read_text())
            except FileNotFoundError:
                raise ConfigError(f"config file {path} does not exist") from None
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"config file {path}: {exc}") from None
            for key, value in doc.items():
                if key not in _FIELDS:
                    raise ConfigError(f"config file {path}: unknown setting {key!r}")
                values[key] = _coerce(key, value, str(path))
        for key in _FIELDS:
            env_key = "IMAGEFS_" + key.upper()
            if env_key in env:
                values[key] = _coerce(key, env[env_key], env_key)
    if not values.get("docker_config"):
        if env.get("DOCKER_CONFIG"):
            values["docker_config"] = str(Path(env["DOCKER_CONFIG"]) / "config.json")
        elif env.get("HOME"):
            values["docker_config"] = str(Path(env["HOME"]) / ".docker" / "config.json")
    for key, value in (overrides or {}).items():
        if key not in _FIELDS:
            raise ConfigError(f"unknown setting {key!r}")
        if value is not None:
            values[key] = _coerce(key, value, f"--{key.replace('_', '-')}")
    return Config(**values)
