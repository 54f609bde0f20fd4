"""Fixed VHD footer: build, parse and append (SPEC §7.1).

A fixed VHD is the raw disk data followed by one 512-byte, big-endian footer. lcow writes the
opengcs (moby v18.02) variant (creator ``win `` 0x000a0000 on ``Wi2k``, CHS geometry) and reads both
that and hcsshim tar2ext4's variant (zero timestamp, creator application, host OS and geometry).
What lcow writes is reproducible: the timestamp is the fixed :data:`FIXED_TIMESTAMP` and the
unique id is derived from the disk data (:mod:`lcow.formats.vhd.identity`), so the same layer
tar gives the same ``layer.vhd`` bytes on every host and run (SPEC §7.1 note). The CHS geometry
follows the algorithm in Microsoft's "Virtual Hard Disk Image Format Specification" (appendix:
CHS calculation). A file is *footed* when its last 512 bytes start with ``conectix`` and the
checksum holds.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from lcow.errors import CorruptImage, InvalidArgument
from lcow.formats.vhd.identity import unique_id as derived_unique_id

__all__ = [
    "COOKIE",
    "CREATOR_APP",
    "CREATOR_OS",
    "CREATOR_VERSION",
    "DATA_OFFSET_NONE",
    "DISK_TYPE_FIXED",
    "FEATURES_RESERVED",
    "FIXED_TIMESTAMP",
    "FOOTER_SIZE",
    "FORMAT_VERSION",
    "MAX_CHS_SECTORS",
    "SECTOR_SIZE",
    "VHD_EPOCH",
    "VhdFooter",
    "append_fixed_footer",
    "build_fixed_footer",
    "chs_geometry",
    "parse_footer",
    "read_footer",
]

FOOTER_SIZE = 512
SECTOR_SIZE = 512

COOKIE = b"conectix"
FEATURES_RESERVED = 2  # "reserved" bit, always set
FORMAT_VERSION = 0x00010000
DATA_OFFSET_NONE = 0xFFFFFFFFFFFFFFFF  # fixed disks have no dynamic header
CREATOR_APP = b"win "
CREATOR_VERSION = 0x000A0000
CREATOR_OS = b"Wi2k"
DISK_TYPE_FIXED = 2

# Seconds from the Unix epoch to 2000-01-01T00:00:00Z, the VHD timestamp epoch.
VHD_EPOCH = 946_684_800
#: The timestamp lcow writes: 0, the VHD epoch itself. A creation time would make every
#: conversion of the same tar differ; no reader of a fixed disk uses it (qemu ignores it,
#: hcsshim's tar2ext4 writes 0 as well).
FIXED_TIMESTAMP = 0

# Largest sector count CHS can describe: 65535 cylinders x 16 heads x 255 sectors per track.
MAX_CHS_SECTORS = 65535 * 16 * 255

# Field layout (SPEC §7.1 table). Offsets in the comments; total is FOOTER_SIZE.
_FOOTER = struct.Struct(
    ">"
    "8s"  # 0   cookie
    "I"  # 8   features
    "I"  # 12  file format version
    "Q"  # 16  data offset
    "I"  # 24  timestamp
    "4s"  # 28  creator application
    "I"  # 32  creator version
    "4s"  # 36  creator host OS
    "Q"  # 40  original size
    "Q"  # 48  current size
    "H"  # 56  geometry: cylinders
    "B"  # 58  geometry: heads
    "B"  # 59  geometry: sectors per track
    "I"  # 60  disk type
    "I"  # 64  checksum
    "16s"  # 68  unique id
    "B"  # 84  saved state
    "427x"  # 85  reserved
)
_CHECKSUM_OFFSET = 64
_CHECKSUM_END = _CHECKSUM_OFFSET + 4
assert _FOOTER.size == FOOTER_SIZE


@dataclass(frozen=True)
class VhdFooter:
    """A parsed VHD footer; field names follow the VHD specification.

    Attributes:
        cookie: ``b"conectix"``.
        features: feature bits (2 = reserved bit only).
        version: file format version (0x00010000).
        data_offset: offset of the dynamic header; all ones for fixed disks.
        timestamp: seconds since 2000-01-01 UTC (0 in lcow's and tar2ext4's output).
        creator_app: four-byte creator application (``b"win "`` or zeros).
        creator_version: creator version (0x000a0000).
        creator_os: four-byte creator host OS (``b"Wi2k"`` or zeros).
        original_size: disk size in bytes at creation.
        current_size: disk size in bytes now.
        geometry: ``(cylinders, heads, sectors per track)``; all zero in tar2ext4 output.
        disk_type: 2 for fixed, 3 dynamic, 4 differencing.
        checksum: stored checksum (already verified by :func:`parse_footer`).
        unique_id: 16-byte identifier.
        saved_state: saved-state flag byte.
    """

    cookie: bytes
    features: int
    version: int
    data_offset: int
    timestamp: int
    creator_app: bytes
    creator_version: int
    creator_os: bytes
    original_size: int
    current_size: int
    geometry: tuple[int, int, int]
    disk_type: int
    checksum: int
    unique_id: bytes
    saved_state: int = 0

    @property
    def is_fixed(self) -> bool:
        """Whether the footer describes a fixed disk."""
        return self.disk_type == DISK_TYPE_FIXED


def chs_geometry(size: int) -> tuple[int, int, int]:
    """Compute the CHS geometry the VHD specification assigns to a disk size.

    Sizes beyond what CHS can describe are capped at 65535 x 16 x 255 sectors.

    Args:
        size: disk size in bytes, a non-zero multiple of 512.

    Returns:
        ``(cylinders, heads, sectors_per_track)``.

    Raises:
        InvalidArgument: ``size`` is not a positive multiple of 512.
    """
    _check_size(size)
    total = min(size // SECTOR_SIZE, MAX_CHS_SECTORS)
    if total >= 65535 * 16 * 63:
        spt = 255
        heads = 16
        cyl_x_heads = total // spt
    else:
        spt = 17
        cyl_x_heads = total // spt
        heads = max((cyl_x_heads + 1023) // 1024, 4)
        if cyl_x_heads >= heads * 1024 or heads > 16:
            spt = 31
            heads = 16
            cyl_x_heads = total // spt
        if cyl_x_heads >= heads * 1024:
            spt = 63
            heads = 16
            cyl_x_heads = total // spt
    return cyl_x_heads // heads, heads, spt


def _check_size(size: int) -> None:
    if size <= 0 or size % SECTOR_SIZE:
        raise InvalidArgument(
            f"VHD size {size}: must be a non-zero multiple of {SECTOR_SIZE} bytes",
            subject=str(size),
        )


def _checksum(footer: bytes | bytearray | memoryview) -> int:
    """Ones' complement of the byte sum, with the checksum field counted as zero."""
    view = memoryview(footer)
    total = sum(view[:_CHECKSUM_OFFSET]) + sum(view[_CHECKSUM_END:FOOTER_SIZE])
    return ~total & 0xFFFFFFFF


def build_fixed_footer(size: int, *, unique_id: bytes, timestamp: int = FIXED_TIMESTAMP) -> bytes:
    """Build the opengcs-variant footer of a fixed VHD.

    Args:
        size: bytes of disk data before the footer; a non-zero multiple of 512.
        unique_id: 16 bytes (lcow's own footers: :func:`lcow.formats.vhd.identity.unique_id`).
        timestamp: seconds since 2000-01-01 UTC.

    Returns:
        The 512-byte footer.

    Raises:
        InvalidArgument: bad ``size``, ``timestamp`` out of 32-bit range, or ``unique_id`` not
            16 bytes.
    """
    _check_size(size)
    if not 0 <= timestamp <= 0xFFFFFFFF:
        raise InvalidArgument(
            f"VHD timestamp {timestamp}: must fit in 32 bits", subject=str(timestamp)
        )
    if len(unique_id) != 16:
        raise InvalidArgument(
            f"VHD unique id: must be 16 bytes, got {len(unique_id)}", subject=unique_id.hex()
        )
    cylinders, heads, spt = chs_geometry(size)
    raw = bytearray(
        _FOOTER.pack(
            COOKIE,
            FEATURES_RESERVED,
            FORMAT_VERSION,
            DATA_OFFSET_NONE,
            timestamp,
            CREATOR_APP,
            CREATOR_VERSION,
            CREATOR_OS,
            size,
            size,
            cylinders,
            heads,
            spt,
            DISK_TYPE_FIXED,
            0,
            bytes(unique_id),
            0,
        )
    )
    struct.pack_into(">I", raw, _CHECKSUM_OFFSET, _checksum(raw))
    return bytes(raw)


def parse_footer(data: bytes | bytearray | memoryview) -> VhdFooter:
    """Parse and verify a 512-byte VHD footer (opengcs or tar2ext4 variant).

    Args:
        data: exactly 512 bytes.

    Returns:
        The parsed footer.

    Raises:
        CorruptImage: wrong length, wrong cookie or checksum mismatch.
    """
    if len(data) != FOOTER_SIZE:
        raise CorruptImage(f"VHD footer: expected {FOOTER_SIZE} bytes, got {len(data)}")
    (
        cookie,
        features,
        version,
        data_offset,
        timestamp,
        creator_app,
        creator_version,
        creator_os,
        original_size,
        current_size,
        cylinders,
        heads,
        spt,
        disk_type,
        checksum,
        unique_id,
        saved_state,
    ) = _FOOTER.unpack(data)
    if cookie != COOKIE:
        raise CorruptImage(f"VHD footer: bad cookie {cookie!r}, expected {COOKIE!r}")
    expected = _checksum(data)
    if checksum != expected:
        raise CorruptImage(
            f"VHD footer: checksum mismatch (stored {checksum:#010x}, computed {expected:#010x})"
        )
    return VhdFooter(
        cookie=cookie,
        features=features,
        version=version,
        data_offset=data_offset,
        timestamp=timestamp,
        creator_app=creator_app,
        creator_version=creator_version,
        creator_os=creator_os,
        original_size=original_size,
        current_size=current_size,
        geometry=(cylinders, heads, spt),
        disk_type=disk_type,
        checksum=checksum,
        unique_id=unique_id,
        saved_state=saved_state,
    )


def read_footer(fd_or_path: int | str | os.PathLike[str]) -> VhdFooter | None:
    """Read the footer at the end of a file, if it is footed.

    Args:
        fd_or_path: an open file descriptor (not moved: ``pread`` is used) or a path.

    Returns:
        The footer, or ``None`` when the file is shorter than 512 bytes or its last 512 bytes
        are not a valid footer (wrong cookie or checksum).
    """
    if isinstance(fd_or_path, int):
        return _read_footer_fd(fd_or_path)
    fd = os.open(fd_or_path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return _read_footer_fd(fd)
    finally:
        os.close(fd)


def _read_footer_fd(fd: int) -> VhdFooter | None:
    length = os.fstat(fd).st_size
    if length < FOOTER_SIZE:
        return None
    tail = os.pread(fd, FOOTER_SIZE, length - FOOTER_SIZE)
    if len(tail) != FOOTER_SIZE or not tail.startswith(COOKIE):
        return None
    try:
        return parse_footer(tail)
    except CorruptImage:
        return None


def append_fixed_footer(
    fd: int, size: int, *, timestamp: int = FIXED_TIMESTAMP, unique_id: bytes | None = None
) -> None:
    """Write a fixed-VHD footer after ``size`` bytes of disk data.

    The footer is written with ``pwrite`` at offset ``size`` and the file is then cut to
    ``size + 512`` so the footer is its last 512 bytes.

    Args:
        fd: file descriptor open for reading and writing.
        size: bytes of disk data before the footer (a non-zero multiple of 512).
        timestamp: see :func:`build_fixed_footer`.
        unique_id: 16 bytes; ``None`` (what lcow's writers pass): derived from the disk data
            ``[0, size)`` by :func:`lcow.formats.vhd.identity.unique_id`, which reads it back.

    Raises:
        InvalidArgument: bad ``size`` (see :func:`build_fixed_footer`).
        OSError: a read or the write failed.
    """
    _check_size(size)  # before reading the data back
    if unique_id is None:
        unique_id = derived_unique_id(fd, size)
    footer = build_fixed_footer(size, timestamp=timestamp, unique_id=unique_id)
    view = memoryview(footer)
    done = 0
    while done < FOOTER_SIZE:
        done += os.pwrite(fd, view[done:], size + done)
    os.ftruncate(fd, size + FOOTER_SIZE)
