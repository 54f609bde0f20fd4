"""Lean tar header encoding: ustar where it fits, PAX records where it does not (SPEC §5.3).

Headers follow what Docker's archive code emits: numeric owners (no user or group names),
relative names, directories with a trailing slash, and PAX records only when a value does not
fit ustar — a long name or link target, a big size or id, a sub-second or out-of-range mtime,
extended attributes (``SCHILY.xattr.<name>``).
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable
from typing import BinaryIO

__all__ = ["BLOCK", "END_OF_ARCHIVE", "TYPEFLAGS", "TarHeader", "as_writer", "padding"]

BLOCK = 512
#: The tar type flag of each file type that has one (sockets have none).
TYPEFLAGS: dict[int, bytes] = {
    stat.S_IFREG: b"0",
    stat.S_IFDIR: b"5",
    stat.S_IFLNK: b"2",
    stat.S_IFCHR: b"3",
    stat.S_IFBLK: b"4",
    stat.S_IFIFO: b"6",
}
END_OF_ARCHIVE = bytes(2 * BLOCK)
_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12s")
_MAX_OCTAL_7 = 0o7777777
_MAX_OCTAL_11 = 0o77777777777
_NS = 1_000_000_000


def as_writer(out: BinaryIO | int | Callable[[bytes], object]) -> Callable[[bytes], object]:
    """A ``write(bytes)`` callable for a descriptor (written fully), a file object or a callable."""
    if isinstance(out, int):
        fd = out

        def write_fd(data: bytes) -> None:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]

        return write_fd
    if hasattr(out, "write"):
        return out.write
    return out


def padding(size: int) -> bytes:
    """Zero bytes that complete a member's last 512-byte block."""
    return bytes(-size & (BLOCK - 1))


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)


def _record(key: bytes, value: bytes) -> bytes:
    """One PAX record ``"<len> <key>=<value>\\n"``, its length counting itself."""
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def _split_ustar(name: bytes) -> tuple[bytes, bytes] | None:
    """Split a long name into (prefix ≤ 155, name ≤ 100) at a slash, if possible."""
    if len(name) <= 100:
        return b"", name
    if len(name) > 256:
        return None
    cut = name.find(b"/", len(name) - 101)
    while cut != -1:
        if cut <= 155 and len(name) - cut - 1 <= 100 and cut > 0:
            return name[:cut], name[cut + 1 :]
        cut = name.find(b"/", cut + 1)
    return None


class TarHeader:
    """Builds the header block(s) of one member."""

    __slots__ = ()

    @staticmethod
    def encode(  # noqa: PLR0913 - one keyword-only parameter per ustar/PAX header field
        name: bytes,
        *,
        typeflag: bytes,
        mode: int,
        uid: int,
        gid: int,
        size: int,
        mtime_ns: int,
        linkname: bytes = b"",
        devmajor: int = 0,
        devminor: int = 0,
        xattrs: dict[bytes, bytes] | None = None,
    ) -> bytes:
        """PAX extended header (when needed) followed by the ustar header, block aligned."""
        records: list[bytes] = []
        split = _split_ustar(name)
        if split is None:
            records.append(_record(b"path", name))
            prefix, short = b"", name[:100]
        else:
            prefix, short = split
        if len(linkname) > 100:
            records.append(_record(b"linkpath", linkname))
        if size > _MAX_OCTAL_11:
            records.append(_record(b"size", str(size).encode()))
        if uid > _MAX_OCTAL_7:
            records.append(_record(b"uid", str(uid).encode()))
        if gid > _MAX_OCTAL_7:
            records.append(_record(b"gid", str(gid).encode()))
        seconds, nanos = divmod(mtime_ns, _NS)
        if nanos or seconds < 0 or seconds > _MAX_OCTAL_11:
            if nanos:
                text = b"%d.%09d" % (seconds, nanos) if seconds >= 0 else _negative_time(mtime_ns)
            else:
                text = b"%d" % seconds
            records.append(_record(b"mtime", text))
        if xattrs:
            for key in sorted(xattrs):
                records.append(_record(b"SCHILY.xattr." + key, xattrs[key]))
        header = _ustar(
            short,
            prefix,
            typeflag,
            mode,
            min(uid, _MAX_OCTAL_7),
            min(gid, _MAX_OCTAL_7),
            size if size <= _MAX_OCTAL_11 else 0,
            min(max(seconds, 0), _MAX_OCTAL_11),
            linkname[:100],
            devmajor,
            devminor,
        )
        if not records:
            return header
        data = b"".join(records)
        pax_name = (b"PaxHeaders/" + short)[:100]
        pax = _ustar(pax_name, b"", b"x", 0o644, 0, 0, len(data), 0, b"", 0, 0)
        return pax + data + padding(len(data)) + header


def _negative_time(ns: int) -> bytes:
    whole, frac = divmod(-ns, _NS)
    return b"-%d.%09d" % (whole, frac)


def _ustar(  # noqa: PLR0913, PLR0917 - hot loop: per member; one positional per field of the _USTAR struct, in its order
    name: bytes,
    prefix: bytes,
    typeflag: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    linkname: bytes,
    devmajor: int,
    devminor: int,
) -> bytes:
    block = bytearray(
        _USTAR.pack(
            name,
            _octal(mode & 0o7777, 8),
            _octal(uid, 8),
            _octal(gid, 8),
            _octal(size, 12),
            _octal(mtime, 12),
            b"        ",
            typeflag,
            linkname,
            b"ustar\x00",
            b"00",
            b"",
            b"",
            _octal(devmajor, 8),
            _octal(devminor, 8),
            prefix,
            b"",
        )
    )
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)
