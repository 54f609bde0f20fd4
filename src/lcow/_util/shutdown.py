"""Shut down the ext4 file system mounted from a loop device over an image file, dropping its
unwritten data (``EXT4_IOC_SHUTDOWN`` with ``NOLOGFLUSH``).

For a sandbox whose content is garbage (a staged unpack's, removed next): its unmount would
otherwise write the page cache back through the loop device into the image file, and the
journal's flushes would carry it on to the disk, only for the file to be deleted.
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

__all__ = ["shut_down_image"]

_EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
_NOLOGFLUSH = 0x2  # EXT4_GOING_FLAGS_NOLOGFLUSH: no data, no journal written


def _unescape(field: str) -> str:
    """A mountinfo path: spaces, tabs, newlines and backslashes are octal escapes."""
    raw = field.encode("utf-8", "surrogateescape").decode("unicode_escape").encode("latin-1")
    return raw.decode("utf-8", "surrogateescape")


def _device_of(image: Path) -> str | None:
    """``MAJ:MIN`` of the loop device whose backing file is ``image``."""
    target = os.path.realpath(image)
    for loop in Path("/sys/block").glob("loop*"):
        try:
            if (loop / "loop" / "backing_file").read_text().rstrip("\n") == target:
                return (loop / "dev").read_text().strip()
        except OSError:
            continue
    return None


def _ext4_mount(device: str) -> str | None:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[2] == device and fields[sep + 1] == "ext4" and fields[3] == "/":
                return _unescape(fields[4])
    return None


def shut_down_image(image: Path) -> bool:
    """Shut down the ext4 mounted from ``image`` through a loop device, without writing back;
    ``False`` when none is mounted (nothing done).

    Raises:
        OSError: the kernel refused (not ext4, no ``CAP_SYS_ADMIN``).
    """
    device = _device_of(image)
    if device is None:
        return False
    mountpoint = _ext4_mount(device)
    if mountpoint is None:
        return False
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # The descriptor pins what is mounted there now: if that is no longer this device's
        # file system (unmounted, the slot reused meanwhile), shut nothing down.
        major, minor = (int(part) for part in device.split(":"))
        if os.fstat(fd).st_dev != os.makedev(major, minor):
            return False
        fcntl.ioctl(fd, _EXT4_IOC_SHUTDOWN, struct.pack("I", _NOLOGFLUSH))
    finally:
        os.close(fd)
    return True
