"""Test-suite wiring: the ``requires`` marker, its CI rule, and shared fixtures.

``@requires("root", "loop", "e2fsck")`` (from :mod:`tests.helpers`) skips a test with a reason when
a requirement is missing, or fails it when ``CI=true``. Tests needing root or loop devices also get
the ``root`` marker, so ``-m "not root"`` deselects them on purpose.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lcow.samples import write_sample_layers
from tests.helpers import ensure, host_leftovers, release_leftover_mounts

_ROOT_NEEDS = {"root", "loop", "xattrs", "host"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Add the ``root`` marker to every test that requires root-only facilities."""
    for item in items:
        needs = {n for m in item.iter_markers("requires") for n in m.args}
        if needs & _ROOT_NEEDS:
            item.add_marker(pytest.mark.root)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (or, with ``CI=true``, fail) tests whose ``requires`` are not met."""
    for mark in item.iter_markers("requires"):
        ensure(*mark.args)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Safety net: release loop devices a test interrupted mid-cleanup left attached, and fail
    the run if any mount, loop device or storage daemon of the session's temporary tree
    survived it (the host backend must leave nothing behind)."""
    for device in release_leftover_mounts():
        print(f"\nconftest: released a leftover loop device {device}")
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    left = host_leftovers(factory.getbasetemp())
    if left:
        print("\nconftest: the test run left behind:\n  " + "\n  ".join(left))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def sample_layers(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The three sample layer tars of :mod:`lcow.samples`, written once per session."""
    return write_sample_layers(tmp_path_factory.mktemp("samples"))


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """An empty directory that only conversion outputs go into."""
    path = tmp_path / "out"
    path.mkdir()
    return path


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    """An empty mount point."""
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
