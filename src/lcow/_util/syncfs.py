"""``syncfs(2)``: write back one file system's dirty data (Python's os module has no wrapper)."""

from __future__ import annotations

import ctypes
import os

__all__ = ["syncfs"]

_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(path: str) -> None:
    """Write back the dirty data of the file system ``path`` is on (through an overlay: its
    upper file system).

    Raises:
        OSError: ``path`` cannot be opened, or the kernel refused.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)
