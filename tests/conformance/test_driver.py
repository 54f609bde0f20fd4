"""The driver conformance suite (:mod:`lcow.testing.backend_suite`) on every backend.

A backend joins by adding one line to :data:`BACKENDS`: a function making a driver on a data
root with that backend. Sandbox cases need ``mke2fs`` (skipped without it, failed under CI).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from lcow.backends.userspace import UserspaceBackend
from lcow.graphdriver.driver import Driver
from lcow.testing import backend_suite as suite
from lcow.testing.backend_suite import DriverFactory
from tests.helpers import host_leftovers, requires


def _host(home: Path, options: Sequence[str] | None) -> Driver:
    return Driver(home, [*(options or []), "lcow.backend=host"])


def _vm(home: Path, options: Sequence[str] | None) -> Driver:
    # Global mode (one VM per driver) keeps the suite's many short views within CI's budget;
    # per-id mode is covered by tests/vm.
    return Driver(home, ["lcow.globalmode=true", *(options or []), "lcow.backend=vm"])


BACKENDS: dict[str, Callable[[Path, Sequence[str] | None], Driver]] = {
    "userspace": lambda home, options: Driver(home, options, backend=UserspaceBackend()),
    "host": _host,
    "vm": _vm,
}
NEEDS = {"userspace": (), "host": ("host",), "vm": ("vm",)}

sandboxes = requires("mke2fs")


@pytest.fixture(
    params=[pytest.param(name, marks=requires(*NEEDS[name])) for name in sorted(BACKENDS)]
)
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DriverFactory]:
    """A factory for drivers on the parametrised backend; every driver made is cleaned up,
    and a host-backend run must leave no mount, loop device or storage daemon behind."""
    made: list[Driver] = []
    build = BACKENDS[request.param]

    def factory(home: Path, options: Sequence[str] | None = None) -> Driver:
        driver = build(home, options)
        made.append(driver)
        return driver

    yield factory
    for driver in made:
        driver.cleanup()
    assert host_leftovers(tmp_path) == []


def test_string_and_status(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_string_and_status(make, tmp_path)


def test_metadata_and_layer_path(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_metadata_and_layer_path(make, tmp_path)


def test_exists(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_exists(make, tmp_path)


def test_init_layout(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_init_layout(make, tmp_path)


@pytest.mark.parametrize(
    ("options", "message"),
    suite.INIT_OPTION_ERRORS,
    ids=[repr(o) for o, _ in suite.INIT_OPTION_ERRORS],
)
def test_init_option_error(
    make: DriverFactory, tmp_path: Path, options: Sequence[str], message: str
) -> None:
    suite.test_init_option_error(make, tmp_path, options, message)


def test_init_unknown_lcow_key(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_init_unknown_lcow_key(make, tmp_path)


def test_init_options_accepted(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_init_options_accepted(make, tmp_path)


def test_create_layout(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_create_layout(make, tmp_path)


def test_create_missing_parent(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_create_missing_parent(make, tmp_path)


def test_create_again(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_create_again(make, tmp_path)


def test_windows_chain(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_windows_chain(make, tmp_path)


def test_moved_root(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_moved_root(make, tmp_path)


def test_corrupt_chain(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_corrupt_chain(make, tmp_path)


@pytest.mark.parametrize("layer_id", suite.BAD_IDS, ids=repr)
def test_bad_ids(make: DriverFactory, tmp_path: Path, layer_id: str) -> None:
    suite.test_bad_ids(make, tmp_path, layer_id)


def test_longest_id(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_longest_id(make, tmp_path)


def test_missing_parent_is_not_found(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_missing_parent_is_not_found(make, tmp_path)


def test_apply_diff_layout(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_apply_diff_layout(make, tmp_path)


def test_apply_diff_unpack_size(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_apply_diff_unpack_size(make, tmp_path)


@sandboxes
def test_apply_diff_replaces_sandbox(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_apply_diff_replaces_sandbox(make, tmp_path)


def test_apply_diff_failure(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_apply_diff_failure(make, tmp_path)


@sandboxes
def test_apply_diff_failure_keeps_sandbox(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_apply_diff_failure_keeps_sandbox(make, tmp_path)


def test_apply_diff_missing_layer(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_apply_diff_missing_layer(make, tmp_path)


@sandboxes
def test_create_read_write_default(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_create_read_write_default(make, tmp_path)


@sandboxes
def test_create_read_write_sized(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_create_read_write_sized(make, tmp_path)


@sandboxes
def test_create_read_write_exact_size(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_create_read_write_exact_size(make, tmp_path)


@pytest.mark.parametrize(
    ("value", "template"),
    suite.SANDBOX_OPTION_ERRORS,
    ids=[repr(v) for v, _ in suite.SANDBOX_OPTION_ERRORS],
)
def test_sandbox_option_error(
    make: DriverFactory, tmp_path: Path, value: str, template: str
) -> None:
    suite.test_sandbox_option_error(make, tmp_path, value, template)


@sandboxes
def test_remove(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_remove(make, tmp_path)


def test_cleanup_sweeps(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_cleanup_sweeps(make, tmp_path)


def test_get_put_counts(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_get_put_counts(make, tmp_path)


def test_remove_tears_down_views(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_remove_tears_down_views(make, tmp_path)


def test_get_create_only(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_get_create_only(make, tmp_path)


def test_get_missing_ancestor(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_get_missing_ancestor(make, tmp_path)


def test_empty_layer_diff(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_empty_layer_diff(make, tmp_path)


def test_empty_child_of_content(make: DriverFactory, tmp_path: Path) -> None:
    suite.test_empty_child_of_content(make, tmp_path)
