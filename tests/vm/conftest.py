"""Fixtures of the vm backend's tests: drivers whose VMs are audited after each test.

Every test here boots real QEMU VMs under TCG (or KVM where it works) from the assets of
``lcow uvm build`` (``tools/test.sh`` builds them; ``$LCOW_KIRDPATH`` or /var/lib/lcow/uvm).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from lcow.backends.vm import VmBackend
from lcow.graphdriver.driver import Driver
from tests.helpers import host_leftovers

VmDriverFactory = Callable[..., Driver]


def vm_leftovers(driver: Driver) -> list[str]:
    """QEMU processes, runtime folders (sockets) and scratch files a driver's VMs left."""
    backend = driver.backend
    assert isinstance(backend, VmBackend)
    found = []
    for vm in backend.table.started:
        if vm.alive():
            found.append(f"QEMU pid {vm.pid} still runs")
        if vm.runtime.exists():
            found.append(f"runtime folder {vm.runtime} (sockets) remains")
    found += [f"scratch {p}" for p in (driver.root.root / "scratch").glob("*.vhdx")]
    return found


@pytest.fixture
def vm_driver(tmp_path: Path) -> Iterator[VmDriverFactory]:
    """``vm_driver(*options, name="root")``: a vm-backend driver; all are cleaned up after the
    test, which fails if a QEMU process, socket, scratch file, mount or loop device remains."""
    made: list[Driver] = []

    def factory(*options: str, name: str = "root", **_: object) -> Driver:
        opts: Sequence[str] = ["lcow.backend=vm", "lcow.timeout=60", *options]
        driver = Driver(tmp_path / name, opts)
        made.append(driver)
        return driver

    yield factory
    problems: list[str] = []
    for driver in made:
        driver.cleanup()
        problems += vm_leftovers(driver)
    problems += host_leftovers(tmp_path)
    assert problems == []
