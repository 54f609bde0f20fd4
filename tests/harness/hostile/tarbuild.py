"""Tar streams built header by header, so malformed, huge and truncated members cost nothing
to make (the builders of the hostile corpus, also used by tests and the fuzz seeds).

Every function returns the bytes of whole 512-byte blocks; a stream is their concatenation
followed by :data:`END`. Numeric fields that do not fit octal are written in GNU base-256.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "BLOCK",
    "END",
    "GNU_MAGIC",
    "MTIME",
    "POSIX_MAGIC",
    "GiB",
    "KiB",
    "MiB",
    "TiB",
    "directory",
    "file",
    "gnu_long",
    "gnu_old_sparse",
    "hardlink",
    "header",
    "member",
    "number_field",
    "padded",
    "pax",
    "pax_record",
    "sparse_v1",
    "symlink",
]

BLOCK = 512
END = bytes(2 * BLOCK)
POSIX_MAGIC = b"ustar\x0000"
GNU_MAGIC = b"ustar  \x00"
MTIME = 1_600_000_000
KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


def number_field(value: int, width: int) -> bytes:
    """A numeric field: zero-padded octal and a NUL, or GNU base-256 when that cannot hold it."""
    if 0 <= value < 8 ** (width - 1):
        return b"%0*o\x00" % (width - 1, value)
    if value < 0:
        raw = (value + (1 << (8 * width))).to_bytes(width, "big")
        return b"\xff" + raw[1:]
    raw = value.to_bytes(width, "big")
    if raw[0] & 0xC0:
        raise ValueError(f"{value} does not fit a {width}-byte base-256 field")
    return bytes([raw[0] | 0x80]) + raw[1:]


def _put(raw: bytearray, offset: int, value: bytes, width: int) -> None:
    raw[offset : offset + min(len(value), width)] = value[:width]


def header(
    name: bytes,
    *,
    type: bytes = b"0",
    size: int = 0,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = MTIME,
    linkname: bytes = b"",
    major: int = 0,
    minor: int = 0,
    magic: bytes = POSIX_MAGIC,
    prefix: bytes = b"",
    fields: Mapping[int, bytes] | None = None,
    checksum: int | None = None,
) -> bytes:
    """One 512-byte header; ``fields`` overwrite raw bytes at offsets, ``checksum`` forces a
    (wrong) checksum. Names longer than their fields are cut (use :func:`member` for PAX)."""
    raw = bytearray(BLOCK)
    _put(raw, 0, name, 100)
    _put(raw, 100, number_field(mode, 8), 8)
    _put(raw, 108, number_field(uid, 8), 8)
    _put(raw, 116, number_field(gid, 8), 8)
    _put(raw, 124, number_field(size, 12), 12)
    _put(raw, 136, number_field(mtime, 12), 12)
    raw[156:157] = type
    _put(raw, 157, linkname, 100)
    _put(raw, 257, magic, 8)
    _put(raw, 265, b"root", 32)
    _put(raw, 297, b"root", 32)
    _put(raw, 329, number_field(major, 8), 8)
    _put(raw, 337, number_field(minor, 8), 8)
    _put(raw, 345, prefix, 155)
    for offset, value in (fields or {}).items():
        raw[offset : offset + len(value)] = value
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\x00 " % (sum(raw) if checksum is None else checksum)
    return bytes(raw)


def padded(data: bytes) -> bytes:
    """``data`` followed by zeros up to a block boundary."""
    return data + bytes(-len(data) % BLOCK)


def pax_record(key: bytes, value: bytes) -> bytes:
    """``"<len> key=value\\n"`` where ``len`` counts the whole record, itself included."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def pax(
    records: Iterable[tuple[bytes, bytes]], *, type: bytes = b"x", name: bytes = b"PaxHeader"
) -> bytes:
    """A PAX extended header (``x``, or ``g`` for a global one) with its records."""
    data = b"".join(pax_record(k, v) for k, v in records)
    return header(name, type=type, size=len(data)) + padded(data)


def gnu_long(value: bytes, type: bytes = b"L") -> bytes:
    """A GNU long name (``L``) or long link (``K``) record."""
    data = value + b"\x00"
    return header(b"././@LongLink", type=type, size=len(data), magic=GNU_MAGIC) + padded(data)


def member(
    name: bytes,
    data: bytes = b"",
    *,
    records: Sequence[tuple[bytes, bytes]] = (),
    xattrs: Mapping[bytes, bytes] | None = None,
    **fields: Any,
) -> bytes:
    """A whole member: PAX records when needed (long names, xattrs), header, padded data.

    ``fields`` go to :func:`header` (``type``, ``mode``, ``linkname``, ``size``...); ``size``
    defaults to ``len(data)``.
    """
    extra = list(records)
    if len(name) > 100:
        extra.append((b"path", name))
    linkname = fields.get("linkname", b"")
    assert isinstance(linkname, bytes)
    if len(linkname) > 100:
        extra.append((b"linkpath", linkname))
    for key, value in (xattrs or {}).items():
        extra.append((b"SCHILY.xattr." + key, value))
    fields.setdefault("size", len(data))
    head = header(name[:100], **fields)
    return (pax(extra) if extra else b"") + head + padded(data)


def file(name: bytes, data: bytes = b"", **fields: Any) -> bytes:
    """A regular file member."""
    return member(name, data, **fields)


def directory(name: bytes, **fields: Any) -> bytes:
    """A directory member."""
    fields.setdefault("mode", 0o755)
    return member(name, type=b"5", **fields)


def symlink(name: bytes, target: bytes, **fields: Any) -> bytes:
    """A symbolic link member."""
    return member(name, type=b"2", linkname=target, mode=0o777, **fields)


def hardlink(name: bytes, target: bytes, **fields: Any) -> bytes:
    """A hard link member."""
    return member(name, type=b"1", linkname=target, **fields)


def sparse_v1(name: bytes, realsize: int, segments: Sequence[tuple[int, bytes]]) -> bytes:
    """A GNU PAX sparse 1.0 member: the map as decimal lines at the start of the data."""
    lines = [str(len(segments)).encode()]
    for offset, data in segments:
        lines += [str(offset).encode(), str(len(data)).encode()]
    payload = padded(b"\n".join(lines) + b"\n") + b"".join(d for _, d in segments)
    return member(
        b"GNUSparseFile.0/" + name,
        payload,
        records=[
            (b"GNU.sparse.major", b"1"),
            (b"GNU.sparse.minor", b"0"),
            (b"GNU.sparse.name", name),
            (b"GNU.sparse.realsize", str(realsize).encode()),
        ],
    )


def gnu_old_sparse(
    name: bytes, realsize: int, segments: Sequence[tuple[int, int]], data: bytes
) -> bytes:
    """An old GNU ``S`` member with up to four map entries in the header."""
    fields: dict[int, bytes] = {}
    for i, (offset, length) in enumerate(segments[:4]):
        fields[386 + 24 * i] = number_field(offset, 12)
        fields[398 + 24 * i] = number_field(length, 12)
    fields[483] = number_field(realsize, 12)
    head = header(name, type=b"S", size=len(data), magic=GNU_MAGIC, fields=fields)
    return head + padded(data)
