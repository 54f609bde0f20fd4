"""Where a file holds data: its ranges outside holes, as ``SEEK_DATA``/``SEEK_HOLE`` tell.

Readers that hash a whole image (the dm-verity tree, a VHD's content-derived unique id) skip
the holes of a sparse image: what a hole reads as is known (zeros), so its digest is too.
"""

from __future__ import annotations

import errno
import os

__all__ = ["data_ranges"]


def data_ranges(fd: int, size: int, align: int) -> list[tuple[int, int]]:
    """``(start, end)`` ranges of ``[0, size)`` that may hold data, widened to ``align``.

    Starts are rounded down and ends up to multiples of ``align`` (ends capped at ``size``);
    touching ranges are merged. Where the platform or the file system cannot tell holes, the
    whole range is returned. The file offset of ``fd`` is left where it was.

    Args:
        fd: an open descriptor.
        size: bytes of the file to consider.
        align: granularity of the ranges (a positive power of two is usual).
    """
    seek_data = getattr(os, "SEEK_DATA", None)
    seek_hole = getattr(os, "SEEK_HOLE", None)
    if seek_data is None or seek_hole is None:
        return [(0, size)] if size > 0 else []
    saved = os.lseek(fd, 0, os.SEEK_CUR)
    ranges: list[tuple[int, int]] = []
    try:
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, seek_data)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole remains
                    break
                if exc.errno == errno.EINVAL:
                    return [(0, size)]
                raise
            if start >= size:
                break
            end = os.lseek(fd, start, seek_hole)
            start = start // align * align
            end = min(-(-end // align) * align, size)
            if ranges and ranges[-1][1] >= start:
                ranges[-1] = (ranges[-1][0], end)
            else:
                ranges.append((start, end))
            pos = end
    finally:
        os.lseek(fd, saved, os.SEEK_SET)
    return ranges
