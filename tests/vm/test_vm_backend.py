"""The vm backend beyond the shared suites: modes and counts (SPEC §4.1 to §4.4), failures, the
hot-add rollback, dm-verity inside the guest, and the isolation audit (no layer image is ever
mounted by the host kernel)."""

from __future__ import annotations

import errno
import io
import os
import shutil
import signal
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lcow.backends.vm import VmBackend
from lcow.backends.vm.svm import GLOBAL_ID
from lcow.errors import FailedPrecondition, LcowError
from lcow.graphdriver.driver import Driver
from lcow.testing import graphtest
from lcow.testing.graphtest import ViewBuilder
from tests.helpers import requires
from tests.vm.conftest import VmDriverFactory

pytestmark = requires("vm")


def layer_tar(files: dict[str, bytes | None]) -> io.BytesIO:
    """A layer tar: ``None`` values are directories."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out.seek(0)
    return out


def backend(driver: Driver) -> VmBackend:
    assert isinstance(driver.backend, VmBackend)
    return driver.backend


def pids(driver: Driver) -> dict[str, int]:
    """Running VMs: id → QEMU pid."""
    return {e.id: e.vm.pid for e in backend(driver).vms() if e.vm and e.vm.pid}


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "Z"


# -- modes and counts ---------------------------------------------------------------------------


def test_per_id_mode_vm_per_layer(vm_driver: VmDriverFactory) -> None:
    drv = vm_driver()
    drv.create("a", None)
    drv.apply_diff("a", None, layer_tar({"f": b"a"}))
    drv.create("b", "a")
    drv.apply_diff("b", "a", layer_tar({"g": b"b"}))
    view_a, view_b = drv.get("a"), drv.get("b")
    assert pids(drv) == {}  # Get is lazy: nothing starts before a file operation
    assert view_a.readfile("/f") == b"a"
    assert view_b.readfile("/f") == b"a" and view_b.readfile("/g") == b"b"
    running = pids(drv)
    assert set(running) == {"a", "b"}
    entry = next(e for e in backend(drv).vms() if e.id == "b")
    assert sorted(d.lun for d in entry.disks.values()) == [1, 2]  # LUN 0: scratch
    assert (drv.root.scratch / "b.vhdx").exists()
    drv.get("b")  # a second Get of b: counted, no new VM
    drv.put("b")
    assert set(pids(drv)) == {"a", "b"}
    drv.put("b")  # the last Put: b's VM stops, its scratch goes
    time.sleep(0.1)
    assert gone(running["b"]) and set(pids(drv)) == {"a"}
    assert not (drv.root.scratch / "b.vhdx").exists()
    drv.remove("a")  # Remove force-terminates the id's VM whatever its count
    assert gone(running["a"]) and pids(drv) == {}


def test_global_mode_one_vm(vm_driver: VmDriverFactory) -> None:
    drv = vm_driver("lcow.globalmode=true")
    for name, parent in (("a", None), ("b", "a")):
        drv.create(name, parent)
        drv.apply_diff(name, parent, layer_tar({name: name.encode()}))
    drv.get("a").readdir("/")
    drv.get("b").readdir("/")
    running = pids(drv)
    assert list(running) == [GLOBAL_ID]
    entry = backend(drv).vms()[0]
    assert len(entry.disks) == 2  # a's disk is shared by both views (counted twice)
    assert [d.users for d in sorted(entry.disks.values(), key=lambda d: d.lun)] == [2, 1]
    drv.put("a")
    drv.put("b")
    assert entry.disks == {} and entry.unions == {}
    assert pids(drv) == running  # unforced terminations are no-ops in global mode
    drv.cleanup()
    assert gone(running[GLOBAL_ID]) and pids(drv) == {}


def test_lazy_start_and_put_without_operation(vm_driver: VmDriverFactory) -> None:
    drv = vm_driver("lcow.globalmode=true")
    drv.create("a", None)
    drv.get("a")
    drv.put("a")  # no file operation: nothing was started, nothing to undo
    assert pids(drv) == {}
    drv.put("a")  # Put without Get: a no-op


def test_hot_add_rollback(vm_driver: VmDriverFactory) -> None:
    """A view whose second disk cannot be mounted: the first is detached again, the VM lock
    is free (no deadlock) and the next view works."""
    drv = vm_driver("lcow.globalmode=true")
    drv.create("good", None)
    drv.apply_diff("good", None, layer_tar({"ok": b"fine"}))
    drv.create("bad", "good")
    drv.apply_diff("bad", "good", layer_tar({"x": b"x"}))
    image = drv.root.layer_dir("bad") / "layer.vhd"
    with open(image, "r+b") as f:  # wreck the ext4 superblock magic
        f.seek(1024 + 0x38)
        f.write(b"\0\0")
    drv.create_read_write("top", "bad")
    with pytest.raises((OSError, LcowError)) as raised:
        drv.get("top").readdir("/")
    assert "mounting" in str(raised.value)
    entry = backend(drv).vms()[0]
    assert entry.disks == {} and entry.unions == {}
    assert entry.lock.acquire(timeout=5)
    entry.lock.release()
    assert drv.get("good").readfile("/ok") == b"fine"
    drv.put("good")
    drv.put("top")


# -- failures -----------------------------------------------------------------------------------


class _KillingStream(io.RawIOBase):
    """A tar stream that kills the VM after ``after`` bytes."""

    def __init__(self, data: bytes, after: int, kill: object) -> None:
        self.data, self.at, self.after, self.kill = data, 0, after, kill

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if self.at >= self.after and self.kill is not None:
            assert callable(self.kill)
            self.kill()
            self.kill = None
        n = min(len(buffer), len(self.data) - self.at)
        buffer[:n] = self.data[self.at : self.at + n]
        self.at += n
        return n


def test_vm_killed_mid_operation(vm_driver: VmDriverFactory) -> None:
    drv = vm_driver("lcow.globalmode=true")
    drv.create_read_write("rw", None)
    view = drv.get("rw")
    view.write_file("/before", b"1")
    assert [c.path for c in drv.changes("rw", None)] == ["/before"]  # synced to the image
    first = pids(drv)[GLOBAL_ID]
    big = layer_tar({f"f{i}": os.urandom(1 << 20) for i in range(16)}).getvalue()
    stream = _KillingStream(big, 4 << 20, lambda: os.kill(first, signal.SIGKILL))
    started = time.monotonic()
    with pytest.raises(FailedPrecondition) as raised:
        view.extract_archive("/", io.BufferedReader(stream))
    assert time.monotonic() - started < 30
    assert "utility VM" in str(raised.value)
    assert gone(first)
    # the next operation starts a fresh VM and mounts the view again
    assert view.readfile("/before") == b"1"
    second = pids(drv)[GLOBAL_ID]
    assert second != first
    view.write_file("/after", b"2")
    drv.put("rw")
    assert sorted(drv.changes("rw", None), key=str)[0].path in ("/after", "/before")
    runtimes = [vm.runtime for vm in backend(drv).table.started]
    assert not runtimes[0].exists()  # the dead VM's sockets went with it


def test_vm_killed_between_operations(vm_driver: VmDriverFactory) -> None:
    drv = vm_driver()
    drv.create("a", None)
    drv.apply_diff("a", None, layer_tar({"f": b"a"}))
    view = drv.get("a")
    assert view.readfile("/f") == b"a"
    os.kill(pids(drv)["a"], signal.SIGKILL)
    time.sleep(0.2)
    assert view.readfile("/f") == b"a"  # a dead VM is noticed and replaced
    drv.put("a")
    assert pids(drv) == {}


# -- dm-verity ----------------------------------------------------------------------------------


def test_dm_verity_tampered_layer_fails_to_read(vm_driver: VmDriverFactory) -> None:
    drv = vm_driver("lcow.globalmode=true", "lcow.dmverity=true")
    good, bad = os.urandom(64 << 10), os.urandom(64 << 10)
    drv.create("intact", None)
    drv.apply_diff("intact", None, layer_tar({"good": good, "bad": bad}))
    drv.create("tampered", None)
    drv.apply_diff("tampered", None, layer_tar({"good": good, "bad": bad}))
    assert "root_hash" in drv.root.read_meta("tampered")
    image = drv.root.layer_dir("tampered") / "layer.vhd"
    raw = bytearray(image.read_bytes())
    at = raw.find(bad[:64])
    assert at > 0 and at < drv.root.read_meta("tampered")["hash_offset"]
    raw[at + 100] ^= 0x01  # one byte of the ext4 area
    image.write_bytes(bytes(raw))
    intact = drv.get("intact")
    assert intact.readfile("/good") == good and intact.readfile("/bad") == bad
    view = drv.get("tampered")
    assert view.readfile("/good") == good  # untouched blocks verify
    with pytest.raises(OSError) as raised:
        view.readfile("/bad")
    assert raised.value.errno == errno.EIO
    drv.put("tampered")
    drv.put("intact")


# -- isolation ----------------------------------------------------------------------------------


class _Auditor:
    """Polls the host's mount table and loop devices while a run goes on."""

    def __init__(self, root: Path) -> None:
        self.root = os.fspath(root.resolve())
        self.found: set[str] = set()
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Auditor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.poll()

    def poll(self) -> None:
        self.polls += 1
        with open("/proc/self/mountinfo", "rb") as table:
            for line in table:
                fields = os.fsdecode(line).split(" ")
                point, source = fields[4], fields[fields.index("-") + 2]
                if point.startswith(self.root) or source.startswith(self.root):
                    self.found.add(f"mount {source} on {point}")
        for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
            try:
                target = backing.read_text().strip()
            except OSError:
                continue
            if target.startswith(self.root):  # (other test runs may loop-mount their own)
                self.found.add(f"loop {backing.parent.parent.name} on {target}")


def test_isolation_no_host_mounts(vm_driver: VmDriverFactory, tmp_path: Path) -> None:
    """A full run (graphtest's cases, Diff/Changes of mounted sandboxes, per-id and global
    VMs) never mounts a layer image on the host nor attaches one to a loop device."""
    with _Auditor(tmp_path) as audit:
        drivers = [vm_driver("lcow.globalmode=true", name=f"global{i}") for i in range(3)]
        graphtest.test_create_snap(drivers[0], ViewBuilder)
        graphtest.test_diff_apply(drivers[1], ViewBuilder, 5)
        graphtest.test_changes(drivers[2], ViewBuilder, 5)
        per_id = vm_driver(name="per-id")
        per_id.create_read_write("rw", None)
        view = per_id.get("rw")
        view.write_file("/f", b"x")
        assert [c.path for c in per_id.changes("rw", None)] == ["/f"]  # read while mounted
        stream = per_id.diff("rw", None)
        assert len(stream.read()) > 0
        stream.close()
        per_id.put("rw")
        for drv in [*drivers, per_id]:
            drv.cleanup()
    assert audit.polls > 10
    assert audit.found == set()


@pytest.fixture(autouse=True)
def _no_threads_left() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    new = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert [t for t in new if not t.name.startswith("lcow-vm-spawn")] == []


# -- paths in QEMU's option syntax --------------------------------------------------------------


def test_commas_in_the_data_root_and_tmpdir(
    vm_driver: VmDriverFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QEMU reads ``,`` as an option separator: the runtime folder's sockets (under $TMPDIR)
    and the data root's scratch disk must reach it with their commas doubled, not as options."""
    runtime_parent = Path(tempfile.mkdtemp(prefix="lcow,vm=", dir="/tmp"))
    try:
        monkeypatch.setattr(tempfile, "tempdir", str(runtime_parent))
        drv = vm_driver("lcow.globalmode=true", name="root,readonly=on")
        drv.create("a", None)
        drv.apply_diff("a", None, layer_tar({"f": b"comma"}))
        drv.create_read_write("rw", "a")
        view = drv.get("rw")
        assert view.readfile("/f") == b"comma"
        view.write_file("/g", b"written")
        assert view.readfile("/g") == b"written"
        drv.put("rw")
        drv.cleanup()
    finally:
        shutil.rmtree(runtime_parent, ignore_errors=True)


def test_a_tmpdir_too_deep_for_unix_sockets(
    vm_driver: VmDriverFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The VM's QMP and agent sockets live in its runtime folder; under a ``$TMPDIR`` deeper
    than ``sockaddr_un`` holds, the folder goes to ``/tmp`` instead of QEMU refusing the path."""
    deep = Path(tempfile.mkdtemp(prefix="lcow-deep-", dir="/tmp")) / ("t" * 50) / ("u" * 50)
    deep.mkdir(parents=True)
    try:
        monkeypatch.setattr(tempfile, "tempdir", str(deep))
        drv = vm_driver("lcow.globalmode=true")
        drv.create("a", None)
        drv.apply_diff("a", None, layer_tar({"f": b"deep"}))
        assert drv.get("a").readfile("/f") == b"deep"
        drv.put("a")
        drv.cleanup()
        assert list(deep.iterdir()) == []
    finally:
        shutil.rmtree(deep.parent.parent, ignore_errors=True)
