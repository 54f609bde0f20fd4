"""The host backend against the real kernel: loop devices, ext4, overlayfs, qemu-storage-daemon.

What the conformance and graphtest suites do not cover: views as plain host directories read
and written with ``os``, counts shared between processes (CLI ``get`` then ``put``), adoption
and clean-up after a process dies, the lost+found mask, Diff/Changes of a mounted sandbox, busy
layers, quotas and verity images. Every test ends with nothing mounted, attached or running.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lcow.backends.host import STATE_FOLDER, kernel
from lcow.errors import Busy, NotSupported
from lcow.graphdriver.driver import Driver
from lcow.layerdiff.changes import Change, ChangeKind
from tests.helpers import diff_files, host_leftovers, requires, run

pytestmark = requires("host", "mke2fs")

LCOW = [sys.executable, "-m", "lcow"]


def _tar(files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data root"  # a space: paths are data, never shell text
    yield path
    with_driver = Driver(path, ["lcow.backend=host"]) if path.exists() else None
    if with_driver is not None:
        with_driver.cleanup()
    assert host_leftovers(tmp_path) == []


@pytest.fixture
def driver(root: Path) -> Driver:
    drv = Driver(root, ["lcow.backend=host"])
    drv.create("base")
    drv.apply_diff("base", None, io.BytesIO(_tar({"etc/os": b"lcow\n", "a": b"A"}, ("etc",))))
    drv.create("mid", "base")
    drv.apply_diff("mid", "base", io.BytesIO(_tar({"b": b"B", ".wh.a": b""})))
    return drv


def _names(path: str) -> list[str]:
    return sorted(os.listdir(path))


def test_view_is_the_chain_as_overlayfs_shows_it(driver: Driver) -> None:
    view = driver.get("mid")
    try:
        assert _names(view.path) == ["b", "etc"]  # a whited out, no lost+found
        assert Path(view.path, "etc/os").read_bytes() == b"lcow\n"
        assert view.path.startswith(str(driver.root.root / STATE_FOLDER))
        with pytest.raises(OSError):  # read-only layers stay read-only
            Path(view.path, "new").write_bytes(b"x")
    finally:
        driver.put("mid")
    assert not os.path.ismount(view.path)


def test_single_layer_view(driver: Driver) -> None:
    """One read-only layer is its disk's mount: its empty lost+found shows there (only)."""
    view = driver.get("base")
    try:
        assert _names(view.path) == ["a", "etc", "lost+found"]
        assert os.path.ismount(view.path)
    finally:
        driver.put("base")
    driver.create_read_write("on-base", "base")
    view = driver.get("on-base")
    try:
        assert _names(view.path) == ["a", "etc"]
    finally:
        driver.put("on-base")


def test_writes_land_in_the_sandbox(driver: Driver) -> None:
    driver.create_read_write("c1-init", "mid")
    driver.create_read_write("c1", "c1-init")
    view = driver.get("c1")
    try:
        Path(view.path, "new dir").mkdir()
        Path(view.path, "new dir/f").write_bytes(b"fresh")
        Path(view.path, "b").unlink()
        Path(view.path, "etc/os").write_bytes(b"changed\n")
        # Changes and Diff of a mounted sandbox see the writes (flushed, frozen meanwhile).
        live = driver.changes("c1", "c1-init")
    finally:
        driver.put("c1")
    expected = [  # /etc was copied up unchanged (same mtime): not reported, as overlay2
        Change("/b", ChangeKind.DELETE),
        Change("/etc/os", ChangeKind.MODIFY),
        Change("/new dir", ChangeKind.ADD),
        Change("/new dir/f", ChangeKind.ADD),
    ]
    assert sorted(live) == expected
    assert sorted(driver.changes("c1", "c1-init")) == expected
    with driver.diff("c1", "c1-init") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        names = sorted(m.name for m in tar)
    assert names == [".wh.b", "etc", "etc/os", "new dir", "new dir/f"]
    assert driver.diff_size("c1", "c1-init") == len(b"changed\n") + len(b"fresh")
    view = driver.get("c1")  # and they persist across mounts
    try:
        assert Path(view.path, "new dir/f").read_bytes() == b"fresh"
        assert not Path(view.path, "b").exists()
    finally:
        driver.put("c1")


def test_counts_and_shared_disks(driver: Driver) -> None:
    driver.create_read_write("c2", "mid")
    first = driver.get("c2")
    second = driver.get("c2")
    other = driver.get("mid")  # shares base's and mid's disks with c2's view
    assert first.path == second.path and driver.view_count("c2") == 2
    driver.put("c2")
    assert os.path.ismount(first.path)
    driver.put("c2")
    assert not os.path.ismount(first.path)
    assert Path(other.path, "b").read_bytes() == b"B"
    driver.put("mid")
    driver.put("mid")  # without a Get: a no-op
    state = (driver.root.root / STATE_FOLDER / "state.json").read_text()
    assert '"disks":{}' in state and '"views":{}' in state


def test_get_in_one_process_put_in_another(driver: Driver) -> None:
    base = [*LCOW, "--root", str(driver.root.root), "--backend", "host"]
    got = subprocess.run(
        [*base, "--json", "get", "mid"], capture_output=True, text=True, check=False
    )
    assert got.returncode == 0, got.stderr
    path = got.stdout.split('"Dir": "')[1].split('"')[0]
    assert os.path.ismount(path) and _names(path) == ["b", "etc"]
    assert driver.view_count("mid") == 1  # this process sees the other's Get
    put = subprocess.run([*base, "put", "mid"], capture_output=True, text=True, check=False)
    assert put.returncode == 0, put.stderr
    assert not os.path.ismount(path)
    assert driver.view_count("mid") == 0


def test_a_new_process_adopts_live_views_and_drops_dead_ones(driver: Driver, root: Path) -> None:
    driver.create_read_write("c3", "mid")
    view = driver.get("c3")
    Path(view.path, "kept").write_bytes(b"1")
    driver.create("other")
    driver.apply_diff("other", None, io.BytesIO(_tar({"o": b"o"})))
    lost = driver.get("other")  # a single layer: the view is its disk's mount
    kernel.umount(lost.path, lazy=True)  # someone unmounts it behind our back
    again = Driver(root, ["lcow.backend=host"])  # as a restarted plugin would
    assert again.view_count("c3") == 1 and os.path.ismount(view.path)
    assert again.view_count("other") == 0  # its disk went away: forgotten
    assert Path(view.path, "kept").read_bytes() == b"1"
    again.put("c3")
    assert not os.path.ismount(view.path)


def test_orphans_of_a_killed_process_are_cleaned(driver: Driver, root: Path) -> None:
    """A process killed between mounting and recording leaves mounts nobody counts."""
    home = driver.root.root / STATE_FOLDER
    image = driver.root.layer_dir("base") / "layer.vhd"
    orphan = home / "d" / "zz"
    orphan.mkdir()
    size = os.path.getsize(image) - 512
    device, fd = kernel.attach_loop(image, read_only=True, size=size)
    kernel.mount(device, orphan, "ext4", kernel.MS_RDONLY)
    os.close(fd)
    Driver(root, ["lcow.backend=host"])
    assert not os.path.ismount(orphan)
    assert host_leftovers(root) == []


def test_a_killed_cli_get_is_recovered(driver: Driver, root: Path) -> None:
    """SIGKILL a process while it mounts a sandbox: the next driver leaves a usable state."""
    driver.create_read_write("c4", "mid")
    script = (
        "import sys, os, signal\n"
        "from lcow.graphdriver.driver import Driver\n"
        "from lcow.backends.host import kernel\n"
        "real = kernel.mount\n"
        "def mount(*a, **k):\n"
        "    real(*a, **k)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "kernel.mount = mount\n"
        f"Driver({str(root)!r}, ['lcow.backend=host']).get('c4')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    again = Driver(root, ["lcow.backend=host"])
    assert host_leftovers(root) == []
    view = again.get("c4")
    try:
        assert _names(view.path) == ["b", "etc"]
    finally:
        again.put("c4")


def test_apply_diff_refuses_a_mounted_layer(driver: Driver) -> None:
    driver.create("c5", "mid")
    driver.get("c5")  # materialises a sandbox and mounts it
    with pytest.raises(Busy, match="c5"):
        driver.apply_diff("c5", "mid", io.BytesIO(_tar({"x": b"x"})))
    driver.put("c5")
    driver.apply_diff("c5", "mid", io.BytesIO(_tar({"x": b"x"})))
    assert (driver.root.layer_dir("c5") / "layer.vhd").exists()
    assert not (driver.root.layer_dir("c5") / "sandbox.vhdx").exists()


def test_put_of_a_busy_view_is_refused_then_works(driver: Driver) -> None:
    driver.create_read_write("c6", "mid")
    view = driver.get("c6")
    holder = subprocess.Popen(["sleep", "30"], cwd=view.path)
    try:
        with pytest.raises(Busy, match="in use"):
            driver.put("c6")
        assert driver.view_count("c6") == 1 and os.path.ismount(view.path)
    finally:
        holder.kill()
        holder.wait()
    driver.put("c6")
    assert not os.path.ismount(view.path)


def test_remove_and_cleanup_tear_everything_down(driver: Driver, root: Path) -> None:
    driver.create_read_write("c7", "mid")
    driver.get("c7")
    driver.get("c7")
    driver.get("mid")
    driver.remove("c7")
    assert not driver.exists("c7") and driver.view_count("c7") == 0
    driver.cleanup()
    assert driver.view_count("mid") == 0
    assert host_leftovers(root) == []


def test_sandbox_size_is_enforced(driver: Driver) -> None:
    driver.create_read_write("small", "mid", {"size": "64M"})
    view = driver.get("small")
    try:
        with open(Path(view.path, "fill"), "wb") as f, pytest.raises(OSError) as err:
            for _ in range(80):
                f.write(b"\0" * (1 << 20))
                f.flush()
                os.fsync(f.fileno())
        assert err.value.errno == 28  # ENOSPC
    finally:
        Path(view.path, "fill").unlink()
        driver.put("small")


def test_verity_layer_mounts_without_its_hash_tree(root: Path) -> None:
    drv = Driver(root, ["lcow.backend=host", "lcow.dmverity=true"])
    drv.create("v")
    drv.apply_diff("v", None, io.BytesIO(_tar({"f": b"verity" * 1000})))
    view = drv.get("v")
    try:
        assert Path(view.path, "f").read_bytes() == b"verity" * 1000
    finally:
        drv.put("v")


def test_deep_chain_of_sandboxes_mounts(root: Path) -> None:
    """130 sandboxes in one chain, mounted at once: one storage daemon serves them all, and the
    short relative lower names fit the overlay's one-page option string. (graphtest's
    DeepLayerRead writes 128 layers through Get, one at a time.)"""
    drv = Driver(root, ["lcow.backend=host"])
    parent = None
    for k in range(130):
        drv.create_read_write(f"l{k}", parent)
        parent = f"l{k}"
    view = drv.get("l129")
    try:
        Path(view.path, "top").write_bytes(b"t")
        assert _names(view.path) == ["top"]
        daemons = [x for x in host_leftovers(root) if "qemu-storage-daemon" in x]
        assert len(daemons) == 1
        assert len([x for x in host_leftovers(root) if x.startswith("loop")]) == 130
    finally:
        drv.put("l129")


def test_needs_root(tmp_path: Path) -> None:
    """Without root: ``driver not supported`` naming what is missing, and nothing created."""
    home = tmp_path / "r"
    code = (
        "from lcow.graphdriver.driver import Driver\n"
        f"Driver({str(home)!r}, ['lcow.backend=host'])\n"
    )
    proc = run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code]
    )
    assert proc.returncode != 0
    assert "driver not supported" in proc.stderr and "root" in proc.stderr
    assert NotSupported.__name__ in proc.stderr
    assert not home.exists()


def test_views_under_a_root_whose_path_has_overlay_option_syntax(tmp_path: Path) -> None:
    """Absolute lower paths go to mount(2) directly; a root holding ``,`` or ``:`` cannot be
    written in overlay's options, so such views are mounted with relative paths instead."""
    root = tmp_path / "a,b:c"
    drv = Driver(root, ["lcow.backend=host"])
    try:
        drv.create("base")
        drv.apply_diff("base", None, io.BytesIO(_tar({"a": b"A"})))
        drv.create("mid", "base")
        drv.apply_diff("mid", "base", io.BytesIO(_tar({"b": b"B"})))
        drv.create_read_write("c", "mid")
        view = drv.get("c")
        try:
            Path(view.path, "w").write_bytes(b"w")
            assert _names(view.path) == ["a", "b", "w"]
        finally:
            drv.put("c")
    finally:
        drv.cleanup()
    assert host_leftovers(tmp_path) == []


def test_views_under_a_root_too_deep_for_a_unix_socket_path(tmp_path: Path) -> None:
    """The storage daemon's control socket lives in the data root; under a root deeper than
    ``sockaddr_un`` holds (108 bytes), QEMU still binds it, and lcow must still reach it
    (before: "AF_UNIX path too long", and a daemon left running)."""
    root = tmp_path / ("d" * 60) / ("e" * 60)
    assert len(os.fsencode(root / STATE_FOLDER / "qsd.sock")) > 108
    drv = Driver(root, ["lcow.backend=host"])
    try:
        drv.create("base")
        drv.apply_diff("base", None, io.BytesIO(_tar({"a": b"A"})))
        drv.create_read_write("c", "base")
        view = drv.get("c")
        try:
            Path(view.path, "w").write_bytes(b"w")
            assert _names(view.path) == ["a", "w"]
        finally:
            drv.put("c")
    finally:
        drv.cleanup()
    assert host_leftovers(tmp_path) == []
    assert not (root / STATE_FOLDER / "qsd.pid").exists()


def _sandbox_device(root: Path) -> str:
    """The loop device name of the (single) sandbox mounted under ``root``."""
    (point,) = [
        p
        for p, fstype in kernel.mounts_below(root)
        if fstype == "ext4" and Path(p, "upper").is_dir()
    ]
    number = os.stat(point).st_dev
    return Path(f"/sys/dev/block/{os.major(number)}:{os.minor(number)}").resolve().name


def test_put_writes_home_what_a_mount_in_another_namespace_wrote(
    driver: Driver, root: Path, tmp_path: Path
) -> None:
    """Put's unmount does not end a sandbox another mount namespace still holds (a bind
    mount of the view there): the writes made through it must still reach the layer."""
    driver.create_read_write("held", "mid")
    view = driver.get("held")
    device = _sandbox_device(root)
    target = tmp_path / "bind"
    target.mkdir()
    script = (
        'mount --bind "$1" "$2" && head -c 300000 /dev/zero | tr "\\0" y > "$2/from-ns"'
        " && echo ready && read done"
    )
    command = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"]
    child = subprocess.Popen(
        [*command, view.path, target], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        driver.put("held")
        assert os.path.exists(f"/sys/fs/ext4/{device}")  # still alive
        assert diff_files(driver, "held")["from-ns"] == b"y" * 300_000
    finally:
        child.communicate("done\n", timeout=30)
    for _ in range(1000):  # the namespace's mounts go away shortly after its last process
        if not os.path.exists(f"/sys/fs/ext4/{device}"):
            break
        time.sleep(0.01)


def test_put_of_a_sandbox_nothing_else_holds_freezes_nothing(
    driver: Driver, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last unmount syncs the sandbox itself: no freeze (tens of ms each) on Put."""
    driver.create_read_write("alone", "mid")
    view = driver.get("alone")
    Path(view.path, "f").write_bytes(b"z" * 300_000)
    device = _sandbox_device(root)
    frozen: list[str] = []
    real_freeze = kernel.freeze

    def freeze_spy(mountpoint: str | os.PathLike[str]) -> None:
        frozen.append(os.fspath(mountpoint))
        real_freeze(mountpoint)

    monkeypatch.setattr(kernel, "freeze", freeze_spy)
    driver.put("alone")
    assert frozen == []
    assert not os.path.exists(f"/sys/fs/ext4/{device}")
    assert diff_files(driver, "alone")["f"] == b"z" * 300_000


def test_discard_shuts_down_that_layer_s_sandbox_and_no_other(driver: Driver) -> None:
    """A staged unpack's sandbox is garbage: Discard drops its unwritten data (its file system
    shut down, every later access EIO), leaves the other sandboxes alone, and Remove still
    cleans everything up."""
    driver.create_read_write("garbage", "mid")
    driver.create_read_write("kept", "mid")
    assert driver.discard("garbage") is False  # nothing mounted: nothing done
    garbage, kept = driver.get("garbage"), driver.get("kept")
    Path(garbage.path, "f").write_bytes(b"x" * 65536)
    assert driver.discard("garbage") is True
    with pytest.raises(OSError) as info:
        Path(garbage.path, "g").write_bytes(b"y")
    assert info.value.errno == errno.EIO
    Path(kept.path, "f").write_bytes(b"still writable")
    driver.put("kept")
    assert diff_files(driver, "kept")["f"] == b"still writable"
    driver.remove("garbage")  # its views and disks go; the fixture checks nothing is left
    assert not driver.exists("garbage")
