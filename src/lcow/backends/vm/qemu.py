"""One QEMU process: a service utility VM booted from lcow's kernel and initramfs (SPEC §4.2).

``-M microvm`` (virtio-mmio devices; ``q35`` with PCI devices when microvm is missing), KVM
where it works and TCG otherwise: a PVM-backed ``/dev/kvm`` (``/sys/module/kvm_pvm``) hangs
guests, so it counts as not working. Devices: a virtio-scsi controller for the disks (hot-added
through QMP, §4.4), a virtio-serial controller with :data:`PORTS` ports for the agent
(:mod:`.channel`), a serial console logged to a file, QMP on a Unix socket. Sockets and the
console log live in a private runtime folder under ``/tmp`` (short paths: a Unix socket path
is limited to 108 bytes, data roots can be long), removed when the VM ends.

QEMU runs with a parent-death signal (``setpriv --pdeathsig``), so a crashed lcow process
cannot leak it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import QMPClient, QMPError

from lcow._util.unixsock import SUN_PATH_MAX
from lcow.backends.qemuopts import option_value
from lcow.backends.vm.assets import Assets
from lcow.backends.vm.channel import Channel, ChannelBroken
from lcow.errors import FailedPrecondition, NotSupported

__all__ = [
    "BINARY",
    "PORTS",
    "QemuVM",
    "VmConfig",
    "accelerator",
    "check_qemu",
    "runtime_parent",
    "sweep_stale_runtime",
]

log = logging.getLogger(__name__)

BINARY = "qemu-system-x86_64"
PORTS = 4
MEMORY_MB = 256
#: Under TCG the kernel cannot calibrate its delay loop or TSC without a PIT/HPET (microvm has
#: neither): preset both, and keep the console quiet (every character is an emulated exit).
BASE_CMDLINE = "console=ttyS0 panic=-1 quiet lpj=4000000 tsc_early_khz=2000000 tsc=reliable"
_READY = b"lcow-agent: ready"
RUNTIME_PREFIX = "lcow-vm-"
#: The longest socket path a runtime folder holds (``<folder>/qmp``, ``<folder>/cN``) must fit
#: ``sockaddr_un`` (108 bytes with its NUL): mkdtemp adds 8 characters to the prefix.
_RUNTIME_SLACK = len(RUNTIME_PREFIX) + 8 + len("/qmp") + 2
_STALE_AGE = 120.0
_T = TypeVar("_T")


def check_qemu() -> str:
    """The QEMU binary's path.

    Raises:
        NotSupported: QEMU is missing (``driver not supported``).
    """
    binary = shutil.which(BINARY)
    if binary is None:
        raise NotSupported(
            f"driver not supported: the vm backend needs {BINARY} (Debian: qemu-system-x86)",
            subject="vm",
        )
    return binary


def accelerator() -> str:
    """``kvm`` when ``/dev/kvm`` is usable and not PVM-backed, else ``tcg``
    (``$LCOW_VM_ACCEL`` overrides)."""
    forced = os.environ.get("LCOW_VM_ACCEL", "")
    if forced in ("kvm", "tcg"):
        return forced
    if Path("/sys/module/kvm_pvm").exists():
        return "tcg"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return "tcg"
    os.close(fd)
    return "kvm"


@functools.cache
def _machines(binary: str) -> str:
    done = subprocess.run([binary, "-machine", "help"], capture_output=True, text=True, check=False)
    return done.stdout


@dataclass(frozen=True)
class VmConfig:
    """How to boot a VM (SPEC §2 options)."""

    assets: Assets
    boot_parameters: str = ""
    timeout: float = 300.0
    memory_mb: int = MEMORY_MB


def _with_pdeathsig(argv: list[str]) -> list[str]:
    """``argv`` run through ``setpriv --pdeathsig KILL`` (util-linux) when available: QEMU then
    dies with lcow (exec keeps the signal; no ``preexec_fn`` in a threaded program)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv


def runtime_parent() -> Path:
    """Where VM runtime folders go: ``$TMPDIR``, or ``/tmp`` when ``$TMPDIR`` is too deep for
    the Unix sockets inside them (QEMU and its QMP client both need the literal path)."""
    parent = Path(tempfile.gettempdir())
    if len(os.fsencode(parent)) + 1 + _RUNTIME_SLACK >= SUN_PATH_MAX:
        return Path("/tmp")
    return parent


def sweep_stale_runtime() -> list[Path]:
    """Remove runtime folders (sockets, console logs) of VMs whose lcow process died without
    cleaning up: the QEMU named by the folder's pid file is gone (it died with its parent), or
    there is no pid file and the folder is older than two minutes. Returns what was removed."""
    removed = []
    for folder in runtime_parent().glob(RUNTIME_PREFIX + "*"):
        try:
            pid = int((folder / "pid").read_text().strip())
        except (OSError, ValueError):  # no pid file (yet): judge by age
            try:
                running = time.time() - folder.stat().st_mtime < _STALE_AGE
            except OSError:
                continue
        else:
            try:
                running = BINARY.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                running = False
        if not running:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@functools.cache
def _spawner() -> ThreadPoolExecutor:
    """The thread QEMU processes are started from. The parent-death signal follows the
    *thread* that forked, so a VM started from a short-lived worker thread would die with it;
    this thread lives until the interpreter exits."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="lcow-vm-spawn")


def _spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            _with_pdeathsig(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, close_fds=True,
        )  # fmt: skip

    return _spawner().submit(start).result()


class QemuVM:
    """A running QEMU with the agent answering.

    Args:
        name: the VM's id (for messages and the runtime folder's name).
        config: kernel, initrd, parameters, timeout.
        scratch: a VHDX attached at LUN 0 and mounted at ``/tmp/scratch`` (or ``None``).
    """

    def __init__(self, name: str, config: VmConfig, scratch: Path | None = None) -> None:
        self.name = name
        self.config = config
        self.scratch = scratch
        self.binary = check_qemu()
        self.accel = accelerator()
        self.machine = "microvm" if "microvm" in _machines(self.binary) else "q35"
        self.runtime = Path(tempfile.mkdtemp(prefix=RUNTIME_PREFIX, dir=runtime_parent()))
        self.qmp_path = self.runtime / "qmp"
        self.console = self.runtime / "console.log"
        self.process: subprocess.Popen[bytes] | None = None

    # -- process -------------------------------------------------------------------------------

    def _argv(self) -> list[str]:
        mmio = self.machine == "microvm"
        machine = "microvm,acpi=on" if mmio else "q35"
        serial_bus = "virtio-serial-device" if mmio else "virtio-serial-pci"
        scsi = "virtio-scsi-device" if mmio else "virtio-scsi-pci"
        cmdline = f"{BASE_CMDLINE} lcow.ports={PORTS} lcow.scratch={1 if self.scratch else 0}"
        if self.config.boot_parameters:
            cmdline += " " + self.config.boot_parameters
        argv = [
            self.binary, "-M", machine, "-accel", self.accel,
            "-cpu", "max" if self.accel == "tcg" else "host",
            "-m", str(self.config.memory_mb), "-smp", "1",
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-kernel", str(self.config.assets.kernel),
            "-initrd", str(self.config.assets.initrd),
            "-append", cmdline,
            "-serial", f"file:{self.console}",
            "-pidfile", str(self.runtime / "pid"),
            "-qmp", f"unix:{option_value(self.qmp_path)},server=on,wait=off",
            "-device", f"{serial_bus},id=vser0",
            "-device", f"{scsi},id=scsi0",
        ]  # fmt: skip
        for port in range(PORTS):
            sock = self.runtime / f"c{port}"
            argv += [
                "-chardev", f"socket,id=c{port},path={option_value(sock)},server=on,wait=off",
                "-device", f"virtserialport,bus=vser0.0,chardev=c{port},name=lcow.{port}",
            ]  # fmt: skip
        if self.scratch is not None:
            scratch = option_value(self.scratch)
            argv += [
                "-blockdev", f"driver=file,node-name=scratchf,filename={scratch}",
                "-blockdev", "driver=vhdx,node-name=scratch,file=scratchf",
                "-device", "scsi-hd,bus=scsi0.0,channel=0,scsi-id=0,lun=0,drive=scratch",
            ]  # fmt: skip
        return argv

    def start(self) -> None:
        """Boot and wait until the agent answers on every port (within the timeout).

        Raises:
            FailedPrecondition: QEMU exited or the agent did not answer in time; the process
                is stopped before this is raised.
        """
        try:
            self.process = _spawn(self._argv())
            deadline = time.monotonic() + self.config.timeout
            self._wait_ready(deadline)
            channel = self.channel(0)
            try:
                channel.connect_patiently(max(1.0, deadline - time.monotonic()))
            except ChannelBroken as exc:
                raise self._died(f"the agent did not answer: {exc}") from exc
            channel.close()
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self, deadline: float) -> None:
        """Wait for the agent's ``ready`` line on the console: its ports are open then."""
        while True:
            with contextlib.suppress(OSError):
                if _READY in self.console.read_bytes():
                    return
            if not self.alive():
                raise self._died("exited while booting")
            if time.monotonic() > deadline:
                raise self._died(f"the agent was not ready within {self.config.timeout:g} s")
            time.sleep(0.005)

    def _died(self, what: str) -> FailedPrecondition:
        stderr = b""
        if self.process is not None and self.process.poll() is not None and self.process.stderr:
            stderr = self.process.stderr.read() or b""
        console = ""
        with contextlib.suppress(OSError):
            console = self.console.read_text(errors="replace")[-1500:]
        detail = stderr.decode(errors="replace").strip()
        return FailedPrecondition(
            f"failed to start service utility VM ({self.name}): QEMU {what}"
            + (f": {detail}" if detail else "")
            + (f"\n--- console\n{console}" if console else ""),
            subject=self.name,
        )

    def channel(self, port: int) -> Channel:
        """A (not yet connected) channel to agent port ``port``."""
        return Channel(self.runtime / f"c{port}", self.config.timeout, self.alive)

    def alive(self) -> bool:
        """Whether QEMU still runs."""
        return self.process is not None and self.process.poll() is None

    def exited(self, grace: float) -> bool:
        """Whether QEMU has exited, waiting up to ``grace`` seconds (a killed process takes a
        moment to go; a broken channel is often the first sign)."""
        if self.process is None:
            return True
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            return False
        return True

    @property
    def pid(self) -> int | None:
        """QEMU's process id."""
        return None if self.process is None else self.process.pid

    def kill(self) -> None:
        """Stop QEMU (SIGKILL: the guest holds nothing worth flushing — sandboxes are flushed
        by QEMU's block layer on every guest flush) and remove the runtime folder."""
        if self.process is not None:
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.process.send_signal(signal.SIGKILL)
            try:
                self.process.wait(timeout=max(self.config.timeout, 10))
            except subprocess.TimeoutExpired:
                log.warning("vm %s: QEMU (pid %d) did not exit", self.name, self.process.pid)
            if self.process.stderr is not None:
                self.process.stderr.close()
        shutil.rmtree(self.runtime, ignore_errors=True)

    def quit(self) -> None:
        """Ask QEMU to quit (flushing its images), then make sure it is gone."""
        if self.alive():
            with contextlib.suppress(FailedPrecondition):
                self.qmp(lambda q: q.execute("quit"))
            if self.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=min(self.config.timeout, 10))
        self.kill()

    # -- QMP -------------------------------------------------------------------------------------

    def qmp(self, work: Callable[[QMPClient], Awaitable[_T]]) -> _T:
        """Run ``work`` in a QMP session of its own (a private event loop, so any thread may
        call this)."""

        async def session() -> _T:
            client = QMPClient(self.name)
            await asyncio.wait_for(client.connect(str(self.qmp_path)), self.config.timeout)
            try:
                return await asyncio.wait_for(work(client), self.config.timeout)
            finally:
                await client.disconnect()

        try:
            return asyncio.run(session())
        except (TimeoutError, QMPError, OSError) as exc:
            state = "" if self.alive() else " (the utility VM is gone)"
            raise FailedPrecondition(
                f"utility VM {self.name}: QMP: {exc or type(exc).__name__}{state}",
                subject=self.name,
            ) from exc

    def hot_add(self, node: str, path: Path, fmt: str, lun: int, read_only: bool) -> None:
        """Attach ``path`` (format ``fmt``: vpc or vhdx) as SCSI LUN ``lun``."""

        async def add(q: QMPClient) -> None:
            driver: dict[str, Any] = {
                "driver": fmt, "node-name": node, "read-only": read_only,
                "file": {"driver": "file", "filename": str(path), "read-only": read_only},
            }  # fmt: skip
            await q.execute("blockdev-add", driver)
            try:
                await q.execute("device_add", {
                    "driver": "scsi-hd", "id": node, "drive": node, "bus": "scsi0.0",
                    "channel": 0, "scsi-id": 0, "lun": lun,
                })  # fmt: skip
            except QMPError:
                await q.execute("blockdev-del", {"node-name": node})
                raise

        self.qmp(add)

    def hot_remove(self, node: str) -> None:
        """Detach the disk ``node`` and close its image."""

        async def remove(q: QMPClient) -> None:
            await q.execute("device_del", {"id": node})
            while True:
                event = await q.events.get()
                data = event.get("data")
                deleted = event["event"] == "DEVICE_DELETED" and isinstance(data, dict)
                if deleted and isinstance(data, dict) and data.get("device") == node:
                    break
            await q.execute("blockdev-del", {"node-name": node})

        self.qmp(remove)
