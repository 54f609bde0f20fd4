"""``extractarchive``: Docker's ``archive.Untar`` confined to a destination directory (SPEC §4.8).

The destination descriptor acts as ``/`` for every lookup (``openat2(RESOLVE_IN_ROOT)``), as if
``Untar`` ran chrooted there: absolute names land below it, symlinks in the tar or already in the
tree resolve inside it, so no entry can write elsewhere. Names that climb out with ``..`` are
refused (Docker's breakout check), as are hard links to such names.

Per entry, as Docker: missing parents are created (0755); an existing entry is replaced unless
both are directories (then merged), or refused with ``NoOverwriteDirNonDir``; owners come from
the header unless ``NoLchown`` (``ChownOpts`` overrides them); ``SCHILY.xattr.*`` are set (ENOTSUP
and EPERM ignored); modes incl. setuid/setgid/sticky are set after the owners, never on
symlinks; atime (at least mtime) and mtime last, directories' only after the whole archive. The
overlay whiteout format turns ``.wh.<name>`` into a 0/0 character device and
``.wh..wh..opq`` into ``trusted.overlay.opaque=y`` on its directory.

The tar is read in streaming mode (gzip, zstd, bzip2 and xz are recognised, as Docker's
``DecompressStream`` does); only one member's metadata is held at a time. Only a whole archive
is extracted without error: a compressed stream must be complete and the tar must end with its
end-of-archive marker (entries before the damage are written, as Docker's ``Untar`` writes
them, and the error says where it stopped).
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, BinaryIO, cast

from lcow._util.decompress import DecompressedReader, detect
from lcow._util.escape import quoted
from lcow._util.stricttar import StrictTarInfo, TooLarge
from lcow.backends.host.scoped import (
    is_dir,
    lstat_in,
    makedirs_in,
    parent_in_root,
    proc_fd,
    remove_all_at,
    view_error,
)
from lcow.backends.taroptions import OVERLAY_WHITEOUTS, TarOptions
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
    is_opaque_marker,
    is_whiteout_name,
)

__all__ = ["untar"]

_CHUNK = 1 << 20
_SNIFF = tarfile.BLOCKSIZE  # read ahead: the first header, or a compression's magic
#: What Docker's ``DecompressStream`` recognises.
_COMPRESSIONS = ("gzip", "zstd", "bzip2", "xz")
_NS = 1_000_000_000
_XATTR_PREFIX = "SCHILY.xattr."
#: The file system does not take the attribute: ignored, as Docker does.
_XATTR_IGNORED = (errno.EOPNOTSUPP, errno.EPERM)
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE)
_SPECIAL = {
    tarfile.CHRTYPE: stat.S_IFCHR,
    tarfile.BLKTYPE: stat.S_IFBLK,
    tarfile.FIFOTYPE: stat.S_IFIFO,
}


class _Peeked:
    """``stream`` with bytes already read from it put back in front."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head = head
        self._stream = stream

    def peek(self) -> bytes:
        """The bytes read ahead (what compression detection looks at)."""
        return self._head

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._stream.read(size)
        if size < 0:
            data, self._head = self._head + self._stream.read(), b""
            return data
        data, self._head = self._head[:size], self._head[size:]
        if len(data) < size:
            data += self._stream.read(size - len(data))
        return data


def _clean(name: str) -> str:
    """Go's ``filepath.Clean``: lexical, ``..`` kept at the front of a relative name."""
    cleaned = posixpath.normpath(name) if name else "."
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def _escapes(name: str) -> bool:
    return name == ".." or name.startswith("../")


def _shown(name: str) -> str:
    return os.fsencode(name).decode("utf-8", "surrogateescape")


def _time_ns(member: tarfile.TarInfo, key: str) -> int | None:
    text = member.pax_headers.get(key)
    if text is None:
        return int(member.mtime) * _NS if key == "mtime" else None
    negative = text.startswith("-")
    whole, _, frac = text.lstrip("-").partition(".")
    try:
        ns = int(whole or "0") * _NS + int(frac[:9].ljust(9, "0"))
    except ValueError:
        shown = _shown(member.name)
        raise InvalidArgument(f"{shown}: invalid PAX {key} {quoted(text)}", subject=shown) from None
    return -ns if negative else ns


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
        shown = _shown(name)
        raise InvalidArgument(f"{shown}: {exc}", subject=shown) from exc
    except OSError as exc:
        shown = _shown(name)
        if isinstance(exc, LcowError):
            raise
        kind = _OS_CATEGORIES.get(exc.errno or 0)
        said = _lower(exc.strerror or "")
        if kind is not None:
            raise kind(f"{shown}: {said}", subject=shown) from exc
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpace(f"{shown}: {said}", subject=shown, entry=shown, code=exc.errno) from exc
        made = view_error(exc, name)
        if made is exc:
            raise
        raise made from None


def _xattr_error(member: tarfile.TarInfo, key: str, exc: OSError) -> Exception:
    """An extended attribute the file system refused: too large for it (ENOSPC, E2BIG,
    ERANGE: a limit) or malformed (EINVAL, e.g. a bad POSIX ACL)."""
    shown = _shown(member.name)
    what = f"{shown}: xattr {_shown(key)[:80]}: {_lower(exc.strerror or '')}"
    if exc.errno in (errno.ENOSPC, errno.E2BIG, errno.ERANGE):
        return LimitExceeded(what, subject=shown)
    if exc.errno == errno.EINVAL:
        return InvalidArgument(what, subject=shown)
    return exc


def stream_name(stream: BinaryIO) -> str:
    """What messages call the archive: the stream's file name, else ``archive``."""
    given = getattr(stream, "name", None)
    return given if isinstance(given, str) else "archive"


@contextmanager
def _open_stream(stream: _Peeked, name: str = "archive") -> Iterator[tarfile.TarFile]:
    """Open the tar in ``stream`` for reading in order, decompressed when it is gzip, zstd,
    bzip2 or xz (as Docker's ``DecompressStream``), and only if whole (see
    :mod:`lcow._util.stricttar` and :mod:`lcow._util.decompress`): after the end marker, the
    compressed stream is read to its end, so a cut one fails even when the tar inside ended."""
    kind = detect(stream.peek(), kinds=_COMPRESSIONS)
    source: _Peeked | DecompressedReader = stream
    if kind is not None:
        source = DecompressedReader(kind, stream.read, name=name)
    try:
        archive = tarfile.open(  # noqa: SIM115 - closed below
            fileobj=cast("IO[bytes]", source),
            mode="r|",
            tarinfo=StrictTarInfo,
            encoding="utf-8",
            errors="surrogateescape",
        )
    except _READ_ERRORS as exc:  # the first member is read here
        raise _read_error(exc, name, None) from exc
    with archive:
        yield archive
        if kind is not None:
            while source.read(_CHUNK):
                pass


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
    head = stream.read(_SNIFF)
    _Untar(dest_fd, options or TarOptions()).run(_Peeked(head, stream), stream_name(stream))
    while stream.read(_CHUNK):
        pass  # consume what follows the end marker, so a writer on a pipe can finish


#: What reading a member can raise besides tarfile's errors: ValueError for a malformed sparse
#: map, RecursionError for a long chain of extended headers (tarfile recurses per header).
_READ_ERRORS = (tarfile.TarError, ValueError, OverflowError, RecursionError)


def _read_error(exc: BaseException, name: str, last: tarfile.TarInfo | None) -> LcowError:
    """A failure to read the next member, naming the archive and the member before it."""
    after = "" if last is None else f" (after entry {_shown(last.name)})"
    if isinstance(exc, TooLarge):
        return LimitExceeded(f"{name}: {exc}{after}", subject=name)
    if isinstance(exc, RecursionError):
        return LimitExceeded(
            f"{name}: too many chained extended headers (past the recursion limit){after}",
            subject=name,
        )
    if isinstance(exc, (ValueError, OverflowError)):  # tarfile's own parsing gave up
        return InvalidArgument(f"{name}: malformed header data ({exc}){after}", subject=name)
    return InvalidArgument(f"{name}: {exc}{after}", subject=name)


def members(archive: tarfile.TarFile, name: str = "archive") -> Iterator[tarfile.TarInfo]:
    """The members of a streamed archive one by one, none kept (a million-entry tar stays
    small); a damaged or missing header is an :class:`InvalidArgument` naming the archive and
    the member before it (never the damaged header's bytes)."""
    last: tarfile.TarInfo | None = None
    while True:
        try:
            member = archive.next()
        except _READ_ERRORS as exc:
            raise _read_error(exc, name, last) from exc
        if member is None:
            return
        _check_member(member)
        archive.members.clear()  # type: ignore[attr-defined]  # keep no history
        last = member
        yield member


_MAX_ID = 0xFFFFFFFF


def _sparse_map(member: tarfile.TarInfo) -> list[tuple[int, int]] | None:
    """``[(offset, length), ...]`` of a GNU sparse member's stored data, else ``None``."""
    return cast("list[tuple[int, int]] | None", member.sparse)


def _check_member(member: tarfile.TarInfo) -> None:
    """What Go's reader refuses and tarfile takes: owners past 32 bits, a negative size, a
    sparse map that is unordered, overlapping or past the file's end."""
    shown = _shown(member.name)
    for what, value in (("uid", member.uid), ("gid", member.gid)):
        if not 0 <= value <= _MAX_ID:
            raise InvalidArgument(
                f"{shown}: {what} {value} is out of range (0..{_MAX_ID})", subject=shown
            )
    if member.size < 0:
        raise InvalidArgument(f"{shown}: negative size {member.size}", subject=shown)
    segments = _sparse_map(member)
    if segments is not None:
        end = 0
        for offset, length in segments:
            if offset < end or length < 0 or offset + length > member.size:
                raise InvalidArgument(
                    f"{shown}: invalid sparse map (segment {offset}+{length} of a "
                    f"{member.size}-byte file)",
                    subject=shown,
                )
            end = offset + length


class _Untar:
    def __init__(self, dest_fd: int, options: TarOptions) -> None:
        self.dest = dest_fd
        self.options = options
        self.dirs: list[tuple[str, int, int]] = []

    def run(self, stream: _Peeked, source: str) -> None:
        with _open_stream(stream, source) as archive:
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
        name = _clean(member.name)
        if any(name.startswith(p) for p in self.options.exclude_patterns):
            return
        shown = _shown(member.name)
        if _escapes(name):
            raise InvalidArgument(f"{shown}: path escapes the destination directory", subject=shown)
        if name in (".", "/"):
            if member.isdir():  # the destination itself: merged, its metadata applied (Docker)
                self._metadata(self.dest, b".", member, ".")
                return
            raise InvalidArgument(
                f"{shown}: cannot replace the root (the destination directory)", subject=shown
            )
        parent = posixpath.dirname(name)
        if parent not in ("", "/") and not self._exists(parent):
            makedirs_in(self.dest, parent, 0o755)
        with parent_in_root(self.dest, name) as (dir_fd, base):
            existing = lstat_in(dir_fd, base)
            if existing is not None:
                self._clear(dir_fd, base, existing, member, shown)
            if self.options.whiteout_format == OVERLAY_WHITEOUTS and self._whiteout(
                dir_fd, base, member
            ):
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
        shown: str,
    ) -> None:
        was_dir = stat.S_ISDIR(existing.st_mode)
        if self.options.no_overwrite_dir_non_dir and was_dir != member.isdir():
            what = "directory with non-directory" if was_dir else "non-directory with directory"
            raise AlreadyExists(f"{shown}: cannot overwrite {what}", subject=shown)
        if not (was_dir and member.isdir()):
            remove_all_at(dir_fd, base)

    def _whiteout(self, dir_fd: int, base: bytes, member: tarfile.TarInfo) -> bool:
        """Overlay form of AUFS markers; True when the entry was one (nothing else to write)."""
        if is_opaque_marker(base):
            os.setxattr(proc_fd(dir_fd), OPAQUE_XATTR, OPAQUE_VALUE)
            return True
        if is_whiteout_name(base):
            hidden = hidden_name(base)
            os.mknod(hidden, WHITEOUT_MODE, WHITEOUT_RDEV, dir_fd=dir_fd)
            os.chown(hidden, member.uid, member.gid, dir_fd=dir_fd, follow_symlinks=False)
            return True
        return False

    def _create(
        self,
        archive: tarfile.TarFile,
        dir_fd: int,
        base: bytes,
        member: tarfile.TarInfo,
        merge: bool,
    ) -> None:
        mode = member.mode & 0o7777
        if member.type == tarfile.DIRTYPE:
            if not merge:
                os.mkdir(base, mode, dir_fd=dir_fd)
        elif member.type in _REGULAR:
            self._write(archive, dir_fd, base, member)
        elif member.type == tarfile.SYMTYPE:
            os.symlink(os.fsencode(member.linkname), base, dir_fd=dir_fd)
        elif member.type == tarfile.LNKTYPE:
            self._hardlink(dir_fd, base, member)
        elif member.type in _SPECIAL:
            device = os.makedev(member.devmajor, member.devminor)
            os.mknod(base, _SPECIAL[member.type] | mode, device, dir_fd=dir_fd)
        else:
            shown = _shown(member.name)
            raise InvalidArgument(
                f"{shown}: unhandled tar header type {quoted(member.type)}", subject=shown
            )

    def _write(
        self, archive: tarfile.TarFile, dir_fd: int, base: bytes, member: tarfile.TarInfo
    ) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(base, flags, member.mode & 0o777, dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as out:
            segments = _sparse_map(member)
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
        target = _clean(member.linkname)
        if _escapes(target):
            shown = _shown(member.name)
            raise InvalidArgument(
                f"{shown}: hard link to {quoted(_shown(member.linkname))} escapes the destination",
                subject=shown,
            )
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
                    shown = _shown(member.name)
                    found = lstat_in(target_fd, target_base)
                    why = (
                        "is a directory"
                        if found is not None and stat.S_ISDIR(found.st_mode)
                        else f"cannot be linked: {_lower(exc.strerror or '')}"
                    )
                    raise InvalidArgument(
                        f"{shown}: hard link target {_shown(member.linkname)} {why}",
                        subject=shown,
                    ) from exc
        except FileNotFoundError as exc:  # the target, or a directory on its way
            shown = _shown(member.name)
            raise NotFound(
                f"{shown}: hard link target {_shown(member.linkname)} not found", subject=shown
            ) from exc

    def _metadata(self, dir_fd: int, base: bytes, member: tarfile.TarInfo, name: str) -> None:
        if not self.options.no_lchown:
            uid, gid = self.options.chown or (member.uid, member.gid)
            os.chown(base, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        fd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            where = proc_fd(fd)
            for key, value in member.pax_headers.items():
                if key.startswith(_XATTR_PREFIX):
                    try:
                        os.setxattr(
                            where,
                            key[len(_XATTR_PREFIX) :],
                            value.encode("utf-8", "surrogateescape"),
                        )
                    except OSError as exc:
                        if exc.errno not in _XATTR_IGNORED:
                            raise _xattr_error(member, key[len(_XATTR_PREFIX) :], exc) from exc
            # Linux has no symlink modes; chmod after chown, which clears setuid/setgid.
            if not stat.S_ISLNK(os.fstat(fd).st_mode):
                os.chmod(where, member.mode & 0o7777)
        finally:
            os.close(fd)
        mtime = _time_ns(member, "mtime")
        assert mtime is not None
        atime = max(_time_ns(member, "atime") or mtime, mtime)
        if member.type == tarfile.DIRTYPE:
            self.dirs.append((name, atime, mtime))
        else:
            os.utime(base, ns=(atime, mtime), dir_fd=dir_fd, follow_symlinks=False)
