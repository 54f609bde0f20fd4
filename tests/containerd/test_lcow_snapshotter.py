"""Stock containerd 1.6 with ``lcow snapshotter serve`` as its ``lcow`` proxy snapshotter.

The same image and steps as the overlayfs baseline (``test_containerd_baseline.py``): a pull
through containerd's own differ (Prepare, the tar applied into the bind mount, Commit), runc
containers on the snapshotter's mounts, ``images rm --sync``. The committed layers are judged
by ``e2fsck``; the union by what a container lists; the end by nothing left mounted.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from lcow.backends.host import kernel
from lcow.graphdriver.driver import Driver
from lcow.storage.dataroot import LAYER_VHD, SANDBOX_VHDX
from tests.containerd.daemons import Containerd, ProxyContainerdFactory, short_dir
from tests.containerd.images import CMD_OUTPUT, LIST_SCRIPT, PushedImage
from tests.helpers import assert_e2fsck_clean, host_leftovers, requires, settled_mounts

pytestmark = [
    requires("root", "containerd", "registry", "busybox", "host", "e2fsck"),
    pytest.mark.timeout(600),
]

SNAPSHOTTER = "lcow"
#: The tests' ``--linger``: short, so that "nothing stays mounted" is checked within a test
#: (the default, 30 s, keeps the image's layers mounted between containers).
LINGER = 1.0


class Snapshotter:
    """``lcow --root ROOT --backend host snapshotter serve --address SOCK`` as a process."""

    #: How Python runs lcow (a test may run it under a fault-injecting wrapper instead).
    program: tuple[str, ...] = ("-m", "lcow")

    def __init__(
        self,
        root: Path,
        socket: Path,
        log: Path,
        extra: Sequence[str] = (),
        linger: float | None = None,
    ) -> None:
        self.root, self.socket, self.log, self.linger = root, socket, log, linger
        self.extra = tuple(extra)  # more ``serve`` options
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Snapshotter:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *self.program, "--root", str(self.root), "--backend", "host",
                 "snapshotter", "serve", "--address", str(self.socket), *self.extra,
                 *([] if self.linger is None else ["--linger", str(self.linger)])],
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the snapshotter did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        status = self.proc.wait(timeout=60)
        self.proc = None
        return status


@pytest.fixture
def lcow_snapshotter(tmp_path: Path) -> Iterator[Snapshotter]:
    """Started before containerd, so stopped after it (its teardown removes snapshots)."""
    sock_dir = short_dir("lcows-")
    running = Snapshotter(
        tmp_path / "root", sock_dir / "lcow.sock", tmp_path / "lcow.log", linger=LINGER
    )
    running.start()
    try:
        yield running
    finally:
        status = running.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
        Driver(running.root, ["lcow.backend=host"]).cleanup()
        assert host_leftovers(tmp_path) == []
        assert status == 0, running.log.read_text()[-3000:]
        assert "\x1b" not in running.log.read_text()


def _pulled(
    start: ProxyContainerdFactory, snapshotter: Snapshotter, image: PushedImage
) -> Containerd:
    daemon = start(snapshotter.socket)
    daemon.ctr("images", "pull", "--plain-http", "--snapshotter", SNAPSHOTTER, image.reference)
    return daemon


def _run(daemon: Containerd, image: PushedImage, name: str, *command: str) -> str:
    argv = ["run", "--rm", "--snapshotter", SNAPSHOTTER, image.reference, name, *command]
    return daemon.ctr(*argv).stdout


def _snapshots(daemon: Containerd) -> list[tuple[str, str, str]]:
    out = daemon.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout.splitlines()
    assert out[0].split() == ["KEY", "PARENT", "KIND"], out
    rows = []
    for line in out[1:]:
        fields = line.split()
        rows.append((fields[0], fields[1] if len(fields) == 3 else "", fields[-1]))
    return rows


def _reconnected(daemon: Containerd, timeout: float = 60) -> float:
    """Wait until containerd's client reaches the restarted snapshotter; the seconds it took.

    containerd's gRPC client fails calls fast (Unavailable) while it backs off from the
    connection the restart broke (1 s at first); it does not wait for the new server."""
    start = time.monotonic()
    while daemon.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls", check=False).returncode:
        assert time.monotonic() - start < timeout, "containerd never reconnected"
        time.sleep(0.1)
    return time.monotonic() - start


def _released_when_idle(root: Path, timeout: float = 10 * LINGER + 10) -> list[str]:
    """What stays mounted below the snapshotter's state folder once :data:`LINGER` seconds
    passed without use (the image's layer disks stay mounted that long for the next
    container, and the storage daemon runs)."""
    deadline = time.monotonic() + timeout
    while (mounted := [p for p, _ in kernel.mounts_below(root / "mounts")]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    return mounted


def _layer_folders(root: Path) -> list[Path]:
    """Layer folders (not a removed layer's that the snapshotter is still deleting)."""
    return sorted(
        p for p in root.iterdir()
        if p.is_dir() and p.name.startswith("sn") and not p.name.endswith("-removing")
    )  # fmt: skip


def _settled(
    daemon: Containerd, image: PushedImage, root: Path, count: int, timeout: float = 30
) -> list[Path]:
    """The layer folders once there are ``count``, after containerd collected a deleted
    container's snapshot. containerd collects on its own schedule, rate-limited (a collection
    that took t waits about 50 t before the next), so on a loaded machine a removal can wait
    longer than a test should: removing a throwaway tag with ``--sync`` asks for a collection
    now, as ``ctr images rm --sync`` does."""
    tag = f"{image.reference}-gc"
    daemon.ctr("images", "tag", image.reference, tag)
    daemon.ctr("images", "rm", "--sync", tag)
    deadline = time.monotonic() + timeout
    while len(folders := _layer_folders(root)) != count and time.monotonic() < deadline:
        time.sleep(0.1)
    return folders


def test_pull_commits_every_layer_as_a_clean_layer_vhd(
    lcow_snapshotter: Snapshotter,
    containerd_with_proxy: ProxyContainerdFactory,
    pushed_image: PushedImage,
) -> None:
    daemon = _pulled(containerd_with_proxy, lcow_snapshotter, pushed_image)
    rows = _snapshots(daemon)
    assert [kind for _, _, kind in rows] == ["Committed"] * len(pushed_image.image.layers)
    parents = [parent for _, parent, _ in rows]
    assert parents.count("") == 1 and set(parents) - {""} < {key for key, _, _ in rows}
    folders = _layer_folders(lcow_snapshotter.root)
    assert len(folders) == len(pushed_image.image.layers)
    for folder in folders:
        assert not (folder / SANDBOX_VHDX).exists(), folder
        assert_e2fsck_clean(folder / LAYER_VHD)
    # nothing stays mounted for committed layers (once idle), no storage daemon runs
    assert _released_when_idle(lcow_snapshotter.root) == []
    assert not (lcow_snapshotter.root / "mounts" / "qsd.pid").exists()
    # Usage reaches the snapshotter through containerd: every layer holds something
    for key, _, _ in rows:
        out = daemon.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "usage", key).stdout
        header, line = out.splitlines()
        assert header.split() == ["KEY", "SIZE", "INODES"], out
        assert line.split()[0] == key and int(line.split()[-1]) > 1, out


def test_run_sees_the_union_and_writes_into_its_own_snapshot(
    lcow_snapshotter: Snapshotter,
    containerd_with_proxy: ProxyContainerdFactory,
    pushed_image: PushedImage,
) -> None:
    daemon = _pulled(containerd_with_proxy, lcow_snapshotter, pushed_image)
    listing = sorted(_run(daemon, pushed_image, "c1", "sh", "-c", LIST_SCRIPT).splitlines())
    assert listing == pushed_image.listing
    assert _run(daemon, pushed_image, "c2") == CMD_OUTPUT
    script = (
        "echo written > /srv/written && echo more >> /srv/keep && rm /srv/old/c"
        " && cat /srv/written /srv/keep && ls /srv/old"
    )
    assert _run(daemon, pushed_image, "writer", "sh", "-c", script) == "written\nkeep\nmore\nd\n"
    again = sorted(_run(daemon, pushed_image, "reader", "sh", "-c", LIST_SCRIPT).splitlines())
    assert again == pushed_image.listing  # a new container starts from the image again
    # --rm removed each container's snapshot: only the image's layers are left, unmounted
    layers = len(pushed_image.image.layers)
    assert len(_settled(daemon, pushed_image, lcow_snapshotter.root, layers)) == layers
    assert _released_when_idle(lcow_snapshotter.root) == []


def test_images_rm_sync_frees_the_layers(
    lcow_snapshotter: Snapshotter,
    containerd_with_proxy: ProxyContainerdFactory,
    pushed_image: PushedImage,
) -> None:
    daemon = _pulled(containerd_with_proxy, lcow_snapshotter, pushed_image)
    _run(daemon, pushed_image, "c1", "true")
    daemon.ctr("images", "rm", "--sync", pushed_image.reference)
    assert _snapshots(daemon) == []
    assert _layer_folders(lcow_snapshotter.root) == []
    assert settled_mounts(lcow_snapshotter.root / "mounts") == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_a_snapshotter_restart_under_a_running_container_loses_nothing(
    lcow_snapshotter: Snapshotter,
    containerd_with_proxy: ProxyContainerdFactory,
    pushed_image: PushedImage,
    sig: int,
) -> None:
    daemon = _pulled(containerd_with_proxy, lcow_snapshotter, pushed_image)
    daemon.ctr("run", "-d", "--snapshotter", SNAPSHOTTER, pushed_image.reference, "bg",
               "sh", "-c", "echo before > /srv/written && exec sleep 1000")  # fmt: skip
    mounted = sorted(kernel.mounts_below(lcow_snapshotter.root / "mounts"))
    assert mounted

    lcow_snapshotter.stop(sig)
    lcow_snapshotter.start()
    assert sorted(kernel.mounts_below(lcow_snapshotter.root / "mounts")) == mounted
    assert _reconnected(daemon) < (5 if sig == signal.SIGKILL else 1)
    script = "cat /srv/written /srv/keep && echo after >> /srv/written && cat /srv/written"
    out = daemon.ctr("tasks", "exec", "--exec-id", "e1", "bg", "sh", "-c", script).stdout
    assert out == "before\nkeep\nbefore\nafter\n"
    # containerd reaches the new snapshotter: a new container, then removal of both
    listing = sorted(_run(daemon, pushed_image, "c1", "sh", "-c", LIST_SCRIPT).splitlines())
    assert listing == pushed_image.listing
    daemon.ctr("tasks", "kill", "--signal", "SIGKILL", "bg")
    deadline = time.monotonic() + 30
    while daemon.ctr("tasks", "delete", "bg", check=False).returncode != 0:
        assert time.monotonic() < deadline, "the task did not stop"
        time.sleep(0.1)
    daemon.ctr("containers", "rm", "bg")
    layers = len(pushed_image.image.layers)
    assert len(_settled(daemon, pushed_image, lcow_snapshotter.root, layers)) == layers
    assert _released_when_idle(lcow_snapshotter.root) == []


def test_a_containerd_restart_finds_every_snapshot_and_mount(
    lcow_snapshotter: Snapshotter,
    containerd_with_proxy: ProxyContainerdFactory,
    pushed_image: PushedImage,
) -> None:
    daemon = _pulled(containerd_with_proxy, lcow_snapshotter, pushed_image)
    daemon.ctr("run", "-d", "--snapshotter", SNAPSHOTTER, pushed_image.reference, "bg",
               "sh", "-c", "echo before > /srv/written && exec sleep 1000")  # fmt: skip
    before = _snapshots(daemon)
    mounted = sorted(kernel.mounts_below(lcow_snapshotter.root / "mounts"))
    daemon.stop()
    daemon.start()
    assert _snapshots(daemon) == before
    assert sorted(kernel.mounts_below(lcow_snapshotter.root / "mounts")) == mounted
    out = daemon.ctr("tasks", "exec", "--exec-id", "e1", "bg", "cat", "/srv/written").stdout
    assert out == "before\n"
    listing = sorted(_run(daemon, pushed_image, "c1", "sh", "-c", LIST_SCRIPT).splitlines())
    assert listing == pushed_image.listing
