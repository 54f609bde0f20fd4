"""The host backend's storage daemon kept between sandboxes (``Driver.linger``, issue 17).

Long-running front ends (the plugin, the snapshotter) let one ``qemu-storage-daemon`` per data
root outlive its last export for a while, so a container's sandbox does not pay its start and
stop. What must hold: the idle daemon is reused and stops on its own; one that exports is
never stopped by the timer, nor by a front end letting go; a killed front end or a killed
daemon leaves nothing the next backend cannot clean or use. Real daemons, real mounts.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lcow.backends.host import STATE_FOLDER, kernel
from lcow.backends.host.table import MountTable
from lcow.graphdriver.driver import Driver
from tests.helpers import diff_files, host_leftovers, requires

pytestmark = requires("host", "mke2fs")


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data root"
    yield path
    if path.exists():
        Driver(path, ["lcow.backend=host"]).cleanup()
    assert host_leftovers(tmp_path) == []


@pytest.fixture
def driver(root: Path) -> Iterator[Driver]:
    drv = Driver(root, ["lcow.backend=host"])
    drv.create("base")
    drv.apply_diff("base", None, io.BytesIO(_tar({"a": b"A"})))
    yield drv
    drv.stop_lingering()


def daemon_pid(root: Path) -> int | None:
    """The storage daemon's pid if it runs (its pid file names a live process)."""
    try:
        pid = int((root / STATE_FOLDER / "qsd.pid").read_text())
    except (OSError, ValueError):
        return None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None
    return None if state == "Z" else pid


def wait_until(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.05)
    return False


def use_sandbox(driver: Driver, layer_id: str, data: bytes) -> None:
    """A container's life: a sandbox over ``base``, written and read back, then released."""
    driver.create_read_write(layer_id, "base")
    view = driver.get(layer_id)
    try:
        Path(view.path, "w").write_bytes(data)
        assert Path(view.path, "w").read_bytes() == data
        assert Path(view.path, "a").read_bytes() == b"A"
    finally:
        driver.put(layer_id)


def test_without_linger_the_daemon_stops_with_its_last_export(driver: Driver, root: Path) -> None:
    use_sandbox(driver, "c1", b"1")
    assert daemon_pid(root) is None


def test_a_lingering_daemon_serves_the_next_sandbox_then_stops_when_idle(
    driver: Driver, root: Path
) -> None:
    driver.linger(1.0)
    use_sandbox(driver, "c1", b"1")
    first = daemon_pid(root)
    assert first is not None  # idle, kept
    use_sandbox(driver, "c2", b"2")
    assert daemon_pid(root) == first  # reused: no second start
    time.sleep(0.6)
    use_sandbox(driver, "c3", b"3")  # a use restarts the idle wait
    time.sleep(0.6)
    assert daemon_pid(root) == first
    assert wait_until(lambda: daemon_pid(root) is None, 10)
    assert not (root / STATE_FOLDER / "qsd.pid").exists()
    assert not (root / STATE_FOLDER / "qsd.sock").exists()
    use_sandbox(driver, "c4", b"4")  # and starts again on demand
    view = driver.get("c1")  # what was written survives the daemon's stop and start
    try:
        assert Path(view.path, "w").read_bytes() == b"1"
    finally:
        driver.put("c1")


def test_the_idle_timer_never_stops_a_daemon_that_exports(driver: Driver, root: Path) -> None:
    driver.linger(0.3)
    use_sandbox(driver, "c1", b"1")  # the timer starts
    driver.create_read_write("held", "base")
    view = driver.get("held")  # and an export begins before it fires
    try:
        pid = daemon_pid(root)
        time.sleep(1.0)
        assert daemon_pid(root) == pid is not None
        Path(view.path, "late").write_bytes(b"still served")
        os.sync()
        assert Path(view.path, "late").read_bytes() == b"still served"
    finally:
        driver.put("held")
    assert wait_until(lambda: daemon_pid(root) is None, 10)


def test_letting_go_stops_an_idle_daemon_and_keeps_one_that_serves(
    driver: Driver, root: Path
) -> None:
    """A front end's shutdown (``stop_lingering``) while another sandbox is exported: that one
    keeps its daemon and its view, which a restarted front end adopts."""
    driver.linger(60)
    use_sandbox(driver, "c1", b"1")
    driver.create_read_write("held", "base")
    view = driver.get("held")
    pid = daemon_pid(root)
    driver.stop_lingering()
    assert daemon_pid(root) == pid is not None
    restarted = Driver(root, ["lcow.backend=host"])  # as the restarted server would
    restarted.linger(60)
    assert restarted.view_count("held") == 1 and daemon_pid(root) == pid
    Path(view.path, "after restart").write_bytes(b"ok")
    use_sandbox(restarted, "c2", b"2")  # the same daemon serves a new sandbox meanwhile
    assert daemon_pid(root) == pid
    restarted.put("held")
    assert daemon_pid(root) == pid  # idle now, lingering
    restarted.stop_lingering()
    assert daemon_pid(root) is None
    again = restarted.get("held")
    try:
        assert Path(again.path, "after restart").read_bytes() == b"ok"
    finally:
        restarted.put("held")


def test_a_killed_front_end_leaves_an_idle_daemon_the_next_backend_stops(root: Path) -> None:
    Driver(root, ["lcow.backend=host"]).create("base")
    script = (
        "import os, signal, sys\n"
        "from lcow.graphdriver.driver import Driver\n"
        f"d = Driver({str(root)!r}, ['lcow.backend=host'])\n"
        "d.linger(600)\n"
        "d.create_read_write('c1', 'base')\n"
        "d.get('c1')\n"
        "d.put('c1')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert daemon_pid(root) is not None  # nobody's timer is left to stop it
    Driver(root, ["lcow.backend=host"])  # any next backend over the root reconciles
    assert daemon_pid(root) is None
    assert host_leftovers(root) == []


def test_an_idle_daemon_killed_is_replaced_on_demand(driver: Driver, root: Path) -> None:
    driver.linger(60)
    use_sandbox(driver, "c1", b"1")
    pid = daemon_pid(root)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: daemon_pid(root) is None, 10)
    use_sandbox(driver, "c2", b"2")
    assert daemon_pid(root) not in (None, pid)
    view = driver.get("c1")  # its idle sandbox sat on the dead export: mounted afresh
    try:
        (disk,) = [d for k, d in MountTable(root / STATE_FOLDER).peek().disks.items()
                   if k.startswith("c1:")]  # fmt: skip
        assert (root / STATE_FOLDER / "e" / disk.slot).stat().st_size > 0  # a live export
        assert Path(view.path, "w").read_bytes() == b"1"
        Path(view.path, "later").write_bytes(b"ok")
        os.sync()
    finally:
        driver.put("c1")
    driver.stop_lingering()  # written home on the new daemon
    assert diff_files(driver, "c1", "base") == {"w": b"1", "later": b"ok"}


def test_a_daemon_killed_while_it_serves_costs_only_unsynced_writes(
    driver: Driver, root: Path
) -> None:
    """SIGKILL of the daemon under a mounted sandbox: that view is broken (its unsynced writes
    are lost), but what was synced is in the sandbox, other sandboxes get a new daemon, and
    releasing the broken view leaves no dead FUSE mount behind."""
    driver.linger(60)
    driver.create_read_write("c1", "base")
    view = driver.get("c1")
    Path(view.path, "synced").write_bytes(b"on disk")
    os.sync()
    pid = daemon_pid(root)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: daemon_pid(root) is None, 10)
    use_sandbox(driver, "c2", b"2")  # a new daemon
    driver.put("c1")  # its sandbox, on a dead export, does not idle: unmounted
    assert own_disks(root, "c1") == {}
    live = [f"{root / STATE_FOLDER}/e/{d.slot}" for d in MountTable(root / STATE_FOLDER)
            .peek().disks.values() if d.exported]  # fmt: skip
    assert len(live) == 1  # c2's, idle on the new daemon
    dead = [
        x
        for x in host_leftovers(root)
        if "/mounts/e/" in x and not any(x.endswith(p) for p in live)
    ]
    assert dead == []  # no dead FUSE mount
    again = driver.get("c1")
    try:
        assert Path(again.path, "synced").read_bytes() == b"on disk"
    finally:
        driver.put("c1")


def test_a_new_backend_unmounts_the_dead_export_of_a_killed_daemon(
    driver: Driver, root: Path
) -> None:
    driver.linger(60)
    driver.create_read_write("c1", "base")
    driver.get("c1")
    os.kill(daemon_pid(root) or 0, signal.SIGKILL)
    assert wait_until(lambda: daemon_pid(root) is None, 10)
    use_sandbox(driver, "c2", b"2")  # a new daemon runs; the dead FUSE mount is not its own
    Driver(root, ["lcow.backend=host"])
    exports = [x for x in host_leftovers(root) if x.startswith("mount") and "/e/" in x]
    assert exports == []


def disk_mounts(root: Path) -> list[str]:
    """Mount points of layer disks (``d/<slot>``) below the data root."""
    return sorted(p for p, _ in kernel.mounts_below(root / STATE_FOLDER / "d"))


def test_idle_layer_disks_are_reused_then_unmounted(driver: Driver, root: Path) -> None:
    driver.linger(1.0)
    use_sandbox(driver, "c1", b"1")
    idle = disk_mounts(root)
    assert len(idle) == 2  # base's image and c1's sandbox, idle
    devices = {k: d.device for k, d in MountTable(root / STATE_FOLDER).peek().disks.items()}
    assert driver.view_count("c1") == 0
    use_sandbox(driver, "c2", b"2")
    assert set(idle) < set(disk_mounts(root))  # base counted again, not mounted a second time
    table = MountTable(root / STATE_FOLDER).peek()
    assert {k: d.device for k, d in table.disks.items() if k in devices} == devices
    assert [d.users for d in table.disks.values()] == [0, 0, 0]
    assert wait_until(lambda: disk_mounts(root) == [] and daemon_pid(root) is None, 10)
    assert host_leftovers(root) == []
    view = driver.get("c2")  # the idle stop's unmount wrote the sandboxes home
    try:
        assert Path(view.path, "w").read_bytes() == b"2"
    finally:
        driver.put("c2")


def own_disks(root: Path, layer_id: str) -> dict[str, tuple[str, int]]:
    """The table's disks of ``layer_id``'s folder: key -> (loop device, users)."""
    table = MountTable(root / STATE_FOLDER).peek()
    return {k: (d.device, d.users) for k, d in table.disks.items()
            if k.split(":", 1)[0] == layer_id}  # fmt: skip


def exports(root: Path) -> list[str]:
    """The storage daemon's exports right now."""
    from lcow.backends.host.storage_daemon import StorageDaemon

    return sorted(StorageDaemon(root / STATE_FOLDER, 30.0).exports())


def test_a_released_sandbox_lingers_mounted_and_exported_for_the_next_get(
    driver: Driver, root: Path
) -> None:
    """dockerd's container start: the ``-init`` layer is Got and Put, then is the lower of the
    container layer's view, which is Got, Put and Got again. Each sandbox is exported and
    mounted once: a released one stays, idle, and the next view counts it again."""
    driver.linger(60)
    driver.create_read_write("c-init", "base")
    view = driver.get("c-init")
    Path(view.path, "hosts").write_bytes(b"127.0.0.1 c\n")
    driver.put("c-init")
    (init_key,) = own_disks(root, "c-init")
    device, users = own_disks(root, "c-init")[init_key]
    assert users == 0 and exports(root) == ["x" + MountTable(root / STATE_FOLDER).peek()
                                            .disks[init_key].slot]  # fmt: skip
    driver.create_read_write("c", "c-init")
    for round_ in range(2):
        view = driver.get("c")
        assert own_disks(root, "c-init") == {init_key: (device, 1)}  # the same mount
        assert Path(view.path, "hosts").read_bytes() == b"127.0.0.1 c\n"
        Path(view.path, f"w{round_}").write_bytes(b"x" * 200_000)
        driver.put("c")
        if round_ == 0:
            first = own_disks(root, "c")
    assert own_disks(root, "c") == first  # the container's own sandbox was kept too
    assert len(exports(root)) == 2
    # What the views wrote is read consistently while they idle (Diff freezes them) ...
    assert diff_files(driver, "c", "c-init") == {"w0": b"x" * 200_000, "w1": b"x" * 200_000}
    assert diff_files(driver, "c-init", "base") == {"hosts": b"127.0.0.1 c\n"}
    # ... and Remove unmounts and unexports a layer's idle sandbox (after it answered: the
    # front end's letting go waits for that).
    driver.remove("c")
    driver.remove("c-init")
    driver.stop_lingering()
    assert own_disks(root, "c") == {} and own_disks(root, "c-init") == {}
    assert exports(root) == [] and disk_mounts(root) == []


def test_apply_diff_over_a_lingering_sandbox_unmounts_it_first(driver: Driver, root: Path) -> None:
    """A snapshotter's Commit: the view Put, the sandbox's Diff ApplyDiffed into the same layer,
    which deletes the sandbox. No mount or export may keep the deleted file alive."""
    driver.linger(60)
    use_sandbox(driver, "c1", b"1")
    assert len(own_disks(root, "c1")) == 1 and len(exports(root)) == 1
    with driver.diff("c1") as stream:
        tar = stream.read()
    driver.apply_diff("c1", None, io.BytesIO(tar))
    assert own_disks(root, "c1") == {} and exports(root) == []
    assert [x for x in host_leftovers(root) if "sandbox" in x] == []
    view = driver.get("c1")
    try:
        assert Path(view.path, "w").read_bytes() == b"1"
    finally:
        driver.put("c1")


def test_apply_diff_of_a_lingering_sandboxs_own_diff_finishes(root: Path) -> None:
    """A snapshotter's Commit streams a layer's Diff straight into its ApplyDiff. The Diff's
    producer reads the idle sandbox under the backend's lock until its last byte: releasing
    the idle disk before the conversion had read the tar deadlocked once the tar outgrew the
    pipe (run in a process of its own, bounded, so that a regression fails rather than hangs)."""
    Driver(root, ["lcow.backend=host"]).create("base")
    script = (
        "from pathlib import Path\n"
        "from lcow.graphdriver.driver import Driver\n"
        f"d = Driver({str(root)!r}, ['lcow.backend=host'])\n"
        "d.linger(600)\n"
        "d.create_read_write('c1', 'base')\n"
        "Path(d.get('c1').path, 'big').write_bytes(bytes(range(256)) * 4096)\n"
        "d.put('c1')\n"
        "with d.diff('c1', 'base') as stream:\n"
        "    d.apply_diff('c1', 'base', stream)\n"
        "d.stop_lingering()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        Driver(root, ["lcow.backend=host"]).cleanup()
        pytest.fail("ApplyDiff of the layer's own Diff deadlocked")
    assert proc.returncode == 0, stderr
    again = Driver(root, ["lcow.backend=host"])
    assert diff_files(again, "c1", "base") == {"big": bytes(range(256)) * 4096}
    assert own_disks(root, "c1") == {} and exports(root) == []
    assert not (root / "c1" / "sandbox.vhdx").exists()


def test_a_killed_front_end_leaves_an_idle_sandbox_whose_writes_the_next_backend_keeps(
    root: Path,
) -> None:
    """SIGKILL right after a Put: the sandbox idles, mounted, its writes maybe only in memory.
    The next backend over the root unmounts it (which writes them home) and unexports it."""
    drv = Driver(root, ["lcow.backend=host"])
    drv.create("base")
    drv.apply_diff("base", None, io.BytesIO(_tar({"a": b"A"})))
    script = (
        "import os, signal\n"
        "from pathlib import Path\n"
        "from lcow.graphdriver.driver import Driver\n"
        f"d = Driver({str(root)!r}, ['lcow.backend=host'])\n"
        "d.linger(600)\n"
        "d.create_read_write('c1', 'base')\n"
        "Path(d.get('c1').path, 'w').write_bytes(b'z' * 300000)\n"
        "d.put('c1')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(own_disks(root, "c1")) == 1 and len(exports(root)) == 1  # idle, left behind
    restarted = Driver(root, ["lcow.backend=host"])
    assert own_disks(root, "c1") == {} and daemon_pid(root) is None
    assert host_leftovers(root) == []
    assert diff_files(restarted, "c1", "base") == {"w": b"z" * 300_000}
    assert host_leftovers(root) == []


def test_an_idle_disk_is_not_in_use_and_goes_with_its_layer(driver: Driver, root: Path) -> None:
    driver.linger(60)
    driver.create("solo")
    driver.apply_diff("solo", None, io.BytesIO(_tar({"old": b"1"})))
    view = driver.get("solo")  # a lone read-only layer: its disk is the view
    assert sorted(os.listdir(view.path)) == ["lost+found", "old"]
    driver.put("solo")
    assert len(disk_mounts(root)) == 1  # idle
    # ApplyDiff refuses a layer a view uses; an idle disk is no use: the new image is
    # written, and the next view shows it, not the idle mount of the old one.
    driver.apply_diff("solo", None, io.BytesIO(_tar({"new": b"2"})))
    view = driver.get("solo")
    try:
        assert sorted(os.listdir(view.path)) == ["lost+found", "new"]
    finally:
        driver.put("solo")
    driver.remove("solo")  # its idle disks are unmounted with it, right after it answered
    assert not driver.exists("solo")
    assert wait_until(lambda: disk_mounts(root) == [], 10)


def test_letting_go_unmounts_idle_disks_but_not_a_held_view(driver: Driver, root: Path) -> None:
    driver.linger(60)
    driver.create("other")
    driver.apply_diff("other", None, io.BytesIO(_tar({"o": b"o"})))
    driver.get("other")
    driver.put("other")  # idle
    driver.create_read_write("held", "base")
    view = driver.get("held")
    before = disk_mounts(root)
    assert len(before) == 3  # other (idle), base and held's sandbox
    driver.stop_lingering()
    assert len(disk_mounts(root)) == 2
    assert Path(view.path, "a").read_bytes() == b"A"
    driver.put("held")


def removing_folders(root: Path) -> list[str]:
    """``-removing`` folders in the data root."""
    return sorted(p.name for p in root.iterdir() if p.name.endswith("-removing"))


def test_a_lingering_driver_deletes_a_removed_layer_after_remove_answers(
    driver: Driver, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Remove's commit point is the rename: the layer is absent at once (even for a Create of
    the same id); its idle sandbox is released and its files deleted on a background thread,
    which letting go waits for. Meanwhile a new layer of the same id is read as itself."""
    from lcow.graphdriver import deferred

    gate = threading.Event()
    real_retire = deferred._retire

    def gated_retire(*args: object) -> None:  # holds the deletions back until the gate opens
        gate.wait(30)
        real_retire(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(deferred, "_retire", gated_retire)
    driver.linger(60)
    use_sandbox(driver, "c0", b"old")
    (old_key,) = own_disks(root, "c0")
    driver.remove("c0")
    (retired,) = removing_folders(root)  # Remove answered before the deletion ran
    assert (root / retired / "sandbox.vhdx").exists() and not driver.exists("c0")
    assert list(own_disks(root, "c0")) == [old_key]  # still idle, released in the background
    use_sandbox(driver, "c0", b"new")  # the same id again, the same path, another file
    assert diff_files(driver, "c0", "base") == {"w": b"new"}  # not the idle old one's
    gate.set()
    driver.stop_lingering()
    assert removing_folders(root) == [] and host_leftovers(root) == []
    assert diff_files(driver, "c0", "base") == {"w": b"new"}
    driver.remove("c0")
    driver.linger(60)
    for round_ in range(3):  # the same id removed again while an earlier deletion may run
        use_sandbox(driver, "c1", str(round_).encode())
        driver.remove("c1")
        assert not driver.exists("c1") and "c1" not in driver.root.layer_ids()
    driver.stop_lingering()
    assert own_disks(root, "c1") == {} and removing_folders(root) == []
    assert host_leftovers(root) == []


def test_a_deletion_a_kill_interrupts_is_swept_by_cleanup(root: Path) -> None:
    Driver(root, ["lcow.backend=host"]).create("base")
    script = (
        "import os, signal\n"
        "from lcow.graphdriver.driver import Driver\n"
        f"d = Driver({str(root)!r}, ['lcow.backend=host'])\n"
        "d.linger(600)\n"
        "d._deletions.submit = lambda folder: None  # a fault: the kill lands before it runs\n"
        "d.create_read_write('c1', 'base')\n"
        "d.remove('c1')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (left,) = removing_folders(root)
    assert left.startswith("c1.")
    again = Driver(root, ["lcow.backend=host"])
    assert not again.exists("c1") and again.root.layer_ids() == ["base"]
    again.cleanup()
    assert removing_folders(root) == []
