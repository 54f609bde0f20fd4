"""How the host backend lets go of a mounted disk so that a sandbox's writes reach its file:
the unmount (and, when another mount still holds the filesystem, a re-mount and a
freeze/thaw checkpoint), a thaw of what a killed process left frozen, and the wait for an
auto-clearing loop device to let go of its file.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

from lcow.backends.host import kernel
from lcow.backends.host.table import DiskEntry

__all__ = ["checkpoint", "ext4_alive", "flush_if_held", "thaw_abandoned", "unmount_disk",
           "wait_loop_released"]  # fmt: skip

log = logging.getLogger(__name__)

LOOP_RELEASE_WAIT = 10.0


def checkpoint(mountpoint: Path) -> None:
    """Write a mounted sandbox's data and journal home (freeze, thaw).

    Needed when our unmount will not end the filesystem (see :func:`flush_if_held`): the
    sandbox would be read or unexported with a client's writes still in memory or in the
    journal. A mount point that is no mount (a reboot, an outside umount) is left alone:
    freezing the directory would freeze its parent filesystem.
    """
    if not os.path.ismount(mountpoint):
        return
    thaw_abandoned(mountpoint)
    try:
        kernel.freeze(mountpoint)
    except OSError as exc:
        # EIO: the file system was shut down (a sandbox discarded on purpose, see
        # HostBackend.discard) or its disk fails, which the unmount reports again.
        level = logging.INFO if exc.errno == errno.EIO else logging.WARNING
        log.log(level, "host backend: %s: could not flush before unmounting: %s", mountpoint, exc)
        return
    kernel.thaw(mountpoint)


def unmount_disk(entry: DiskEntry, mountpoint: Path) -> None:
    """Unmount a disk; a sandbox's writes reach its file, even when another mount still
    holds its filesystem."""
    if entry.writable and os.path.ismount(mountpoint):
        thaw_abandoned(mountpoint)  # first: a frozen filesystem outlives its last unmount
    kernel.umount(mountpoint)
    if entry.writable and not flush_if_held(entry.device, mountpoint) and not entry.exported:
        # Another holder's last unmount may be ending it right now (the sysfs entry goes
        # before the journal's final checkpoint); its loop device lets go of the file after.
        # (An exported sandbox's loop device is waited for before its unexport.)
        wait_loop_released(entry.device, Path(entry.image))


def flush_if_held(device: str, mountpoint: Path) -> bool:
    """After a sandbox's unmount, write its data home if another mount still holds it.

    The usual last unmount ends the filesystem, and the kernel syncs it (data, journal,
    superblock) before ``umount(2)`` returns: nothing left to do, and no freeze (~40 ms each).
    When another mount keeps it alive (a client's bind mount of the view, even in another
    mount namespace), its writes may still be in memory or in the journal: mounting the same
    device again at the same place returns the same live filesystem, which is then
    checkpointed and unmounted again.

    Returns:
        Whether another mount held it.
    """
    if not ext4_alive(device):
        return False
    try:
        kernel.mount(device, mountpoint, "ext4", 0)  # the options of _mount_disk
    except OSError as exc:
        if not ext4_alive(device):  # its last holder ended (and synced) it meanwhile
            return False
        log.warning("host backend: %s: could not mount it again to flush it: %s",
                    device, exc)  # fmt: skip
        return True
    try:
        checkpoint(mountpoint)
    finally:
        kernel.umount(mountpoint)
    return True


def ext4_alive(device: str) -> bool:
    """Whether an ext4 filesystem on ``device`` still exists in the kernel (its sysfs entry
    goes in its ``put_super``, after the unmount's ``sync_filesystem``)."""
    return os.path.exists(Path("/sys/fs/ext4") / os.path.basename(device))


def thaw_abandoned(mountpoint: Path) -> None:
    """Thaw a disk that a process killed between freezing and thawing it left frozen; never
    fails.

    Disks are frozen only under the mount table's lock, which the caller holds: a frozen one
    has no live freezer. Left frozen, its writers would block for good, and an unmount would
    leave its superblock (the freeze holds a reference), its loop device and, for a sandbox,
    the storage daemon's export file behind with no mount to thaw them through.
    """
    try:
        thawed = kernel.thaw(mountpoint)
    except OSError as exc:
        log.warning("host backend: %s: could not thaw: %s", mountpoint, exc)
        return
    if thawed:
        log.warning("host backend: %s was left frozen by a process that died; thawed it",
                    mountpoint)  # fmt: skip


def wait_loop_released(device: str, backing: Path) -> None:
    """Wait for an auto-clearing loop device to let go of ``backing`` after its last
    unmount (the kernel detaches it asynchronously)."""
    record = Path("/sys/block") / os.path.basename(device) / "loop" / "backing_file"

    def attached() -> bool:
        try:
            return record.read_text().rstrip("\n") == str(backing)
        except OSError:
            return False

    deadline = time.monotonic() + LOOP_RELEASE_WAIT
    while attached() and time.monotonic() < deadline:
        time.sleep(0.001)
    if attached():
        log.warning("host backend: %s still attached after %.0f s", device, LOOP_RELEASE_WAIT)
