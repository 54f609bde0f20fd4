"""The host backend's view: the 20 remotefs operations over a host directory (SPEC §4.8).

The mount machinery mounts a layer's root file system somewhere on the host and hands the
directory to :class:`HostFS`. Every operation opens that directory afresh and resolves its path
with ``openat2(RESOLVE_IN_ROOT)`` (:mod:`.scoped`), so symlinks and ``..`` behave as in a chroot
and a tree changing underneath cannot redirect an operation outside it; the final component is
then acted on with ``dir_fd=`` and without following it. No descriptor is kept between calls, so
the mount owner can unmount once the view is released.

Errors are :class:`OSError` subclasses carrying the errno and the path inside the view.
"""

from __future__ import annotations

import errno
import fcntl
import os
import posixpath
import stat
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import BinaryIO, cast

from lcow.backends.archive import tar_with_options
from lcow.backends.base import FileInfo
from lcow.backends.resolve import resolve_in_view
from lcow.backends.scoped import (
    makedirs_in,
    normalize,
    open_in_root,
    open_root,
    parent_in_root,
    proc_fd,
    remove_all_at,
    view_error,
)
from lcow.backends.taroptions import TarOptions
from lcow.backends.untar import untar
from lcow.errors import InvalidArgument

__all__ = ["HostFS"]

_MAX_SYMLINKS = 40
_XATTR_SKIP = frozenset((errno.ENODATA, errno.ENOTSUP, errno.EPERM, errno.EACCES))


@contextmanager
def _named(path: str, other: str | None = None) -> Iterator[None]:
    """Re-raise an OS error with the caller's view path (not a host path or a parent)."""
    try:
        yield
    except OSError as exc:
        made = view_error(exc, path, other)
        if made is exc:
            raise
        raise made from None


def _info(name: str, st: os.stat_result) -> FileInfo:
    return FileInfo(
        name=name,
        size=st.st_size,
        mode=st.st_mode,
        mtime_ns=st.st_mtime_ns,
        uid=st.st_uid,
        gid=st.st_gid,
        nlink=st.st_nlink,
        rdev=st.st_rdev,
        ino=st.st_ino,
    )


def _base(path: str) -> str:
    return os.fsdecode(posixpath.basename(normalize(path))) or "/"


def _fdopen_mode(flags: int) -> str:
    access = flags & os.O_ACCMODE
    if flags & os.O_APPEND:
        return "ab" if access == os.O_WRONLY else "a+b"
    return {os.O_RDONLY: "rb", os.O_WRONLY: "wb"}.get(access, "r+b")


class HostFS:
    """ContainerFS over a host directory; usable on any plain directory.

    Args:
        root: the host directory that is ``/`` of the view.
        layer_id: the layer the view belongs to (for messages).
    """

    backend_name = "host"

    def __init__(self, root: str, *, layer_id: str = "") -> None:
        self._root = os.fspath(root)
        self.layer_id = layer_id

    @property
    def path(self) -> str:
        """The host directory holding the view."""
        return self._root

    # -- scoping -----------------------------------------------------------------------------

    @contextmanager
    def _root_fd(self) -> Iterator[int]:
        fd = open_root(self._root)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def _parent(self, path: str) -> Iterator[tuple[int, bytes]]:
        with self._root_fd() as root, parent_in_root(root, path) as found:
            yield found

    def _open_regular(self, path: str, flags: int, perm: int = 0) -> int:
        """A descriptor of a regular file resolved in the root (final symlink followed).

        Devices and FIFOs are refused before they are opened (no driver side effects, no
        blocking); a race is caught by the check after opening.
        """
        with self._root_fd() as root:
            try:
                probe = open_in_root(root, path, os.O_PATH)
            except FileNotFoundError:
                if not flags & os.O_CREAT:
                    raise
            else:
                try:
                    self._check_regular(path, os.fstat(probe))
                finally:
                    os.close(probe)
            fd = open_in_root(root, path, flags | os.O_NONBLOCK | os.O_NOCTTY, perm)
        try:
            self._check_regular(path, os.fstat(fd))
            if not flags & os.O_NONBLOCK:
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _check_regular(path: str, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"{path}: not a regular file", subject=path)

    # -- reading -----------------------------------------------------------------------------

    def stat(self, path: str) -> FileInfo:
        """Information about ``path``, symlinks followed inside the view."""
        with _named(path), self._root_fd() as root:
            fd = open_in_root(root, path, os.O_PATH)
            try:
                return _info(_base(path), os.fstat(fd))
            finally:
                os.close(fd)

    def lstat(self, path: str) -> FileInfo:
        """Information about ``path`` itself."""
        with _named(path), self._parent(path) as (fd, name):
            return _info(_base(path), os.stat(name, dir_fd=fd, follow_symlinks=False))

    def readlink(self, path: str) -> str:
        """A symlink's target, verbatim."""
        with _named(path), self._parent(path) as (fd, name):
            return os.fsdecode(os.readlink(name, dir_fd=fd))

    def readdir(self, path: str) -> list[FileInfo]:
        """Entries of a directory (symlinks to directories followed), sorted by name."""
        with _named(path), self._root_fd() as root:
            fd = open_in_root(root, path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                entries: list[FileInfo] = []
                with os.scandir(fd) as it:
                    for entry in it:
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue  # removed while listing
                        entries.append(_info(entry.name, st))
            finally:
                os.close(fd)
        entries.sort(key=lambda e: os.fsencode(e.name))
        return entries

    def open(self, path: str) -> BinaryIO:
        """A readable binary file object over a regular file (symlinks followed)."""
        with _named(path):
            fd = self._open_regular(path, os.O_RDONLY)
        return cast(BinaryIO, os.fdopen(fd, "rb"))

    def readfile(self, path: str) -> bytes:
        """A whole regular file."""
        with self.open(path) as fh:
            return fh.read()

    def resolve_path(self, path: str) -> str:
        """``path`` with every symlink resolved inside the view; a missing tail is kept as is.

        Raises:
            OSError: ``ELOOP`` after 40 symlinks.
        """
        return resolve_in_view(path, self.lstat, self.readlink)

    def archive_path(
        self, path: str, out: Callable[[bytes], object], options: TarOptions | None = None
    ) -> None:
        """Write a tar of ``path`` to ``out`` as Docker's ``TarWithOptions`` (see
        :func:`~lcow.backends.archive.tar_with_options`); xattrs the host lets us read included."""
        tar_with_options(self, path, out, options, xattrs=self._xattrs, link_key=self._link_key)

    def _xattrs(self, path: str, info: FileInfo) -> dict[bytes, bytes]:
        with self._parent(path) as (dir_fd, name):
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            where = proc_fd(fd)  # the inode itself, a symlink's included
            try:
                keys = os.listxattr(where)
            except OSError as exc:
                if exc.errno in _XATTR_SKIP:
                    return {}
                raise
            found: dict[bytes, bytes] = {}
            for key in keys:
                try:
                    found[os.fsencode(key)] = os.getxattr(where, key)
                except OSError as exc:
                    if exc.errno not in _XATTR_SKIP:
                        raise
            return found
        finally:
            os.close(fd)

    def _link_key(self, path: str, info: FileInfo) -> Hashable:
        with self._parent(path) as (fd, name):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        return st.st_dev, st.st_ino

    # -- writing -----------------------------------------------------------------------------

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        """Create one directory (its parent must exist)."""
        with _named(path), self._parent(path) as (fd, name):
            os.mkdir(name, mode, dir_fd=fd)

    def mkdir_all(self, path: str, mode: int = 0o755) -> None:
        """Create a directory and any missing parents; an existing directory is fine."""
        with _named(path), self._root_fd() as root:
            makedirs_in(root, path, mode)

    def _not_root(self, path: str) -> None:
        if normalize(path) == b"/":
            raise OSError(errno.EBUSY, "the root of a view cannot be removed", path)

    def remove(self, path: str) -> None:
        """Remove a file, symlink, special file or empty directory."""
        self._not_root(path)
        with _named(path), self._parent(path) as (fd, name):
            try:
                os.unlink(name, dir_fd=fd)
            except IsADirectoryError:
                os.rmdir(name, dir_fd=fd)

    def remove_all(self, path: str) -> None:
        """Remove ``path`` and everything below it without following symlinks; missing is fine."""
        self._not_root(path)
        with _named(path), self._root_fd() as root:
            try:
                with parent_in_root(root, path) as (fd, name):
                    remove_all_at(fd, name)
            except FileNotFoundError:
                pass  # a missing parent: nothing to remove

    def link(self, old: str, new: str) -> None:
        """Hard-link ``new`` to ``old`` (a symlink ``old`` is linked itself, not followed)."""
        with (
            _named(old, new),
            self._root_fd() as root,
            parent_in_root(root, old) as (old_fd, old_name),
            parent_in_root(root, new) as (new_fd, new_name),
        ):
            os.link(old_name, new_name, src_dir_fd=old_fd, dst_dir_fd=new_fd, follow_symlinks=False)

    def symlink(self, target: str, new: str) -> None:
        """Create symlink ``new`` → ``target`` (target stored verbatim)."""
        with _named(new), self._parent(new) as (fd, name):
            os.symlink(os.fsencode(target), name, dir_fd=fd)

    def lchmod(self, path: str, mode: int) -> None:
        """Set permission bits (incl. setuid/setgid/sticky) without following a symlink;
        symlinks themselves are left alone (Linux has no symlink modes)."""
        with _named(path), self._parent(path) as (dir_fd, name):
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                if not stat.S_ISLNK(os.fstat(fd).st_mode):
                    os.chmod(proc_fd(fd), mode & 0o7777)
            finally:
                os.close(fd)

    def lchown(self, path: str, uid: int, gid: int) -> None:
        """Set owners without following a symlink (-1 keeps one)."""
        with _named(path), self._parent(path) as (fd, name):
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)

    def mknod(self, path: str, mode: int, major: int, minor: int) -> None:
        """Create a device node or other special file (``mode`` includes the type)."""
        with _named(path), self._parent(path) as (fd, name):
            os.mknod(name, mode, os.makedev(major, minor), dir_fd=fd)

    def mkfifo(self, path: str, mode: int) -> None:
        """Create a named pipe."""
        with _named(path), self._parent(path) as (fd, name):
            os.mkfifo(name, mode, dir_fd=fd)

    def open_file(self, path: str, flags: int, perm: int = 0o644) -> BinaryIO:
        """Open a regular file with ``os.open`` flags; returns a binary file object."""
        with _named(path):
            fd = self._open_regular(path, flags, perm)
        return cast(BinaryIO, os.fdopen(fd, _fdopen_mode(flags)))

    def write_file(self, path: str, data: bytes, perm: int = 0o644) -> None:
        """Create or truncate a regular file with ``data``."""
        with _named(path):
            fd = self._open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, perm)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)

    def extract_archive(
        self, dest: str, stream: BinaryIO, options: TarOptions | None = None
    ) -> None:
        """Unpack a tar below ``dest`` (created if missing) as Docker's ``Untar`` would in a
        chroot at ``dest``: nothing lands outside it (see :func:`~lcow.backends.untar.untar`)."""
        with self._root_fd() as root:
            with _named(dest):
                makedirs_in(root, dest)
                dest_fd = open_in_root(root, dest, os.O_PATH | os.O_DIRECTORY)
            try:
                untar(dest_fd, stream, options)
            finally:
                os.close(dest_fd)

    def close(self) -> None:
        """Nothing to release: no descriptor outlives a call (idempotent)."""
