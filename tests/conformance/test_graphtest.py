"""moby's graphtest cases on every backend available here (SPEC §10.2)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lcow.graphdriver.driver import Driver
from lcow.testing import graphtest
from lcow.testing.graphtest import TarBuilder

BACKENDS = ["userspace"]


@pytest.fixture(params=BACKENDS)
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Driver]:
    drv = Driver(tmp_path / "docker-graphtest", [f"lcow.backend={request.param}"])
    yield drv
    drv.cleanup()


def test_create_empty(driver: Driver) -> None:
    graphtest.test_create_empty(driver)


def test_create_base(driver: Driver) -> None:
    graphtest.test_create_base(driver, TarBuilder)


def test_create_snap(driver: Driver) -> None:
    graphtest.test_create_snap(driver, TarBuilder)


def test_128_layer_read(driver: Driver) -> None:
    graphtest.test_deep_layer_read(driver, TarBuilder, 128)


def test_diff_apply_10_files(driver: Driver) -> None:
    graphtest.test_diff_apply(driver, TarBuilder, 10)


def test_changes(driver: Driver) -> None:
    graphtest.test_changes(driver, TarBuilder, 20)
