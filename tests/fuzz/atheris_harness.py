"""Optional coverage-guided fuzzing with atheris (libFuzzer), not run in CI:

    .venv/bin/pip install atheris
    .venv/bin/python -m tests.fuzz.atheris_harness TARGET [libFuzzer options...]

TARGET is one of bootstrap, bootstrap-raw, blob, layer, manifest, index (see
tests/fuzz/seeds.py; layer inputs are "<media type>\\n<blob>"). The seed corpus
tests/fuzz/corpus/TARGET/ is read, and new interesting inputs are written to
/tmp/imagefs-atheris/TARGET/ (libFuzzer's first corpus directory), e.g.

    .venv/bin/python -m tests.fuzz.atheris_harness layer -max_total_time=600 -rss_limit_mb=1024

Any exception other than an ImagefsError is a crash (libFuzzer saves the input as
crash-<sha1> in the current directory, or where -artifact_prefix= says; move it into
tests/fuzz/corpus/TARGET/ once fixed)."""

from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path

from imagefs.errors import ImagefsError


def main(argv: list[str]) -> None:
    atheris = importlib.import_module("atheris")  # optional, untyped: not a dependency

    if len(argv) < 2:
        raise SystemExit(__doc__)
    target = argv[1]
    with atheris.instrument_imports():
        from tests.fuzz import seeds

    if target not in seeds.DRIVERS:
        raise SystemExit(f"unknown target {target!r}; one of {', '.join(seeds.DRIVERS)}")
    drive = seeds.DRIVERS[target]

    def one(data: bytes) -> None:
        with contextlib.suppress(ImagefsError):
            drive(data)

    work = Path("/tmp/imagefs-atheris") / target
    work.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(seeds.fresh_seeds(target)):
        (work / f"fresh-{i}").write_bytes(data)
    atheris.Setup([argv[0], *argv[2:], str(work), str(seeds.CORPUS / target)], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
