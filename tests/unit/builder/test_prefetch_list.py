"""`convert(..., prefetch_paths=...)`: paths resolve against the merged tree into the
bootstrap's prefetch section; a missing path or a non-file is a UsageError, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.convert import convert
from imagefs.config import Config
from imagefs.errors import UsageError
from imagefs.image import open_image, open_store
from imagefs.pathlist import parse_path_list
from tests.support.layers import LayerBuilder
from tests.support.oci import write_oci_layout


def _source(tmp_path: Path) -> str:
    lower = LayerBuilder().dir("app").file("app/a.bin", b"a" * 5000).file("app/gone", b"x")
    upper = (
        LayerBuilder()
        .file("app/b.bin", b"b" * 7000)
        .whiteout("app/gone")
        .hardlink("app/link", "app/a.bin")
    )
    write_oci_layout(tmp_path / "src", [lower.blob(), upper.blob()], tag="t")
    return f"oci:{tmp_path / 'src'}:t"


def test_convert_stores_prefetch_list_in_order(tmp_path: Path) -> None:
    target = f"oci:{tmp_path / 'out'}"
    convert(
        _source(tmp_path),
        target,
        Config(),
        prefetch_paths=["/app/b.bin", "/app/a.bin", "/app/link", "//app/./b.bin"],
    )
    opened = open_image(open_store(target), Config())
    view = opened.view
    a, b = view.resolve(b"/app/a.bin") - 1, view.resolve(b"/app/b.bin") - 1
    assert opened.bootstrap.prefetch == (b, a)  # hard link and duplicate dropped


def test_convert_without_prefetch_list_has_none(tmp_path: Path) -> None:
    target = f"oci:{tmp_path / 'out'}"
    convert(_source(tmp_path), target, Config())
    assert open_image(open_store(target), Config()).bootstrap.prefetch == ()


@pytest.mark.parametrize(
    ("path", "message"),
    [("/app/gone", "not in the image"), ("/nope/x", "not in the image"), ("/app", "regular")],
)
def test_bad_prefetch_path_is_usage_error_and_writes_nothing(
    tmp_path: Path, path: str, message: str
) -> None:
    source = _source(tmp_path)
    with pytest.raises(UsageError, match=message) as info:
        convert(source, f"oci:{tmp_path / 'out'}", Config(), prefetch_paths=[path])
    assert path in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_parse_path_list_skips_comments_and_blanks() -> None:
    text = "# header\n/a/b\n\n  /c d  \n#/skipped\n/e\n"
    assert parse_path_list(text) == ["/a/b", "/c d", "/e"]
