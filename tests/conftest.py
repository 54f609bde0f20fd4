"""Test-suite wiring: the ``requires`` marker, its CI rule, and shared fixtures.

``@requires("root", "loop", "e2fsck")`` (from :mod:`tests.helpers`) skips a test with a reason when
a requirement is missing, or fails it when ``CI=true``. Tests needing root or loop devices also get
the ``root`` marker, so ``-m "not root"`` deselects them on purpose.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from lcow.samples import write_sample_layers
from tests.harness.crash.rootstate import LoopWatch
from tests.helpers import ensure, host_leftovers, release_leftover_mounts

_ROOT_NEEDS = {"root", "loop", "xattrs", "host"}

# CI runs the property tests on fixed examples, so a landing never hangs on the luck of the
# draw; a local run keeps drawing new ones (and keeps the failures it finds in .hypothesis/).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")
_LOOP_WATCH = pytest.StashKey[LoopWatch]()


def pytest_sessionstart(session: pytest.Session) -> None:
    """As root, watch the loop devices attached below the session's temporary tree (see
    :func:`pytest_sessionfinish`)."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or os.geteuid() != 0 or not os.path.isdir("/sys/block"):
        return
    session.config.stash[_LOOP_WATCH] = LoopWatch(factory.getbasetemp()).start()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Add the ``root`` marker to every test that requires root-only facilities."""
    for item in items:
        needs = {n for m in item.iter_markers("requires") for n in m.args}
        if needs & _ROOT_NEEDS:
            item.add_marker(pytest.mark.root)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (or, with ``CI=true``, fail) tests whose ``requires`` are not met."""
    watch = item.config.stash.get(_LOOP_WATCH, None)
    if watch is not None:
        watch.label = item.nodeid
    for mark in item.iter_markers("requires"):
        ensure(*mark.args)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Safety net: release loop devices a test interrupted mid-cleanup left attached, and fail
    the run if any mount, loop device or storage daemon of the session's temporary tree
    survived it (the host backend must leave nothing behind).

    Loop devices are checked as the watch saw them attached: one whose ext4 outlived its
    mount (unmounted while frozen) keeps the device, but once the storage daemon's export
    under it is gone its backing file reads ``/``, which no path check recognises."""
    for device in release_leftover_mounts():
        print(f"\nconftest: released a leftover loop device {device}")
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    left: list[str] = []
    watch = session.config.stash.get(_LOOP_WATCH, None)
    if watch is not None:
        watch.stop()
        left = watch.leftovers()
    left += host_leftovers(factory.getbasetemp())
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
