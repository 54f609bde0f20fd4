"""Start writing a file's range back to disk without waiting: ``sync_file_range(2)`` with
``SYNC_FILE_RANGE_WRITE`` (Python's os module has no wrapper).

A file made durable by an ``fsync`` at its end is written into the page cache first, and the
disk writes all of it during that ``fsync``, while the process waits. Starting the writeback of
each part as soon as it is written lets the disk work while the producer still produces; the
final ``fsync`` then waits for the last part only. This is a hint and proves nothing: the
``fsync`` alone makes the file durable (and reports a write error), so a refusal here is
ignored. Unlike ``posix_fadvise(DONTNEED)``, which also starts writeback, it drops no page from
the cache: a file read soon after (a layer image mounted next) stays cached.
"""

from __future__ import annotations

import ctypes

__all__ = ["start_writeback"]

_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of the range's dirty pages, no wait

_libc = ctypes.CDLL(None, use_errno=True)
_sync_file_range = _libc.sync_file_range
_sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_sync_file_range.restype = ctypes.c_int


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> bool:
    """Ask the kernel to start writing ``length`` bytes of ``fd`` at ``offset`` to disk (by
    default the whole file: pages already being written back are not submitted again, and
    clean ones are skipped, so asking for the whole file as it grows costs no more).

    Returns:
        Whether it accepted (a file system or file type without writeback, e.g. a pipe,
        refuses; that changes nothing about durability, which is the caller's ``fsync``).
    """
    result: int = _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)
    return result == 0
