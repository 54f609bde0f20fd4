"""Docker's ``archive.Untar`` rules, apart from where the files go (SPEC §4.8, §5.1).

Both extractors apply them: the host backend's :mod:`lcow.backends.untar` writes below a
directory descriptor confined with ``openat2``, the vm backend's :mod:`lcow.backends.vm.vmtar`
turns each entry into operations the guest agent runs. What they share is here, so the two
cannot drift apart:

* reading — the tar read in streaming mode with :mod:`tarfile` (gzip, zstd, bzip2 and xz
  recognised, as Docker's ``DecompressStream`` does), only one member's metadata held at a time,
  and only a whole archive accepted: a compressed stream complete, the end-of-archive marker
  present (:mod:`lcow._util.stricttar`), owners in 32 bits, sizes and sparse maps sane;
* names — cleaned as Go's ``filepath.Clean``, excludes applied, names and hard-link targets
  that climb out with ``..`` refused (Docker's breakout check);
* whiteouts — with the overlay whiteout format, ``.wh..wh..opq`` makes its directory opaque and
  ``.wh.<name>`` becomes a 0/0 character device owned as the entry (:mod:`lcow.formats.whiteouts`);
* metadata — owners from the header unless ``NoLchown`` (``ChownOpts`` overrides them),
  ``SCHILY.xattr.*`` attributes, the mode with setuid/setgid/sticky, atime (at least mtime) and
  mtime, a directory's times only after the whole archive.
"""

from __future__ import annotations

import enum
import os
import posixpath
import stat
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, AnyStr, BinaryIO, cast

from lcow._util.decompress import DecompressedReader, detect
from lcow._util.escape import quoted
from lcow._util.stricttar import StrictTarInfo, TooLarge
from lcow.backends.taroptions import OVERLAY_WHITEOUTS, TarOptions
from lcow.errors import InvalidArgument, LcowError, LimitExceeded
from lcow.formats.whiteouts import is_opaque_marker, is_whiteout_name

__all__ = [
    "REGULAR_TYPES",
    "SPECIAL_TYPES",
    "Marker",
    "Peeked",
    "cannot_replace_root",
    "defers_times",
    "drain",
    "entry_name",
    "is_root",
    "link_target",
    "members",
    "mode_bits",
    "open_archive",
    "overlay_marker",
    "owner",
    "peek",
    "shown",
    "sparse_map",
    "stream_name",
    "tar_error",
    "times_ns",
    "unhandled_type",
    "xattrs",
]

_CHUNK = 1 << 20
_SNIFF = tarfile.BLOCKSIZE  # read ahead: the first header, or a compression's magic
#: What Docker's ``DecompressStream`` recognises.
_COMPRESSIONS = ("gzip", "zstd", "bzip2", "xz")
_NS = 1_000_000_000
_XATTR_PREFIX = "SCHILY.xattr."
_MAX_ID = 0xFFFFFFFF

#: Member types written as regular files (GNU sparse ones with their holes).
REGULAR_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE)
#: Member types made with ``mknod``, and the file type bits of each.
SPECIAL_TYPES = {
    tarfile.CHRTYPE: stat.S_IFCHR,
    tarfile.BLKTYPE: stat.S_IFBLK,
    tarfile.FIFOTYPE: stat.S_IFIFO,
}


# -- reading ------------------------------------------------------------------------------------


class Peeked:
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


def peek(stream: BinaryIO) -> Peeked:
    """``stream`` with its first block read ahead (for :func:`open_archive`)."""
    return Peeked(stream.read(_SNIFF), stream)


def drain(stream: BinaryIO) -> None:
    """Read what follows the end marker, so a writer on a pipe can finish."""
    while stream.read(_CHUNK):
        pass


def stream_name(stream: BinaryIO) -> str:
    """What messages call the archive: the stream's file name, else ``archive``."""
    given = getattr(stream, "name", None)
    return given if isinstance(given, str) else "archive"


#: What reading a member can raise besides tarfile's errors: ValueError for a malformed sparse
#: map, RecursionError for a long chain of extended headers (tarfile recurses per header).
_READ_ERRORS = (tarfile.TarError, ValueError, OverflowError, RecursionError)


def _read_error(exc: BaseException, name: str, last: tarfile.TarInfo | None) -> LcowError:
    """A failure to read the next member, naming the archive and the member before it."""
    after = "" if last is None else f" (after entry {shown(last.name)})"
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


@contextmanager
def open_archive(stream: Peeked, name: str = "archive") -> Iterator[tarfile.TarFile]:
    """Open the tar in ``stream`` for reading in order, decompressed when it is gzip, zstd,
    bzip2 or xz (as Docker's ``DecompressStream``), and only if whole (see
    :mod:`lcow._util.stricttar` and :mod:`lcow._util.decompress`): after the end marker, the
    compressed stream is read to its end, so a cut one fails even when the tar inside ended."""
    kind = detect(stream.peek(), kinds=_COMPRESSIONS)
    source: Peeked | DecompressedReader = stream
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


def sparse_map(member: tarfile.TarInfo) -> list[tuple[int, int]] | None:
    """``[(offset, length), ...]`` of a GNU sparse member's stored data, else ``None``."""
    return cast("list[tuple[int, int]] | None", member.sparse)


def _check_member(member: tarfile.TarInfo) -> None:
    """What Go's reader refuses and tarfile takes: owners past 32 bits, a negative size, a
    sparse map that is unordered, overlapping or past the file's end."""
    name = shown(member.name)
    for what, value in (("uid", member.uid), ("gid", member.gid)):
        if not 0 <= value <= _MAX_ID:
            raise InvalidArgument(
                f"{name}: {what} {value} is out of range (0..{_MAX_ID})", subject=name
            )
    if member.size < 0:
        raise InvalidArgument(f"{name}: negative size {member.size}", subject=name)
    segments = sparse_map(member)
    if segments is not None:
        end = 0
        for offset, length in segments:
            if offset < end or length < 0 or offset + length > member.size:
                raise InvalidArgument(
                    f"{name}: invalid sparse map (segment {offset}+{length} of a "
                    f"{member.size}-byte file)",
                    subject=name,
                )
            end = offset + length


# -- names ----------------------------------------------------------------------------------------


def shown(name: str) -> str:
    """A member name as messages show it (undecodable bytes kept as surrogate escapes)."""
    return os.fsencode(name).decode("utf-8", "surrogateescape")


def _clean(name: str) -> str:
    """Go's ``filepath.Clean``: lexical, ``..`` kept at the front of a relative name."""
    cleaned = posixpath.normpath(name) if name else "."
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def _escapes(name: str) -> bool:
    return name == ".." or name.startswith("../")


def entry_name(member: tarfile.TarInfo, options: TarOptions) -> str | None:
    """The member's cleaned name (relative to the destination, which acts as ``/``), or
    ``None`` when ``ExcludePatterns`` skips it.

    Raises:
        InvalidArgument: the name climbs out of the destination with ``..``.
    """
    name = _clean(member.name)
    if any(name.startswith(p) for p in options.exclude_patterns):
        return None
    if _escapes(name):
        where = shown(member.name)
        raise InvalidArgument(f"{where}: path escapes the destination directory", subject=where)
    return name


def is_root(name: str) -> bool:
    """Whether a cleaned name is the destination itself."""
    return name in (".", "/")


def cannot_replace_root(member: tarfile.TarInfo) -> InvalidArgument:
    """The error for a non-directory named as the destination itself (a directory merges)."""
    where = shown(member.name)
    return InvalidArgument(
        f"{where}: cannot replace the root (the destination directory)", subject=where
    )


def link_target(member: tarfile.TarInfo) -> str:
    """A hard link's cleaned target (relative to the destination, which acts as ``/``).

    Raises:
        InvalidArgument: the target climbs out of the destination with ``..``.
    """
    target = _clean(member.linkname)
    if _escapes(target):
        where = shown(member.name)
        raise InvalidArgument(
            f"{where}: hard link to {quoted(shown(member.linkname))} escapes the destination",
            subject=where,
        )
    return target


def tar_error(name: str, exc: tarfile.TarError) -> InvalidArgument:
    """The error for a member whose data could not be read (``name``: the member's)."""
    where = shown(name)
    return InvalidArgument(f"{where}: {exc}", subject=where)


def unhandled_type(member: tarfile.TarInfo) -> InvalidArgument:
    """The error for a member type Untar does not write."""
    where = shown(member.name)
    return InvalidArgument(
        f"{where}: unhandled tar header type {quoted(member.type)}", subject=where
    )


# -- whiteouts ------------------------------------------------------------------------------------


class Marker(enum.Enum):
    """What an AUFS marker becomes with the overlay whiteout format."""

    OPAQUE = "opaque"  #: its directory gets ``trusted.overlay.opaque=y``
    WHITEOUT = "whiteout"  #: a 0/0 character device under the hidden name, owned as the entry


def overlay_marker(base: AnyStr, options: TarOptions) -> Marker | None:
    """What the entry named ``base`` (last component) is with ``options``: an AUFS marker to
    convert (overlay whiteout format), or ``None`` for an ordinary entry. A whiteout's device
    takes the name :func:`~lcow.formats.whiteouts.hidden_name` gives (as in Docker, whatever
    follows the prefix)."""
    if options.whiteout_format != OVERLAY_WHITEOUTS:
        return None
    if is_opaque_marker(base):
        return Marker.OPAQUE
    if is_whiteout_name(base):
        return Marker.WHITEOUT
    return None


# -- metadata -------------------------------------------------------------------------------------


def owner(member: tarfile.TarInfo, options: TarOptions) -> tuple[int, int] | None:
    """The owner to give the entry: ``ChownOpts``, else the header's; ``None`` with
    ``NoLchown``."""
    if options.no_lchown:
        return None
    return options.chown or (member.uid, member.gid)


def mode_bits(member: tarfile.TarInfo) -> int:
    """The permission bits, setuid/setgid/sticky included: set after the owner (which clears
    setuid and setgid), never on a symlink (Linux has none). A file or directory is created
    with the lower nine bits."""
    return member.mode & 0o7777


def xattrs(member: tarfile.TarInfo) -> Iterator[tuple[str, bytes]]:
    """The ``SCHILY.xattr.*`` attributes of the entry: ``(name, value)``."""
    for key, value in member.pax_headers.items():
        if key.startswith(_XATTR_PREFIX):
            yield key[len(_XATTR_PREFIX) :], value.encode("utf-8", "surrogateescape")


def _time_ns(member: tarfile.TarInfo, key: str) -> int | None:
    text = member.pax_headers.get(key)
    if text is None:
        return int(member.mtime) * _NS if key == "mtime" else None
    negative = text.startswith("-")
    whole, _, frac = text.lstrip("-").partition(".")
    try:
        ns = int(whole or "0") * _NS + int(frac[:9].ljust(9, "0"))
    except ValueError:
        where = shown(member.name)
        raise InvalidArgument(f"{where}: invalid PAX {key} {quoted(text)}", subject=where) from None
    return -ns if negative else ns


def times_ns(member: tarfile.TarInfo) -> tuple[int, int]:
    """``(atime, mtime)`` to set, in nanoseconds: the PAX times when present (else the header's
    mtime), atime never before mtime (Docker's rule).

    Raises:
        InvalidArgument: a PAX time that is not a decimal number.
    """
    mtime = _time_ns(member, "mtime")
    assert mtime is not None
    return max(_time_ns(member, "atime") or mtime, mtime), mtime


def defers_times(member: tarfile.TarInfo) -> bool:
    """Whether the entry's times are set only after the whole archive (a directory's: its
    contents would change its mtime)."""
    return member.type == tarfile.DIRTYPE
