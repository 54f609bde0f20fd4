"""The few kernel calls the host backend makes directly: mount, umount, loop devices, freeze.

Called through ctypes and ioctls rather than ``mount(8)``/``losetup(8)`` because a 64-layer
view needs 64 loop devices and 64 mounts: a process per step would cost ~3 ms each, the
syscalls well under one (issue 5 asks for Get+Put of 64 layers in 50 ms). The overlay mount,
which needs a working directory for its short relative lower paths, is the one exception (see
:func:`mount_overlay`).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "MS_RDONLY",
    "attach_loop",
    "freeze",
    "mount",
    "mount_overlay",
    "mounts_below",
    "thaw",
    "umount",
]

MS_RDONLY = 1
_MNT_DETACH = 2
_UMOUNT_NOFOLLOW = 8
_PAGE = 4096  # mount(2) copies one page of options

# <linux/loop.h>
_LOOP_CTL_GET_FREE = 0x4C82
_LOOP_CONFIGURE = 0x4C0A
_LO_FLAGS_READ_ONLY = 1
_LO_FLAGS_AUTOCLEAR = 4
_LOOP_INFO64 = struct.Struct("=5Q4I64s64s32s2Q")  # struct loop_info64
# <linux/fs.h>
_FIFREEZE = 0xC0045877
_FITHAW = 0xC0045878

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _raise(path: str | os.PathLike[str]) -> None:
    code = ctypes.get_errno()
    raise OSError(code, os.strerror(code), os.fspath(path))


def mount(
    source: str, target: str | os.PathLike[str], fstype: str, flags: int = 0, data: str = ""
) -> None:
    """``mount(2)``."""
    if (
        _libc.mount(
            source.encode(),
            os.fsencode(target),
            fstype.encode(),
            flags,
            data.encode() if data else None,
        )
        != 0
    ):
        _raise(target)


def umount(target: str | os.PathLike[str], *, lazy: bool = False) -> None:
    """``umount2(2)`` without following a symlink at ``target``; ``lazy`` detaches a busy
    mount (it goes away when its last user does)."""
    flags = _UMOUNT_NOFOLLOW | (_MNT_DETACH if lazy else 0)
    if _libc.umount2(os.fsencode(target), flags) != 0:
        _raise(target)


def mount_overlay(
    cwd: Path, target: str, lowers: list[str], upper: str | None = None, work: str | None = None
) -> None:
    """Mount an overlay at ``target`` (relative to ``cwd``) over lower directories given
    relative to ``cwd``, nearest first.

    The kernel takes the whole option string in one page. When the absolute paths fit (and
    hold none of the option syntax's ``,:\\``), ``mount(2)`` is called directly: a child
    process costs milliseconds per container. Otherwise — 128 lower layers under a long data
    root — the paths stay relative to ``cwd`` (LCOW 18.09 used short names for the same
    reason) and ``mount(8)`` runs there, instead of this multi-threaded process changing its
    own directory.
    """
    absolute = _overlay_options(
        [str(cwd / lower) for lower in lowers],
        None if upper is None else str(cwd / upper),
        None if work is None else str(cwd / work),
    )
    if len(absolute) < _PAGE and not any(c in os.fspath(cwd) for c in ",:\\"):
        mount("overlay", cwd / target, "overlay", 0, absolute)
        return
    options = _overlay_options(lowers, upper, work)
    if len(options) >= _PAGE:
        raise OSError(errno.E2BIG, f"overlay options of {len(lowers)} layers exceed a page", target)
    done = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, "--", target],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise OSError(errno.EIO, f"mount overlay: {done.stderr.strip()}", target)


def _overlay_options(lowers: list[str], upper: str | None, work: str | None) -> str:
    options = "lowerdir=" + ":".join(lowers)
    if upper is not None:
        options += f",upperdir={upper},workdir={work}"
    return options


def attach_loop(path: str | os.PathLike[str], *, read_only: bool, size: int) -> tuple[str, int]:
    """Attach ``path``'s first ``size`` bytes to a free loop device.

    The device auto-clears: it detaches itself when its last user (the caller's descriptor,
    then the mount) goes away, so a crash can never leak it. Returns the device path and an
    open descriptor the caller closes after mounting.
    """
    access = os.O_RDONLY if read_only else os.O_RDWR
    backing = os.open(path, access | os.O_CLOEXEC)
    try:
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(64):  # another process may take the free device first
                number = fcntl.ioctl(control, _LOOP_CTL_GET_FREE)
                device = f"/dev/loop{number}"
                fd = os.open(device, access | os.O_CLOEXEC)
                flags = _LO_FLAGS_AUTOCLEAR | (_LO_FLAGS_READ_ONLY if read_only else 0)
                info = _LOOP_INFO64.pack(0, 0, 0, 0, size, 0, 0, 0, flags, b"", b"", b"", 0, 0)
                try:
                    fcntl.ioctl(
                        fd, _LOOP_CONFIGURE, struct.pack("=II", backing, 0) + info + bytes(64)
                    )
                except OSError as exc:
                    os.close(fd)
                    if exc.errno == errno.EBUSY:
                        continue
                    raise OSError(
                        exc.errno, f"loop device for {os.fspath(path)}: {exc.strerror}", device
                    ) from exc
                return device, fd
            raise OSError(errno.EBUSY, "no free loop device", os.fspath(path))
        finally:
            os.close(control)
    finally:
        os.close(backing)


_EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
_EXT4_GOING_FLAGS_NOLOGFLUSH = 0x2  # neither data nor the journal is written


def shut_down(mountpoint: str | os.PathLike[str]) -> None:
    """Shut a mounted ext4 down without writing anything back (``EXT4_IOC_SHUTDOWN``,
    ``NOLOGFLUSH``): its page cache is dropped, and every later access fails with EIO."""
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _EXT4_IOC_SHUTDOWN, struct.pack("I", _EXT4_GOING_FLAGS_NOLOGFLUSH))
    finally:
        os.close(fd)


def freeze(mountpoint: str | os.PathLike[str]) -> None:
    """Flush a mounted filesystem and block writers (``FIFREEZE``), for a consistent read of
    its disk.

    The frozen superblock holds a reference of its own until :func:`thaw`: unmounted while
    frozen, it outlives its mount (ext4 and its loop device stay, with no mount to thaw them
    through), so whoever finds a filesystem its freezer left frozen must thaw it before the
    unmount.
    """
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _FIFREEZE, 0)
    finally:
        os.close(fd)


def thaw(mountpoint: str | os.PathLike[str]) -> bool:
    """Undo :func:`freeze`; returns whether the filesystem was frozen (one that is not is
    left alone)."""
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _FITHAW, 0)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return False
    finally:
        os.close(fd)
    return True


_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


def _unescape(field: bytes) -> str:
    """``/proc/self/mountinfo`` escapes space, tab, newline and backslash as ``\\ooo``."""
    return os.fsdecode(_OCTAL_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field))


def mounts_below(prefix: Path) -> Iterator[tuple[str, str]]:
    """``(mount point, filesystem type)`` of every mount at or below ``prefix``, in mount
    order (so reversed order unmounts children first)."""
    base = os.fspath(prefix).rstrip("/")
    with open("/proc/self/mountinfo", "rb") as table:
        for line in table:
            fields = line.rstrip(b"\n").split(b" ")
            point = _unescape(fields[4])
            fstype = os.fsdecode(fields[fields.index(b"-") + 1])
            if point == base or point.startswith(base + "/"):
                yield point, fstype
