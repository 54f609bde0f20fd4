"""Copies of a sandbox template: sparse, complete or absent, never overwriting (SPEC §4.5).

``copy_file_range`` on ext4 would make the copy dense, so data extents are found with
``SEEK_DATA``/``SEEK_HOLE`` and only non-zero chunks are written.
"""

from __future__ import annotations

import contextlib
import errno
import os

from lcow._util.atomic import fsync_dir, temporary_path
from lcow.errors import AlreadyExists

__all__ = ["copy_sandbox"]

_COPY_CHUNK = 1 << 20


def _copy_data(src_fd: int, dst_fd: int, size: int) -> None:
    """Copy the data extents of ``src_fd`` into ``dst_fd``, leaving holes (and zeros) as holes."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(src_fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            start, end = pos, size  # no hole support: everything is data
        else:
            end = min(os.lseek(src_fd, start, os.SEEK_HOLE), size)
        while start < end:
            chunk = os.pread(src_fd, min(_COPY_CHUNK, end - start), start)
            if not chunk:
                raise OSError(errno.EIO, "source file shrank while being copied")
            if chunk != bytes(len(chunk)):
                view = memoryview(chunk)
                offset = start
                while view:
                    n = os.pwrite(dst_fd, view, offset)
                    view = view[n:]
                    offset += n
            start += len(chunk)
        pos = end


def copy_sandbox(template: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy a sandbox template to ``dst`` keeping it sparse; never overwrites (SPEC §4.5).

    The copy is written under a temporary name, synced, then hard-linked to ``dst`` (which fails
    if ``dst`` exists, also when another process created it meanwhile) and the temporary name
    removed, so ``dst`` is either complete or absent.

    Raises:
        AlreadyExists: ``dst`` exists.
        OSError: reading or writing failed (``FileNotFoundError`` without a template).
    """
    target = os.fspath(dst)
    if os.path.lexists(target):
        raise AlreadyExists(f"{target}: sandbox already exists", subject=target)
    directory = os.path.dirname(target) or "."
    tmp = temporary_path(target)
    src_fd = os.open(template, os.O_RDONLY | os.O_CLOEXEC)
    try:
        out_fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(src_fd).st_size
            os.ftruncate(out_fd, size)
            _copy_data(src_fd, out_fd, size)
            os.fsync(out_fd)
        finally:
            os.close(out_fd)
        try:
            os.link(tmp, target)
        except FileExistsError as exc:
            raise AlreadyExists(f"{target}: sandbox already exists", subject=target) from exc
        fsync_dir(directory)
    finally:
        os.close(src_fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
