"""``extractarchive``: Docker's ``archive.Untar`` confined to a destination directory (SPEC §4.8).

The destination descriptor acts as ``/`` for every lookup (``openat2(RESOLVE_IN_ROOT)``), as if
``Untar`` ran chrooted there: absolute names land below it, symlinks in the tar or already in the
tree resolve inside it, so no entry can write elsewhere. Reading the archive and the per-entry
rules (names and breakout checks, whiteouts, owners, modes, times, xattrs) are
:mod:`lcow.backends.extract_rules`, shared with the vm backend; this module applies them to the
files.

Per entry, as Docker: missing parents are created (0755); an existing entry is replaced unless
both are directories (then merged), or refused with ``NoOverwriteDirNonDir``; ``SCHILY.xattr.*``
are set (ENOTSUP and EPERM ignored); modes are set after the owners; times last, directories'
only after the whole archive. Only a whole archive is extracted without error (entries before
the damage are written, as Docker's ``Untar`` writes them, and the error says where it stopped).
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from lcow.backends.extract_rules import (
    REGULAR_TYPES,
    SPECIAL_TYPES,
    Marker,
    Peeked,
    cannot_replace_root,
    defers_times,
    drain,
    entry_name,
    is_root,
    link_target,
    members,
    mode_bits,
    open_archive,
    overlay_marker,
    owner,
    peek,
    shown,
    sparse_map,
    stream_name,
    tar_error,
    times_ns,
    unhandled_type,
    xattrs,
)
from lcow.backends.scoped import (
    is_dir,
    lstat_in,
    makedirs_in,
    parent_in_root,
    proc_fd,
    remove_all_at,
    view_error,
)
from lcow.backends.taroptions import TarOptions
from lcow.errors import (
    AlreadyExists,
    InvalidArgument,
    LcowError,
    LimitExceeded,
    NoSpace,
    NotFound,
)
from lcow.formats.whiteouts import (
    OPAQUE_VALUE,
    OPAQUE_XATTR,
    WHITEOUT_MODE,
    WHITEOUT_RDEV,
    hidden_name,
)

__all__ = ["untar"]

_CHUNK = 1 << 20
#: The file system does not take the attribute: ignored, as Docker does.
_XATTR_IGNORED = (errno.EOPNOTSUPP, errno.EPERM)


#: What a file-system refusal says about the input (Docker's Untar fails on each as well):
#: a name or value past the kernel's limits, or something the tree cannot hold.
_OS_CATEGORIES: dict[int, type[InvalidArgument]] = {
    errno.ENAMETOOLONG: LimitExceeded,
    errno.E2BIG: LimitExceeded,
    errno.ERANGE: LimitExceeded,
    errno.ENOTDIR: InvalidArgument,
    errno.ELOOP: InvalidArgument,
    errno.EINVAL: InvalidArgument,
}


def _lower(text: str) -> str:
    """A kernel message as lcow words its own ("Not a directory" -> "not a directory")."""
    return text[:1].lower() + text[1:]


@contextmanager
def _entry_errors(name: str) -> Iterator[None]:
    """Name the entry in a failure: a refusal caused by the input becomes its category
    (``InvalidArgument``, ``LimitExceeded``), a full file system :class:`NoSpace`; other OS
    errors (EIO...) keep their class and errno."""
    try:
        yield
    except tarfile.TarError as exc:
        raise tar_error(name, exc) from exc
    except OSError as exc:
        where = shown(name)
        if isinstance(exc, LcowError):
            raise
        kind = _OS_CATEGORIES.get(exc.errno or 0)
        said = _lower(exc.strerror or "")
        if kind is not None:
            raise kind(f"{where}: {said}", subject=where) from exc
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpace(f"{where}: {said}", subject=where, entry=where, code=exc.errno) from exc
        made = view_error(exc, name)
        if made is exc:
            raise
        raise made from None


def _xattr_error(member: tarfile.TarInfo, key: str, exc: OSError) -> Exception:
    """An extended attribute the file system refused: too large for it (ENOSPC, E2BIG,
    ERANGE: a limit) or malformed (EINVAL, e.g. a bad POSIX ACL)."""
    where = shown(member.name)
    what = f"{where}: xattr {shown(key)[:80]}: {_lower(exc.strerror or '')}"
    if exc.errno in (errno.ENOSPC, errno.E2BIG, errno.ERANGE):
        return LimitExceeded(what, subject=where)
    if exc.errno == errno.EINVAL:
        return InvalidArgument(what, subject=where)
    return exc


def untar(dest_fd: int, stream: BinaryIO, options: TarOptions | None = None) -> None:
    """Unpack the tar read from ``stream`` below the directory ``dest_fd`` (its root).

    The archive must be whole: a compressed stream complete, the tar ending with its
    end-of-archive marker (an empty input is no archive either).

    Raises:
        InvalidArgument: a malformed or incomplete archive, a name or hard link climbing out
            with ``..``, an unsupported entry type.
        AlreadyExists: ``NoOverwriteDirNonDir`` and a directory/non-directory clash.
        OSError: a file-system failure, naming the entry.
    """
    _Untar(dest_fd, options or TarOptions()).run(peek(stream), stream_name(stream))
    drain(stream)


class _Untar:
    def __init__(self, dest_fd: int, options: TarOptions) -> None:
        self.dest = dest_fd
        self.options = options
        self.dirs: list[tuple[str, int, int]] = []

    def run(self, stream: Peeked, source: str) -> None:
        with open_archive(stream, source) as archive:
            for member in members(archive, source):
                with _entry_errors(member.name):
                    self._entry(archive, member)
        for name, atime, mtime in self.dirs:
            if name == ".":
                with _entry_errors(name):
                    os.utime(proc_fd(self.dest), ns=(atime, mtime))
                continue
            with _entry_errors(name), parent_in_root(self.dest, name) as (fd, base):
                os.utime(base, ns=(atime, mtime), dir_fd=fd, follow_symlinks=False)

    def _entry(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = entry_name(member, self.options)
        if name is None:
            return
        if is_root(name):
            if member.isdir():  # the destination itself: merged, its metadata applied (Docker)
                self._metadata(self.dest, b".", member, ".")
                return
            raise cannot_replace_root(member)
        parent = posixpath.dirname(name)
        if parent not in ("", "/") and not self._exists(parent):
            makedirs_in(self.dest, parent, 0o755)
        with parent_in_root(self.dest, name) as (dir_fd, base):
            existing = lstat_in(dir_fd, base)
            if existing is not None:
                self._clear(dir_fd, base, existing, member)
            marker = overlay_marker(base, self.options)
            if marker is not None:
                self._whiteout(dir_fd, base, member, marker)
                return
            self._create(archive, dir_fd, base, member, is_dir(existing))
            self._metadata(dir_fd, base, member, name)

    def _exists(self, name: str) -> bool:
        """Whether ``name`` itself exists (a dangling symlink does; Docker's ``Lstat``)."""
        try:
            with parent_in_root(self.dest, name) as (dir_fd, base):
                return lstat_in(dir_fd, base) is not None
        except (FileNotFoundError, NotADirectoryError):
            return False

    def _clear(
        self,
        dir_fd: int,
        base: bytes,
        existing: os.stat_result,
        member: tarfile.TarInfo,
    ) -> None:
        was_dir = stat.S_ISDIR(existing.st_mode)
        if self.options.no_overwrite_dir_non_dir and was_dir != member.isdir():
            what = "directory with non-directory" if was_dir else "non-directory with directory"
            where = shown(member.name)
            raise AlreadyExists(f"{where}: cannot overwrite {what}", subject=where)
        if not (was_dir and member.isdir()):
            remove_all_at(dir_fd, base)

    def _whiteout(self, dir_fd: int, base: bytes, member: tarfile.TarInfo, marker: Marker) -> None:
        """The overlay form of an AUFS marker (nothing else of the entry is written)."""
        if marker is Marker.OPAQUE:
            os.setxattr(proc_fd(dir_fd), OPAQUE_XATTR, OPAQUE_VALUE)
            return
        hidden = hidden_name(base)
        os.mknod(hidden, WHITEOUT_MODE, WHITEOUT_RDEV, dir_fd=dir_fd)
        os.chown(hidden, member.uid, member.gid, dir_fd=dir_fd, follow_symlinks=False)

    def _create(
        self,
        archive: tarfile.TarFile,
        dir_fd: int,
        base: bytes,
        member: tarfile.TarInfo,
        merge: bool,
    ) -> None:
        mode = mode_bits(member)
        if member.type == tarfile.DIRTYPE:
            if not merge:
                os.mkdir(base, mode, dir_fd=dir_fd)
        elif member.type in REGULAR_TYPES:
            self._write(archive, dir_fd, base, member)
        elif member.type == tarfile.SYMTYPE:
            os.symlink(os.fsencode(member.linkname), base, dir_fd=dir_fd)
        elif member.type == tarfile.LNKTYPE:
            self._hardlink(dir_fd, base, member)
        elif member.type in SPECIAL_TYPES:
            device = os.makedev(member.devmajor, member.devminor)
            os.mknod(base, SPECIAL_TYPES[member.type] | mode, device, dir_fd=dir_fd)
        else:
            raise unhandled_type(member)

    def _write(
        self, archive: tarfile.TarFile, dir_fd: int, base: bytes, member: tarfile.TarInfo
    ) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(base, flags, mode_bits(member) & 0o777, dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as out:
            segments = sparse_map(member)
            if segments is None:
                data = archive.extractfile(member)
                if data is None:
                    return
                while chunk := data.read(_CHUNK):
                    out.write(chunk)
                return
            # Only the stored segments are written, read in order from the archive stream;
            # the holes stay holes (Go's reader seeks over them too), so a 1 TiB sparse file
            # costs what it stores.
            stream = archive.fileobj
            assert stream is not None
            stream.seek(member.offset_data)
            for offset, length in segments:
                at, left = offset, length
                while left:
                    chunk = stream.read(min(left, _CHUNK))
                    if not chunk:
                        raise tarfile.ReadError("unexpected end of data")
                    os.pwrite(out.fileno(), chunk, at)
                    at += len(chunk)
                    left -= len(chunk)
            out.truncate(member.size)

    def _hardlink(self, dir_fd: int, base: bytes, member: tarfile.TarInfo) -> None:
        target = link_target(member)
        try:
            with parent_in_root(self.dest, target) as (target_fd, target_base):
                try:
                    os.link(
                        target_base,
                        base,
                        src_dir_fd=target_fd,
                        dst_dir_fd=dir_fd,
                        follow_symlinks=False,
                    )
                except PermissionError as exc:  # as root: the target is a directory
                    where = shown(member.name)
                    found = lstat_in(target_fd, target_base)
                    why = (
                        "is a directory"
                        if found is not None and stat.S_ISDIR(found.st_mode)
                        else f"cannot be linked: {_lower(exc.strerror or '')}"
                    )
                    raise InvalidArgument(
                        f"{where}: hard link target {shown(member.linkname)} {why}",
                        subject=where,
                    ) from exc
        except FileNotFoundError as exc:  # the target, or a directory on its way
            where = shown(member.name)
            raise NotFound(
                f"{where}: hard link target {shown(member.linkname)} not found", subject=where
            ) from exc

    def _metadata(self, dir_fd: int, base: bytes, member: tarfile.TarInfo, name: str) -> None:
        ids = owner(member, self.options)
        if ids is not None:
            os.chown(base, *ids, dir_fd=dir_fd, follow_symlinks=False)
        fd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            where = proc_fd(fd)
            for key, value in xattrs(member):
                try:
                    os.setxattr(where, key, value)
                except OSError as exc:
                    if exc.errno not in _XATTR_IGNORED:
                        raise _xattr_error(member, key, exc) from exc
            # Linux has no symlink modes; chmod after chown, which clears setuid/setgid.
            if not stat.S_ISLNK(os.fstat(fd).st_mode):
                os.chmod(where, mode_bits(member))
        finally:
            os.close(fd)
        atime, mtime = times_ns(member)
        if defers_times(member):
            self.dirs.append((name, atime, mtime))
        else:
            os.utime(base, ns=(atime, mtime), dir_fd=dir_fd, follow_symlinks=False)
