"""Shared fixtures: the real-component requirements (fail, never skip), the `imagefs` CLI
run as a subprocess, and FUSE mounts that are always unmounted."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
TOOLS = ("umoci", "skopeo", "fusermount3", "casync", "containerd", "ctr", "runc")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)


# --------------------------------------------------------------------------- reliability
# Tests marked `reliability(area, case, expected)` are the rows of docs/RELIABILITY.md. With
# IMAGEFS_RELIABILITY_OUT set, each one's outcome and the figures it recorded through the
# `reliability` fixture are appended there as JSON lines (scripts/reliability_report.py).


@dataclass
class Reliability:
    """Figures a reliability test reports: inputs tried, faults survived, bytes lost."""

    figures: dict[str, int] = field(default_factory=dict)

    def record(self, **figures: int) -> None:
        for key, value in figures.items():
            self.figures[key] = self.figures.get(key, 0) + value


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Iterator[Reliability]:
    rel = Reliability()
    # registered before the test runs: the call report copies user_properties when the
    # test body ends, and holds this same dict, filled in by then
    request.node.user_properties.append(("reliability", rel.figures))
    yield rel


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    out = os.environ.get("IMAGEFS_RELIABILITY_OUT")
    if not out or report.when not in ("setup", "call", "teardown"):
        return
    if report.when != "call" and report.passed:
        return  # setup/teardown only matter when they fail
    rows = _RELIABILITY_ROWS.get(report.nodeid)
    if rows is None:
        return
    figures: dict[str, int] = {}
    for key, value in report.user_properties:
        if key == "reliability" and isinstance(value, dict):
            figures.update(value)
    with open(out, "a", encoding="utf-8") as f:
        for area, case, expected in rows:
            f.write(
                json.dumps(
                    {
                        "test": report.nodeid,
                        "area": area,
                        "case": case,
                        "expected": expected,
                        "outcome": report.outcome,
                        "when": report.when,
                        "seconds": round(report.duration, 3),
                        "figures": figures,
                    }
                )
                + "\n"
            )


_RELIABILITY_ROWS: dict[str, list[tuple[str, str, str]]] = {}


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    for item in session.items:
        rows = [tuple(m.args) for m in item.iter_markers("reliability")]
        if rows:
            _RELIABILITY_ROWS[item.nodeid] = [(str(a), str(c), str(e)) for a, c, e in rows]


@pytest.fixture(autouse=True)
def _integration_requirements(request: pytest.FixtureRequest) -> None:
    """Integration tests need root, /dev/fuse and the Debian tools: fail loudly without."""
    if request.node.get_closest_marker("integration") is None:
        return
    problems = []
    if os.geteuid() != 0:
        problems.append("root")
    if not os.path.exists("/dev/fuse"):
        problems.append("/dev/fuse")
    problems += [t for t in TOOLS if shutil.which(t) is None]
    if problems:
        pytest.fail(
            "integration tests need " + ", ".join(problems) + ": run scripts/bootstrap as root",
            pytrace=False,
        )


@dataclass
class Env:
    """A private imagefs environment: cache dir, run dir and CLI runner."""

    root: Path
    # more environment for every command (e.g. IMAGEFS_REGISTRY_MIRRORS, DOCKER_CONFIG, PATH);
    # a test may change it between commands
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def vars(self) -> dict[str, str]:
        env = dict(os.environ)
        env["IMAGEFS_CACHE_DIR"] = str(self.root / "cache")
        env["IMAGEFS_RUN_DIR"] = str(self.root / "run")
        env.pop("IMAGEFS_CONFIG", None)
        env.update(self.extra)
        return env

    def run(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            cwd=REPO,
            env=self.vars,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"imagefs {' '.join(args)} exited {res.returncode}\n{res.stderr}{res.stdout}"
            )
        return res

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)


@pytest.fixture
def imagefs_env() -> Iterator[Env]:
    # short: the run dir holds unix sockets, whose paths are limited to 107 bytes
    root = Path(tempfile.mkdtemp(prefix="ifs-", dir="/tmp"))
    try:
        yield Env(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        return any(line.split()[4] == target for line in f)


@dataclass
class Mount:
    env: Env
    image: str
    path: Path
    pid: int

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = self.env.json("stats", str(self.path))
        return data


class Mounter:
    """Mounts images for a test and always unmounts them and stops their processes."""

    def __init__(self, env: Env, tmp: Path) -> None:
        self.env = env
        self.tmp = tmp
        self.mounts: list[Mount] = []

    def __call__(self, image: str, name: str = "mnt", *extra: str) -> Mount:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        res = self.env.run("mount", image, str(path), *extra)
        pid = int(res.stderr.rsplit("pid ", 1)[1].split(")")[0])
        m = Mount(self.env, image, path, pid)
        self.mounts.append(m)
        assert _mounted(path)
        return m

    def cleanup(self) -> None:
        for m in reversed(self.mounts):
            if _mounted(m.path):
                res = subprocess.run(["fusermount3", "-u", str(m.path)], capture_output=True)
                if res.returncode != 0:
                    subprocess.run(["fusermount3", "-u", "-z", str(m.path)], capture_output=True)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(m.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(m.pid, signal.SIGKILL)


@pytest.fixture
def mount_image(imagefs_env: Env, tmp_path: Path) -> Iterator[Mounter]:
    mounter = Mounter(imagefs_env, tmp_path / "mounts")
    try:
        yield mounter
    finally:
        mounter.cleanup()
