"""Backends by name: the registry, entry points, backend options and the driver's choice.

A third-party backend is a real one here: the userspace backend's views under another name,
with an option key of its own, found through ``with_backend`` or through an installed
distribution's ``entry_points.txt`` (a ``*.dist-info`` folder on ``sys.path`` of a child
process, which is what pip installs). Fakes exist only to inject faults (a host that lacks
the backend's prerequisites) and are named so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from lcow.backends.registry import BUILTIN_BACKENDS, ENTRY_POINT_GROUP, BackendRegistry
from lcow.backends.userspace import UserspaceBackend
from lcow.backends.vm import VmOptions, parse_vm_options
from lcow.errors import InvalidArgument, NotSupported
from lcow.graphdriver.driver import Driver
from lcow.graphdriver.options import parse_driver_options

# -- a third-party backend ----------------------------------------------------------------------


class ShelfBackend(UserspaceBackend):
    """The userspace backend's views under the name a third party gave its backend."""

    name = "shelf"

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label


@dataclass(frozen=True)
class ShelfOptions:
    label: str = ""


class ShelfFactory:
    option_keys = frozenset({"lcow.shelf.label"})

    def parse_options(self, pairs: Mapping[str, str], *, root: Path) -> ShelfOptions:
        label = pairs.get("lcow.shelf.label", "")
        if label.startswith("-"):
            raise InvalidArgument(f"lcow.shelf.label: {label!r} starts with '-'")
        return ShelfOptions(label)

    def check(self, options: ShelfOptions) -> None:
        pass

    def create(self, root: Path, options: ShelfOptions) -> ShelfBackend:
        return ShelfBackend(options.label)


class FakeMissingPrerequisites(ShelfFactory):
    """Fault injection: a host lacking what the backend needs."""

    def check(self, options: ShelfOptions) -> None:
        raise NotSupported("driver not supported: the shelf backend needs a shelf", subject="shelf")

    def create(self, root: Path, options: ShelfOptions) -> ShelfBackend:
        raise AssertionError("create after a failed check")


def with_shelf(factory: ShelfFactory | None = None) -> BackendRegistry:
    return BackendRegistry.discover().with_backend("shelf", factory or ShelfFactory())


# -- the registry -------------------------------------------------------------------------------


def test_builtin_names_come_first_in_a_fixed_order() -> None:
    assert [name for name, _ in BUILTIN_BACKENDS] == ["userspace", "host", "vm"]
    assert with_shelf().names() == ("userspace", "host", "vm", "shelf")


def test_builtins_need_no_installed_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    """A source checkout that was never pip-installed has no entry points: the fallback
    table still gives every built-in."""
    import lcow.backends.registry as registry_module

    monkeypatch.setattr(registry_module, "entry_points", lambda group: [])
    registry = BackendRegistry.discover()
    assert registry.names() == ("userspace", "host", "vm")
    for name in registry.names():
        assert callable(registry.get(name).create)


def test_pyproject_declares_the_builtins_as_entry_points() -> None:
    """lcow declares its own backends the way a third party does, and the installed metadata
    agrees with the fallback table."""
    installed = {p.name: p.value for p in entry_points(group=ENTRY_POINT_GROUP)}
    assert {name: installed.get(name) for name, _ in BUILTIN_BACKENDS} == dict(BUILTIN_BACKENDS)


def test_with_backend_returns_a_new_registry() -> None:
    base = BackendRegistry.discover()
    extended = base.with_backend("shelf", ShelfFactory())
    assert "shelf" in extended and "shelf" not in base
    with pytest.raises(InvalidArgument, match="taken"):
        extended.with_backend("host", ShelfFactory())
    for bad in ("", "Shelf", " shelf", "a=b"):
        with pytest.raises(InvalidArgument):
            base.with_backend(bad, ShelfFactory())
    with pytest.raises(InvalidArgument, match="no such backend"):
        base.get("shelf")


# -- the driver's choice ------------------------------------------------------------------------


def test_a_registered_backend_is_picked_by_name(tmp_path: Path) -> None:
    driver = Driver(
        tmp_path / "root", ["lcow.backend=shelf", "LCOW.Shelf.Label=blue"], backends=with_shelf()
    )
    assert isinstance(driver.backend, ShelfBackend)
    assert driver.backend.label == "blue"
    assert ("Backend", "shelf") in driver.status()
    assert driver.options.backend_options == ShelfOptions("blue")


def test_backend_keys_are_valid_only_with_that_backend(tmp_path: Path) -> None:
    registry = with_shelf()
    with pytest.raises(InvalidArgument, match=r"unknown option 'lcow\.shelf\.label'"):
        Driver(tmp_path / "a", ["lcow.shelf.label=x"], backends=registry)
    with pytest.raises(InvalidArgument, match=r"unknown option 'lcow\.shelf\.label'"):
        Driver(tmp_path / "b", ["lcow.shelf.label=x", "lcow.backend=vm"], backends=registry)
    with pytest.raises(InvalidArgument, match="starts with '-'"):
        Driver(tmp_path / "c", ["lcow.backend=shelf", "lcow.shelf.label=-x"], backends=registry)
    assert not any((tmp_path / name).exists() for name in "abc")


def test_spec_keys_are_accepted_whatever_the_backend(tmp_path: Path) -> None:
    """SPEC §2: VM-only keys are ignored by other backends."""
    vm_only = ["lcow.kirdpath=/nowhere", "lcow.kernel=k", "lcow.initrd=i", "lcow.bootparameters=q"]
    driver = Driver(tmp_path / "root", [*vm_only, "lcow.backend=shelf"], backends=with_shelf())
    assert isinstance(driver.backend, ShelfBackend)
    assert isinstance(Driver(tmp_path / "u", vm_only).backend, UserspaceBackend)


def test_an_unknown_name_lists_every_registered_backend(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as info:
        Driver(tmp_path / "root", ["lcow.backend=nope"], backends=with_shelf())
    assert str(info.value) == (
        "lcowdriver: init: invalid value 'nope' for 'lcow.backend' - must be one of "
        "userspace, host, vm, shelf"
    )
    assert not (tmp_path / "root").exists()


def test_missing_prerequisites_fail_before_anything_is_created(tmp_path: Path) -> None:
    registry = with_shelf(FakeMissingPrerequisites())
    with pytest.raises(NotSupported, match="driver not supported: the shelf backend"):
        Driver(tmp_path / "root", ["lcow.backend=shelf"], backends=registry)
    assert not (tmp_path / "root").exists()


def test_an_injected_backend_is_used_as_given(tmp_path: Path) -> None:
    backend = ShelfBackend("given")
    driver = Driver(tmp_path / "root", ["lcow.backend=host"], backend=backend)
    assert driver.backend is backend


# -- the vm backend's own options ---------------------------------------------------------------


def test_vm_options_are_parsed_by_the_vm_backend(tmp_path: Path) -> None:
    options = parse_driver_options(
        ["lcow.backend=vm", "lcow.globalmode=1", "lcow.timeout=9", "lcow.bootparameters=quiet"],
        root=str(tmp_path),
    ).backend_options
    assert options == VmOptions(
        kirdpath=str(tmp_path / "uvm"),
        global_mode=True,
        vhdx=str(tmp_path / "uvm" / "uvm.vhdx"),
        boot_parameters="quiet",
        timeout=9,
    )
    given = parse_vm_options({"lcow.kirdpath": "/k", "lcow.kernel": "vmlinuz"}, root=tmp_path)
    assert (given.kirdpath, given.kirdpath_given, given.kernel) == ("/k", True, "vmlinuz")
    with pytest.raises(InvalidArgument) as info:
        parse_vm_options({"lcow.globalmode": "yes"}, root=tmp_path)
    assert str(info.value) == (
        "lcowdriver: init: failed to parse value for 'lcow.globalmode' - must be 'true' or 'false'"
    )


# -- a third-party distribution found through its entry points ---------------------------------

_PACKAGE = """
from dataclasses import dataclass

from lcow.backends.userspace import UserspaceBackend


class ShelfBackend(UserspaceBackend):
    name = "shelf"


@dataclass(frozen=True)
class ShelfOptions:
    label: str = ""


class ShelfFactory:
    option_keys = frozenset({"lcow.shelf.label"})

    def parse_options(self, pairs, *, root):
        return ShelfOptions(pairs.get("lcow.shelf.label", ""))

    def check(self, options):
        pass

    def create(self, root, options):
        return ShelfBackend()


FACTORY = ShelfFactory()
"""

_CHILD = """
import json, sys
from lcow.backends.registry import BackendRegistry
from lcow.graphdriver.driver import Driver

driver = Driver(sys.argv[1], ["lcow.backend=shelf", "lcow.shelf.label=red"])
print(json.dumps({
    "names": BackendRegistry.discover().names(),
    "backend": type(driver.backend).__module__ + "." + type(driver.backend).__name__,
    "label": driver.options.backend_options.label,
    "status": driver.status(),
}))
"""

_OPEN = "import sys\nfrom lcow.graphdriver.driver import Driver\nDriver(sys.argv[1], sys.argv[2:])"


def _install_shelf(site: Path) -> None:
    """What ``pip install`` of a package declaring the ``lcow.backends`` entry point ``shelf``
    leaves on ``sys.path`` (and a ``host`` entry point, which must not win)."""
    (site / "lcow_shelf").mkdir(parents=True)
    (site / "lcow_shelf" / "__init__.py").write_text(textwrap.dedent(_PACKAGE))
    info = site / "lcow_shelf-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lcow-shelf\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nshelf = lcow_shelf:FACTORY\nhost = lcow_shelf:FACTORY\n"
    )


def _child(site: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": path},
    )


def test_an_installed_entry_point_is_picked_by_name(tmp_path: Path) -> None:
    _install_shelf(tmp_path / "site")
    proc = _child(tmp_path / "site", "-c", _CHILD, str(tmp_path / "root"))
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert found["names"] == ["userspace", "host", "vm", "shelf"]
    assert found["backend"] == "lcow_shelf.ShelfBackend"
    assert found["label"] == "red"
    assert ["Backend", "shelf"] in found["status"]
    assert "backend host: ignoring the entry point lcow_shelf:FACTORY" in proc.stderr


def test_the_cli_offers_an_installed_backend(tmp_path: Path) -> None:
    _install_shelf(tmp_path / "site")
    argv = ["-m", "lcow", "--root", str(tmp_path / "root"), "--backend", "shelf", "--json"]
    proc = _child(tmp_path / "site", *argv, "status")
    assert proc.returncode == 0, proc.stderr
    assert ["Backend", "shelf"] in json.loads(proc.stdout)["Status"]


def test_a_broken_entry_point_is_not_supported(tmp_path: Path) -> None:
    site = tmp_path / "site"
    info = site / "lcow_broken-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lcow-broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nbroken = no_such_module:X\n")
    proc = _child(site, "-c", _OPEN, str(tmp_path / "root"), "lcow.backend=broken")
    assert proc.returncode != 0
    assert "driver not supported: the broken backend cannot be loaded" in proc.stderr
    assert not (tmp_path / "root").exists()
