"""config.load: defaults < TOML file < IMAGEFS_* environment < overrides; invalid values."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagefs.config import KIB, MIB, Config, load
from imagefs.errors import ConfigError


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_with_an_empty_file(tmp_path: Path) -> None:
    cfg = load(file=toml(tmp_path, ""), environ={})
    assert cfg == Config()
    assert cfg.avg_chunk_bytes == 64 * KIB and cfg.zstd_level == 3


def test_precedence_defaults_file_environment_overrides(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        'zstd_level = 5\nmemory_cache_bytes = "2MiB"\ncoalesce_gap_bytes = 1000\n'
        'cache_dir = "/from/file"\n',
    )
    env = {"IMAGEFS_ZSTD_LEVEL": "7", "IMAGEFS_COALESCE_GAP_BYTES": "2000", "UNRELATED": "x"}
    cfg = load(file=path, environ=env, overrides={"zstd_level": 9, "mount_timeout_s": None})
    assert cfg.zstd_level == 9  # override beats env beats file
    assert cfg.coalesce_gap_bytes == 2000  # env beats file
    assert cfg.memory_cache_bytes == 2 * MIB  # file beats default
    assert cfg.cache_dir == Path("/from/file")
    assert cfg.mount_timeout_s == Config().mount_timeout_s  # None override: not set
    assert cfg.max_read_bytes == Config().max_read_bytes  # untouched default


def test_config_file_named_by_the_environment(tmp_path: Path) -> None:
    path = toml(tmp_path, "convert_threads = 3\n")
    assert load(environ={"IMAGEFS_CONFIG": str(path)}).convert_threads == 3
    with pytest.raises(ConfigError, match="does not exist"):
        load(environ={"IMAGEFS_CONFIG": str(tmp_path / "missing.toml")})


@pytest.mark.parametrize(
    ("text", "value"),
    [("64KiB", 64 * KIB), ("64k", 64 * KIB), ("2MiB", 2 * MIB), ("1g", 1024 * MIB), ("512", 512)],
)
def test_size_strings(tmp_path: Path, text: str, value: int) -> None:
    cfg = load(file=toml(tmp_path, ""), environ={"IMAGEFS_MAX_READ_BYTES": text})
    assert cfg.max_read_bytes == value


def test_floats_and_paths_from_the_environment(tmp_path: Path) -> None:
    cfg = load(
        file=toml(tmp_path, ""),
        environ={"IMAGEFS_ENTRY_TIMEOUT_S": "1.5", "IMAGEFS_RUN_DIR": "/tmp/run"},
    )
    assert cfg.entry_timeout_s == 1.5
    assert cfg.run_dir == Path("/tmp/run")


@pytest.mark.parametrize(
    ("file_text", "environ", "overrides", "message"),
    [
        ("", {"IMAGEFS_MAX_READ_BYTES": "12XB"}, {}, "IMAGEFS_MAX_READ_BYTES"),
        ("", {"IMAGEFS_MAX_READ_BYTES": "1.5MiB"}, {}, "invalid value"),
        ("", {"IMAGEFS_ENTRY_TIMEOUT_S": "soon"}, {}, "invalid value"),
        ("zstd_level = 0\n", {}, {}, "zstd_level"),
        ("zstd_level = true\n", {}, {}, "invalid value"),
        ("no_such_setting = 1\n", {}, {}, "unknown setting"),
        ("zstd_level = [\n", {}, {}, "config file"),
        ("", {}, {"no_such": 1}, "unknown setting"),
        ("", {}, {"min_chunk_bytes": 1 << 20, "avg_chunk_bytes": 1024}, "chunk sizes"),
        ("", {}, {"max_chunk_bytes": 32 * MIB}, "16 MiB"),
        ("", {}, {"compress_min_saving": 1.0}, "compress_min_saving"),
        ("", {"IMAGEFS_CACHE_MAX_BYTES": "-1"}, {}, "negative"),
        ("cache_dir = 5\n", {}, {}, "invalid value"),
    ],
)
def test_invalid_values_are_config_errors(
    tmp_path: Path,
    file_text: str,
    environ: dict[str, str],
    overrides: dict[str, object],
    message: str,
) -> None:
    with pytest.raises(ConfigError, match=message):
        load(file=toml(tmp_path, file_text), environ=environ, overrides=overrides)


def test_replace_keeps_other_values(tmp_path: Path) -> None:
    base = load(file=toml(tmp_path, "zstd_level = 4\n"), environ={})
    changed = base.replace(coalesce_max_bytes="1MiB")
    assert changed.coalesce_max_bytes == MIB
    assert changed.zstd_level == 4
    with pytest.raises(ConfigError):
        base.replace(zstd_level=99)
