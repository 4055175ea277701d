"""Fixtures shared by the containerd tests: the recipe's busybox image (built once per
module) and a private containerd with the imagefs snapshotter and a loopback registry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.containerd_fixture import (
    ContainerdLab,
    build_busybox_layout,
    run_containerd,
)
from tests.integration.registry_fixture import run_registry


@pytest.fixture(scope="module")
def busybox_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_busybox_layout(tmp_path_factory.mktemp("busybox"))


@pytest.fixture
def lab() -> Iterator[ContainerdLab]:
    with run_registry() as registry, run_containerd(registry) as lab:
        yield lab
