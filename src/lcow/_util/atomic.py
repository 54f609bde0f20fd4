"""Temp-then-rename output: a file is either complete under its name or absent."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["atomic_output"]


@contextlib.contextmanager
def atomic_output(
    dst: str | os.PathLike[str], *, fsync: bool = False, mode: int = 0o644
) -> Iterator[int]:
    """Yield a descriptor of a new temporary file beside ``dst``; rename it to ``dst`` on success.

    On any exception the temporary file is removed and ``dst`` is left as it was.
    """
    path = os.fspath(dst)
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.urandom(6).hex()}")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        yield fd
        if fsync:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
        if fsync:
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
