"""Race-free path resolution confined to a root directory (SPEC §4.8: paths never leave the view).

Every lookup goes through Linux ``openat2(2)`` with ``RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`` on
a descriptor of the root: the kernel resolves symlinks (absolute ones too) and ``..`` as if the
root were ``/``, so a tree being changed underneath cannot steer a lookup outside it. Callers then
act on the final component with ``dir_fd=`` and without following it, so nothing a path string
says is trusted twice.

View paths are ``str`` (non-UTF-8 bytes as ``surrogateescape``) or ``bytes``; they are normalised
lexically (``/a/../b`` is ``/b``) before the kernel sees them, and a NUL byte is refused.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import posixpath
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from lcow.errors import AlreadyExists, InvalidArgument, LcowError, NotFound, NotSupported

__all__ = [
    "RESOLVE_IN_ROOT",
    "RESOLVE_NO_MAGICLINKS",
    "is_dir",
    "lstat_in",
    "makedirs_in",
    "normalize",
    "open_in_root",
    "open_root",
    "parent_in_root",
    "probe_openat2",
    "proc_fd",
    "remove_all_at",
    "split",
    "view_error",
]

# <linux/openat2.h>
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
_SCOPED = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
#: ``openat2`` has the same number on every architecture with the unified syscall table.
_SYS_OPENAT2 = 437
#: EAGAIN means a concurrent rename or mount raced the lookup; the kernel asks for a retry.
_RETRIES = 64


class _OpenHow(ctypes.Structure):
    """``struct open_how`` (all three fields ``__u64``)."""

    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


_ALPHA = platform.machine().startswith("alpha")  # the one architecture numbering it otherwise
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _unsupported(why: str) -> NotSupported:
    return NotSupported(
        f"openat2: {why}; the host backend needs Linux 5.6 or newer (openat2 with "
        "RESOLVE_IN_ROOT) to confine paths to a view",
        subject="openat2",
    )


def _openat2(dir_fd: int, path: bytes, flags: int, mode: int, resolve: int) -> int:
    if _ALPHA:
        raise _unsupported("unknown syscall number on alpha")
    if not flags & (os.O_CREAT | os.O_TMPFILE):
        mode = 0  # openat2 rejects a mode without O_CREAT
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    for _ in range(_RETRIES):
        fd = int(
            _syscall(
                ctypes.c_long(_SYS_OPENAT2),
                ctypes.c_int(dir_fd),
                ctypes.c_char_p(path),
                ctypes.byref(how),
                ctypes.c_size_t(ctypes.sizeof(how)),
            )
        )
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err == errno.EAGAIN:
            continue
        if err == errno.ENOSYS:
            raise _unsupported("the kernel does not have this system call")
        if err == errno.E2BIG:
            raise _unsupported("the kernel rejects struct open_how")
        raise OSError(err, os.strerror(err), os.fsdecode(path))
    raise OSError(errno.EAGAIN, "path kept changing during lookup", os.fsdecode(path))


_CATEGORIES: dict[int, type[NotFound] | type[AlreadyExists]] = {
    errno.ENOENT: NotFound,
    errno.EEXIST: AlreadyExists,
}


def view_error(exc: OSError, path: str, other: str | None = None) -> OSError:
    """``exc`` re-made to name ``path`` (and ``other``), the paths the caller gave.

    ENOENT and EEXIST become lcow's :class:`NotFound` / :class:`AlreadyExists` (still
    ``FileNotFoundError`` / ``FileExistsError`` with errno and filename); other errnos keep
    their built-in class. lcow errors and errno-less ones are returned unchanged.
    """
    if isinstance(exc, LcowError) or exc.errno is None:
        return exc
    kind = _CATEGORIES.get(exc.errno)
    if kind is None:
        return OSError(exc.errno, exc.strerror, path, None, other)
    shown = path if other is None else f"{path} -> {other}"
    made = kind(f"{shown}: {exc.strerror}", subject=path)
    made.errno, made.strerror, made.filename, made.filename2 = exc.errno, exc.strerror, path, other
    return made


def normalize(path: str | bytes) -> bytes:
    """``path`` made absolute and lexically clean (``//a/./b/../c`` → ``/a/c``).

    Raises:
        InvalidArgument: the path contains a NUL byte.
    """
    raw = os.fsencode(path)
    if b"\x00" in raw:
        shown = raw.decode("utf-8", "backslashreplace")
        raise InvalidArgument(f"{shown}: path contains a NUL byte", subject=shown)
    return posixpath.normpath(b"/" + raw.lstrip(b"/"))


def split(path: str | bytes) -> tuple[bytes, bytes]:
    """(parent, final name) of a normalised view path; the root gives ``(b"/", b".")``."""
    norm = normalize(path)
    if norm == b"/":
        return b"/", b"."
    parent, name = norm.rsplit(b"/", 1)
    return parent or b"/", name


def probe_openat2() -> None:
    """Check once that the kernel confines lookups (for a backend's prerequisites).

    Raises:
        NotSupported: no usable ``openat2``.
    """
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.close(_openat2(fd, b"/", os.O_PATH | os.O_DIRECTORY, 0, _SCOPED))
    finally:
        os.close(fd)


def open_root(root: str | bytes) -> int:
    """An ``O_PATH`` descriptor of the host directory that acts as ``/``."""
    return os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def open_in_root(root_fd: int, path: str | bytes, flags: int, mode: int = 0) -> int:
    """Open ``path`` resolved inside ``root_fd`` (symlinks followed, never out of the root).

    Raises:
        OSError: from the kernel, naming ``path`` (``ELOOP`` for symlink loops).
        NotSupported: the kernel has no usable ``openat2``.
    """
    norm = normalize(path)
    try:
        return _openat2(root_fd, norm, flags, mode, _SCOPED)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, os.fsdecode(norm)) from None


@contextmanager
def parent_in_root(root_fd: int, path: str | bytes) -> Iterator[tuple[int, bytes]]:
    """``(dir_fd, name)``: an ``O_PATH`` descriptor of ``path``'s parent, resolved inside the root,
    and the final component to act on with ``dir_fd=`` (``b"."`` for the root itself)."""
    parent, name = split(path)
    fd = open_in_root(root_fd, parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield fd, name
    finally:
        os.close(fd)


def lstat_in(dir_fd: int, name: bytes) -> os.stat_result | None:
    """``lstat`` of ``name`` in ``dir_fd``, or ``None`` when it does not exist."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def proc_fd(fd: int) -> str:
    """``/proc/self/fd/N``: lets path-only calls (chmod, xattrs) act on an ``O_PATH`` descriptor,
    including a symlink's own inode."""
    return f"/proc/self/fd/{fd}"


def is_dir(st: os.stat_result | None) -> bool:
    """Whether a (possibly missing) stat result is a directory."""
    return st is not None and stat.S_ISDIR(st.st_mode)


def makedirs_in(root_fd: int, path: str | bytes, mode: int = 0o755) -> None:
    """``mkdir -p`` inside the root (Go's ``MkdirAll``): existing directories, or symlinks to
    directories inside the root, are fine.

    Raises:
        NotADirectoryError: a component exists and is not a directory.
        FileExistsError: a component is a dangling symlink.
    """
    norm = normalize(path)
    try:
        os.close(open_in_root(root_fd, norm, os.O_PATH | os.O_DIRECTORY))
        return
    except FileNotFoundError:
        pass
    parts = [p for p in norm.split(b"/") if p]
    for i in range(1, len(parts) + 1):
        prefix = b"/" + b"/".join(parts[:i])
        with parent_in_root(root_fd, prefix) as (fd, name):
            try:
                os.mkdir(name, mode, dir_fd=fd)
                continue
            except FileExistsError:
                pass
        try:
            os.close(open_in_root(root_fd, prefix, os.O_PATH | os.O_DIRECTORY))
        except FileNotFoundError:  # a dangling symlink is in the way
            raise FileExistsError(
                errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(prefix)
            ) from None


def _missing_is_fine(func: Any, path: str, exc_info: Any) -> None:
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


def remove_all_at(dir_fd: int, name: bytes) -> None:
    """Remove ``name`` in ``dir_fd`` and everything below it, never following a symlink
    (descriptor-based ``rmtree``); a missing entry is fine."""
    st = lstat_in(dir_fd, name)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(os.fsdecode(name), dir_fd=dir_fd, onerror=_missing_is_fine)
        return
    with suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)
