"""Atomic and durable file output: a file is complete under its name or absent, and once
committed (with ``fsync``) it stays so across a crash.

The one place for lcow's temp-then-rename: the hidden temporary name beside the destination
(``.<name>.tmp-<12 hex>``, which Cleanup recognises with :func:`is_temporary`), the rename, and
the two fsyncs that make it durable — the file's data before the rename, the directory's entry
after it (without the latter a crash may bring back the old name, or none).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = [
    "atomic_output",
    "fsync_dir",
    "is_temporary",
    "output_to",
    "replace_durably",
    "temporary_path",
]

#: What every temporary name carries after the destination's name.
_TEMP_MARK = ".tmp-"

StrPath = str | os.PathLike[str]


def temporary_path(dst: StrPath) -> str:
    """A new hidden name beside ``dst`` for writing it: ``<dir>/.<name>.tmp-<12 hex>``."""
    path = os.fspath(dst)
    directory, base = os.path.split(path)
    # os.urandom is what secrets.token_hex reads; importing secrets would load hashlib and
    # OpenSSL (about 4 MiB of RSS) into every tar2ext4 run for 12 hex digits.
    return os.path.join(directory, f".{base}{_TEMP_MARK}{os.urandom(6).hex()}")


def is_temporary(name: str) -> bool:
    """Whether the directory entry ``name`` is a temporary name (:func:`temporary_path`) that
    an interrupted write may have left behind."""
    return name.startswith(".") and _TEMP_MARK in name


def fsync_dir(directory: StrPath) -> None:
    """Make the entries of ``directory`` (a rename, a link, a removal in it) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(src: StrPath, dst: StrPath) -> None:
    """Rename ``src`` over ``dst`` and make the rename durable (``fsync`` of ``dst``'s
    directory, and of ``src``'s when it is another one). ``src``'s data must be synced
    already."""
    os.replace(src, dst)
    directory = os.path.dirname(os.fspath(dst)) or "."
    fsync_dir(directory)
    source_dir = os.path.dirname(os.fspath(src)) or "."
    if source_dir != directory and not os.path.samefile(source_dir, directory):
        fsync_dir(source_dir)


@contextlib.contextmanager
def atomic_output(
    dst: StrPath, *, fsync: bool = False, mode: int = 0o644, temporary: StrPath | None = None
) -> Iterator[int]:
    """Yield a descriptor of a new temporary file beside ``dst``; rename it to ``dst`` on success.

    On any exception the temporary file is removed and ``dst`` is left as it was.

    Args:
        dst: the file to write.
        fsync: make the result durable: the file's data synced before the rename, the directory
            after it.
        mode: permissions of a new file.
        temporary: a fixed temporary name to use (truncated if it exists: the caller makes sure
            only one writer uses it at a time), instead of a new random one.
    """
    path = os.fspath(dst)
    if temporary is None:
        tmp = temporary_path(path)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    else:
        tmp = os.fspath(temporary)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        yield fd
        if fsync:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        if fsync:
            replace_durably(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def output_to(
    path_or_fd: StrPath | int, *, fsync: bool = False, mode: int = 0o644
) -> Iterator[int]:
    """A descriptor to write a whole file into: a path is written with :func:`atomic_output`;
    a descriptor (a file the caller made, e.g. under its own temporary name) is yielded as it
    is — neither synced, renamed nor closed, its durability the caller's."""
    if isinstance(path_or_fd, int):
        yield path_or_fd
        return
    with atomic_output(path_or_fd, fsync=fsync, mode=mode) as fd:
        yield fd
