"""The test suite's own leak check for loop devices (:class:`~tests.harness.crash.rootstate.
LoopWatch`), against the real kernel: an ext4 unmounted while frozen outlives its mount and
keeps its loop device, which the watch must report (and does not once it is released)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from lcow.backends.host import kernel
from tests.harness.crash.rootstate import LoopWatch
from tests.helpers import requires


@requires("root", "loop", "mke2fs")
def test_the_watch_reports_an_ext4_that_outlived_its_mount(tmp_path: Path) -> None:
    image = tmp_path / "fs.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", str(image), "8M"], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    watch = LoopWatch(tmp_path, interval=0.05).start()
    watch.label = "the freeze"
    device, fd = kernel.attach_loop(image, read_only=False, size=image.stat().st_size)
    try:
        kernel.mount(device, mnt, "ext4")
    finally:
        os.close(fd)  # auto-clear: the device goes with the last unmount, normally
    name = os.path.basename(device)
    try:
        assert name in watch.poll()
        kernel.freeze(mnt)
        kernel.umount(mnt)  # succeeds, but the frozen superblock holds itself alive
        assert not os.path.ismount(mnt)
        assert watch.leftovers(grace=0.5) == [
            f"ext4 superblock on {name} alive (backing {image}), first seen during the freeze"
        ]
    finally:
        # The one way back: a new mount of the device gets the same superblock to thaw.
        kernel.mount(device, mnt, "ext4")
        kernel.thaw(mnt)
        kernel.umount(mnt)
    assert watch.stop()[name] > 0
    assert watch.leftovers() == []
