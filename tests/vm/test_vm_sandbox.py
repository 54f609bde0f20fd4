"""Sandboxes of a non-default size formatted inside the utility VM (SPEC §3 CreateReadWrite,
§4.5): the image is sound and exactly as large as asked, carries LCOW's ext4 features, was
formatted by the guest's mke2fs (not the host's), enforces its size with ENOSPC, and a failed
format (the guest's mke2fs refusing, the VM killed under it) leaves neither the sandbox nor a
temporary file, nor a QEMU process."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from qemu.qmp import QMPClient

import lcow.sandboxes.make as host_sandbox
from lcow.backends.vm import VmBackend
from lcow.backends.vm.svm import GLOBAL_ID
from lcow.errors import FailedPrecondition
from lcow.formats.vhd.vhdx_writer import create_dynamic_vhdx
from lcow.graphdriver.driver import Driver
from lcow.sandboxes import mke2fs_options
from tests.helpers import requires, run
from tests.vm.conftest import VmDriverFactory

pytestmark = requires("vm")

MIB = 1 << 20
GIB = 1 << 30


def backend(driver: Driver) -> VmBackend:
    assert isinstance(driver.backend, VmBackend)
    return driver.backend


def temporaries(root: Path) -> list[str]:
    """Temporary files (``*.tmp-*``) anywhere below ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp-" in p.name)


def check_image(path: Path, size: int, scratch: Path) -> dict[str, str]:
    """``qemu-img check`` clean, ``qemu-img info``'s exact virtual size, and the raw
    conversion ``e2fsck -fn`` clean; returns ``dumpe2fs -h``'s fields."""
    checked = run(["qemu-img", "check", "-f", "vhdx", "--output=json", path])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads(checked.stdout)
    assert report["check-errors"] == 0 and report.get("corruptions", 0) == 0, report
    info = run(["qemu-img", "info", "-f", "vhdx", "--output=json", path])
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["virtual-size"] == size
    raw = scratch / f"{path.parent.name}.raw"
    converted = run(["qemu-img", "convert", "-f", "vhdx", "-O", "raw", path, raw])
    assert converted.returncode == 0, converted.stderr
    try:
        assert raw.stat().st_size == size
        fsck = run(["e2fsck", "-fn", raw])
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        dump = run(["dumpe2fs", "-h", raw])
        assert dump.returncode == 0, dump.stderr
    finally:
        raw.unlink()
    fields = {}
    for line in dump.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def spy_host_formatting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every file the host's mke2fs path formats (an observation: the real function
    still runs). The VMs' scratch template is made there on purpose."""
    formatted: list[str] = []
    real: Callable[[str | os.PathLike[str], int], None] = host_sandbox._make

    def observed(path: str | os.PathLike[str], size: int) -> None:
        formatted.append(os.fspath(path))
        real(path, size)

    monkeypatch.setattr(host_sandbox, "_make", observed)
    return formatted


@pytest.mark.parametrize(
    ("mode", "opts", "size"),
    [
        ("per-id", {"size": "64M"}, 64 * MIB),
        ("global", {"lcow.sandboxsize": "21"}, 21 * GIB),
    ],
    ids=["per-id-size=64M", "global-sandboxsize=21"],
)
def test_sized_sandbox_formatted_in_guest(
    vm_driver: VmDriverFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    mode: str,
    opts: dict[str, str],
    size: int,
) -> None:
    formatted = spy_host_formatting(monkeypatch)
    drv = vm_driver(*(["lcow.globalmode=true"] if mode == "global" else []))
    caplog.set_level(logging.INFO, logger="lcow.backends.vm.backend")
    started = time.monotonic()
    drv.create_read_write("rw", None, opts)
    elapsed = time.monotonic() - started
    sandbox = drv.root.layer_dir("rw") / "sandbox.vhdx"
    # formatted in the guest: the agent ran mkfs; the host's mke2fs only made the scratch
    # template the VM boots with
    assert [r.getMessage() for r in caplog.records if "formatted in utility VM" in r.getMessage()]
    assert formatted == [str(drv.root.root / "cache" / "scratch.vhdx")]
    vms = backend(drv).table.started
    assert len(vms) == 1
    if mode == "global":
        console = vms[0].console.read_text(errors="replace")
        assert "lcow-agent: mkfs /dev/sd" in console and " done" in console, console[-500:]
        assert [e.id for e in backend(drv).vms()] == [GLOBAL_ID]  # lives on until Cleanup
    else:
        assert not vms[0].alive() and backend(drv).vms() == []  # the id's VM is torn down
    assert elapsed < 40
    fields = check_image(sandbox, size, tmp_path)
    features = set(fields["Filesystem features"].split())
    assert "has_journal" not in features and "resize_inode" not in features, features
    assert {"sparse_super2", "uninit_bg", "extent", "flex_bg"} <= features, features
    assert fields["Block size"] == "4096" and fields["Inode size"] == "256"
    assert int(fields["Block count"]) * 4096 == size
    assert fields["Filesystem state"] == "clean"
    assert not (drv.root.cache / "sandbox.vhdx").exists()  # other sizes are never cached
    assert temporaries(drv.root.root) == []


def test_sized_sandbox_enforces_its_size(vm_driver: VmDriverFactory) -> None:
    drv = vm_driver()
    drv.create_read_write("small", None, {"size": "64M"})
    view = drv.get("small")
    chunk = os.urandom(MIB)
    written = 0
    with pytest.raises(OSError) as raised:
        for written in range(80):
            view.write_file(f"/fill{written}", chunk)
    assert raised.value.errno == errno.ENOSPC
    assert 40 <= written < 64  # what ext4's metadata and the 5 % reserve leave of 64 MiB
    view.remove(f"/fill{written - 1}")
    view.write_file("/after", b"room again")
    assert view.readfile("/after") == b"room again"
    drv.put("small")


def test_guest_mkfs_refusal_leaves_nothing(vm_driver: VmDriverFactory) -> None:
    """The guest's mke2fs refuses a 64 KiB disk (too small for the proposed file system):
    the disk is detached, the error names the layer, no sandbox and no temporary file remain,
    and the per-id VM is gone."""
    drv = vm_driver()
    drv.create("tiny", None)
    with pytest.raises(FailedPrecondition) as raised:
        backend(drv).format_sandbox(drv.root.layer_dir("tiny") / "sandbox.vhdx", 64 << 10)
    message = str(raised.value)
    assert message.startswith("lcowdriver: createreadwrite: tiny: formatting the sandbox")
    assert "mke2fs on /dev/sd" in message and "exit code 1" in message, message
    assert "Not enough space" in message, message
    assert not (drv.root.layer_dir("tiny") / "sandbox.vhdx").exists()
    assert temporaries(drv.root.root) == []
    assert backend(drv).vms() == [] and not backend(drv).table.started[0].alive()
    drv.create_read_write("tiny", None, {"size": "64M"})  # the same id works afterwards
    assert (drv.root.layer_dir("tiny") / "sandbox.vhdx").is_file()


def test_guest_mkfs_refusal_detaches_before_raising(vm_driver: VmDriverFactory) -> None:
    """In a running (global) VM: after the refused format the LUN is free again — the next
    format reuses it — and QEMU holds no block node of it."""
    drv = vm_driver("lcow.globalmode=true")
    drv.create("warm", None)
    drv.get("warm").readdir("/")
    entry = backend(drv).vms()[0]
    assert entry.vm is not None
    vm = entry.vm

    async def nodes(q: QMPClient) -> set[str]:
        found = await q.execute("query-named-block-nodes")
        assert isinstance(found, list)
        return {n["node-name"] for n in found}

    async def devices(q: QMPClient) -> set[str]:
        found = await q.execute("qom-list", {"path": "/machine/peripheral"})
        assert isinstance(found, list)
        return {d["name"] for d in found if d["type"].startswith("child<scsi-hd")}

    before = (vm.qmp(nodes), vm.qmp(devices), dict(entry.disks))
    assert before[1] == {"d1"}  # warm's sandbox (Get gives a content-less layer one)
    tiny, good = drv.root.root / "tiny.vhdx", drv.root.root / "good.vhdx"
    create_dynamic_vhdx(tiny, 64 << 10)
    create_dynamic_vhdx(good, 64 * MIB)
    with entry.lock, pytest.raises(FailedPrecondition, match="Not enough space") as raised:
        entry.format_disk(tiny, mke2fs_options(64 << 10))
    assert "(LUN 2)" in str(raised.value)
    assert (vm.qmp(nodes), vm.qmp(devices), dict(entry.disks)) == before
    with entry.lock:
        assert entry.format_disk(good, mke2fs_options(64 * MIB)).startswith("/dev/sd")
    assert (vm.qmp(nodes), vm.qmp(devices), dict(entry.disks)) == before
    assert check_image(good, 64 * MIB, drv.root.root)["Filesystem state"] == "clean"
    drv.put("warm")


def test_vm_killed_while_formatting(vm_driver: VmDriverFactory) -> None:
    """SIGKILL to QEMU as soon as the agent starts mke2fs: CreateReadWrite fails naming the
    layer and the VM, the temporary VHDX is gone, no layer is left (the folder the call made is
    removed), no QEMU remains; the next CreateReadWrite boots a fresh VM and succeeds."""
    drv = vm_driver()
    table = backend(drv).table
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:
        while not stop.wait(0.001):
            for vm in list(table.started):
                try:
                    console = vm.console.read_bytes()
                except OSError:
                    continue
                if b"lcow-agent: mkfs" in console and vm.pid is not None:
                    os.kill(vm.pid, signal.SIGKILL)
                    killed.append(vm.pid)
                    return

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        with pytest.raises(FailedPrecondition) as raised:
            drv.create_read_write("k", None, {"lcow.sandboxsize": "21"})
    finally:
        stop.set()
        thread.join()
    assert killed, "the agent never logged its mkfs"
    message = str(raised.value)
    assert "lcowdriver: createreadwrite: k:" in message and "utility VM k" in message, message
    assert not drv.exists("k")
    assert temporaries(drv.root.root) == []
    assert backend(drv).vms() == []
    assert not table.started[0].alive() and not table.started[0].runtime.exists()
    drv.create_read_write("k", None, {"size": "64M"})
    assert (drv.root.layer_dir("k") / "sandbox.vhdx").is_file()
    assert len(table.started) == 2 and not table.started[1].alive()
