"""The containerd fixtures themselves: teardown leaves nothing, the proxy entry is taken.

A snapshotter restart test stops containerd under a running container, or loses a shim; the
fixture must still end every process, mount and cgroup it caused (checked here by the
container's own pid and by :meth:`Containerd.leftovers`). A ``[proxy_plugins.lcow]`` entry
makes containerd 1.6 list an ``lcow`` snapshotter, dialled only when first used.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.containerd.daemons import (
    Containerd,
    ProxyContainerdFactory,
    processes_naming,
    short_dir,
)
from tests.containerd.images import PushedImage
from tests.helpers import requires

pytestmark = [requires("root", "containerd", "registry", "busybox"), pytest.mark.timeout(300)]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def running_container(pushed_image: PushedImage) -> tuple[Containerd, int]:
    """A containerd with a detached ``sleep`` container; the container's host pid."""
    daemon = Containerd(short_dir("cd-")).start()
    daemon.ctr("images", "pull", "--plain-http", pushed_image.reference)
    daemon.ctr("run", "-d", pushed_image.reference, "sleeper", "sleep", "600")
    rows = daemon.ctr("tasks", "ls").stdout.splitlines()[1:]
    assert [row.split()[0] for row in rows] == ["sleeper"], rows
    return daemon, int(rows[0].split()[1])


def assert_gone(daemon: Containerd, pid: int) -> None:
    assert not alive(pid)
    assert daemon.leftovers() == []
    assert not daemon.dir.exists()


@pytest.mark.parametrize("kill_shim", [False, True], ids=["containerd-stopped", "shim-killed"])
def test_close_ends_a_container_outliving_containerd(
    pushed_image: PushedImage, kill_shim: bool
) -> None:
    daemon, pid = running_container(pushed_image)
    shim_socket = daemon.shim_socket("sleeper")
    try:
        assert shim_socket.is_socket()
        assert list((daemon.dir / "fifo").glob("*/sleeper-stdout"))  # not in the host's /run
        daemon.stop()
        assert alive(pid)  # shims and containers outlive containerd
        if kill_shim:
            for shim in processes_naming(daemon.dir):
                os.kill(shim, signal.SIGKILL)
    finally:
        daemon.close()
    assert_gone(daemon, pid)
    assert not shim_socket.exists()


def test_containerd_with_proxy_lists_the_lcow_snapshotter(
    containerd_with_proxy: ProxyContainerdFactory, pushed_image: PushedImage
) -> None:
    socket = short_dir("cdp-") / "absent.sock"  # nobody listens: containerd dials lazily
    try:
        daemon = containerd_with_proxy(socket)
        plugins = daemon.ctr("plugins", "ls").stdout.splitlines()
        assert any(line.split()[:2] == ["io.containerd.snapshotter.v1", "lcow"] for line in plugins)
        pull = daemon.ctr(
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            "lcow",
            pushed_image.reference,
            check=False,
        )
        assert pull.returncode != 0
        assert str(socket) in pull.stderr and "unavailable" in pull.stderr, pull.stderr
    finally:
        socket.parent.rmdir()
