"""moby's graphtest cases on every backend available here (SPEC §10.2)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lcow.graphdriver.driver import Driver
from lcow.testing import graphtest
from lcow.testing.graphtest import BuilderFactory, TarBuilder, ViewBuilder
from tests.helpers import host_leftovers, requires

# Each backend with the builder graphtest's fixtures write with: layer tars through ApplyDiff
# (read-only views), or the layer's own Get view (writable backends, as moby's graphtest does).
BACKENDS: dict[str, tuple[BuilderFactory, tuple[str, ...]]] = {
    "userspace": (TarBuilder, ()),
    "host": (ViewBuilder, ("host",)),
}


@pytest.fixture(
    params=[pytest.param(name, marks=requires(*BACKENDS[name][1])) for name in BACKENDS]
)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def driver(backend: str, tmp_path: Path) -> Iterator[Driver]:
    drv = Driver(tmp_path / "docker-graphtest", [f"lcow.backend={backend}"])
    yield drv
    drv.cleanup()
    assert host_leftovers(tmp_path) == []


@pytest.fixture
def make(backend: str) -> BuilderFactory:
    return BACKENDS[backend][0]


def test_create_empty(driver: Driver) -> None:
    graphtest.test_create_empty(driver)


def test_create_base(driver: Driver, make: BuilderFactory) -> None:
    graphtest.test_create_base(driver, make)


def test_create_snap(driver: Driver, make: BuilderFactory) -> None:
    graphtest.test_create_snap(driver, make)


def test_128_layer_read(driver: Driver, make: BuilderFactory) -> None:
    graphtest.test_deep_layer_read(driver, make, 128)


def test_diff_apply_10_files(driver: Driver, make: BuilderFactory) -> None:
    graphtest.test_diff_apply(driver, make, 10)


def test_changes(driver: Driver, make: BuilderFactory) -> None:
    graphtest.test_changes(driver, make, 20)


@requires("host")
def test_set_quota_host(tmp_path: Path) -> None:
    """SetQuota needs writable views: the host backend's."""
    drv = Driver(tmp_path / "docker-graphtest", ["lcow.backend=host"])
    try:
        graphtest.test_set_quota(drv, ViewBuilder)
    finally:
        drv.cleanup()
        assert host_leftovers(tmp_path) == []
