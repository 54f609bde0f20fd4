"""VM assets and boot: ``lcow uvm build`` is idempotent, the VM boots (TCG where KVM does not
work) and the agent answers; a QEMU never outlives the lcow process that started it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from lcow.backends.vm.assets import default_kirdpath, find_assets
from lcow.backends.vm.qemu import QemuVM, VmConfig, accelerator
from lcow.graphdriver.driver import Driver
from tests.helpers import requires

pytestmark = requires("vm")


def _assets() -> VmConfig:
    return VmConfig(find_assets(default_kirdpath(), "bootx64.efi", "initrd.img", explicit=True),
                    timeout=60)  # fmt: skip


def test_uvm_build_up_to_date() -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "lcow", "uvm", "build", "--out", default_kirdpath()],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stderr
    assert time.monotonic() - started < 20


def test_boot_and_handshake() -> None:
    if Path("/sys/module/kvm_pvm").exists():
        assert accelerator() == "tcg"  # PVM-backed KVM hangs guests
    vm = QemuVM("boot-test", _assets())
    started = time.monotonic()
    try:
        vm.start()
        booted = time.monotonic() - started
        for port in range(4):
            ch = vm.channel(port)
            ch.connect()
            assert ch.call("hello", "x").startswith(b"lcow-agent 1")
            ch.close()
        assert booted < 30
    finally:
        vm.kill()
    assert not vm.alive() and not vm.runtime.exists()


_CHILD = """
import sys
from lcow.graphdriver.driver import Driver
drv = Driver(sys.argv[1], ["lcow.backend=vm", "lcow.timeout=60"])
drv.create("a", None)
drv.get("a").readdir("/")
vm = drv.backend.table.started[0]
print(vm.pid, vm.runtime, flush=True)
import os
os._exit(1)  # no cleanup: the VM must die with us
"""


def test_qemu_dies_with_lcow(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "root")],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    pid_text, runtime = done.stdout.split()
    pid = int(pid_text)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        raise AssertionError(f"QEMU {pid} outlived the lcow process")
    # Its sockets stay until a backend sweeps them: the next one here (or already one that
    # another test run on this machine created meanwhile: /tmp is shared).
    Driver(tmp_path / "next", ["lcow.backend=vm"]).cleanup()
    assert not Path(runtime).exists()
