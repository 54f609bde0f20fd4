"""ext4 reader: decoding one on-disk inode (SPEC §6.3; kernel ``ext4_iget``).

Handles 128-byte inodes and larger ones with ``i_extra_isize``, 32-bit owners (low and high
halves), 64-bit sizes, ``huge_file`` block counts, nanosecond timestamps with epoch bits, old and
new device encodings, and — on request — the ``metadata_csum`` inode checksum.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass

from lcow.errors import CorruptImage
from lcow.formats.ext4 import read_csum
from lcow.formats.ext4.layout import INODE_STRUCT, InodeFlag

__all__ = [
    "GOOD_OLD_INODE_SIZE",
    "LEAN_INODE",
    "SIZE_INODE",
    "VALID_FILE_TYPES",
    "Inode",
    "decode_rdev",
    "decode_time_ns",
    "parse_inode",
]

GOOD_OLD_INODE_SIZE = 128
_NS = 1_000_000_000
_EPOCH_MASK = 3
# Bytes of i_extra_isize a field needs to be present (EXT4_FITS_IN_INODE).
_EXTRA_CSUM_HI = 4
_EXTRA_CTIME = 8
_EXTRA_MTIME = 12
_EXTRA_ATIME = 16
_EXTRA_CRTIME = 20
_EXTRA_CRTIME_EXTRA = 24
_VALID_TYPES = frozenset(
    {
        stat.S_IFREG,
        stat.S_IFDIR,
        stat.S_IFLNK,
        stat.S_IFCHR,
        stat.S_IFBLK,
        stat.S_IFIFO,
        stat.S_IFSOCK,
    }
)
VALID_FILE_TYPES = _VALID_TYPES
_U32 = struct.Struct("<I")
# The fields a metadata scan needs, for a fast unpack straight from an inode-table buffer of
# inodes larger than 128 bytes: i_mode, i_uid, i_size_lo, i_mtime, i_gid, i_links_count,
# i_flags, i_block[0] and [1] (device numbers), i_file_acl_lo, i_size_high, l_i_file_acl_high,
# l_i_uid_high, l_i_gid_high, i_extra_isize and i_mtime_extra.
LEAN_INODE = struct.Struct("<HHI8xI4xHH4xI4xII56xII6xHHH4xH6xI")
assert LEAN_INODE.size == 140
# Fewer still, for summing sizes: i_mode, i_size_lo, i_links_count, i_flags, i_size_high,
# i_extra_isize.
SIZE_INODE = struct.Struct("<H2xI18xH4xI72xI16xH")
assert SIZE_INODE.size == 130
_S_IFMT = 0o170000
_DEVICE_TYPES = (stat.S_IFCHR, stat.S_IFBLK)
_EXTENTS_FL = int(InodeFlag.EXTENTS)
_INLINE_DATA_FL = int(InodeFlag.INLINE_DATA)
_HUGE_FILE_FL = int(InodeFlag.HUGE_FILE)


@dataclass(frozen=True, slots=True)
class Inode:
    """A decoded inode.

    Attributes:
        ino: inode number.
        mode: ``st_mode`` (type and permission bits).
        uid: owner (32 bits).
        gid: group (32 bits).
        size: ``i_size`` in bytes.
        nlink: ``i_links_count`` (1 for a directory past the ``dir_nlink`` limit).
        blocks: allocated space in 512-byte units (``st_blocks``).
        flags: ``i_flags``.
        atime_ns: access time, nanoseconds since the epoch.
        mtime_ns: modification time.
        ctime_ns: change time.
        crtime_ns: creation time, ``None`` when the inode has no room for it.
        generation: ``i_generation``.
        file_acl: block of the external xattr block, 0 when none.
        rdev: device number (``os.makedev``) for character and block devices, else 0.
        i_block: the 60-byte ``i_block`` area (extent root, block map, inline data, short
            symlink target).
        xattr_area: in-inode bytes after ``i_extra_isize`` (xattr header and entries).
    """

    ino: int
    mode: int
    uid: int
    gid: int
    size: int
    nlink: int
    blocks: int
    flags: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    crtime_ns: int | None
    generation: int
    file_acl: int
    rdev: int
    i_block: bytes
    xattr_area: bytes

    @property
    def file_type(self) -> int:
        """``stat.S_IFMT(mode)``."""
        return stat.S_IFMT(self.mode)

    @property
    def is_dir(self) -> bool:
        """A directory."""
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        """A regular file."""
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        """A symbolic link."""
        return stat.S_ISLNK(self.mode)

    @property
    def has_extents(self) -> bool:
        """Data mapped by an extent tree (``EXTENTS_FL``)."""
        return bool(self.flags & _EXTENTS_FL)

    @property
    def has_inline_data(self) -> bool:
        """Data stored in the inode (``INLINE_DATA_FL``)."""
        return bool(self.flags & _INLINE_DATA_FL)


def decode_time_ns(seconds: int, extra: int | None) -> int:
    """Decode an ext4 timestamp to integer nanoseconds.

    Args:
        seconds: the 32-bit on-disk seconds (signed).
        extra: the ``_extra`` word (epoch bits 0-1, nanoseconds << 2), or ``None`` if absent.

    Returns:
        Nanoseconds since the Unix epoch.
    """
    secs = seconds - (1 << 32) if seconds & 0x80000000 else seconds
    if extra is None:
        return secs * _NS
    secs += (extra & _EPOCH_MASK) << 32
    return secs * _NS + (extra >> 2)


def decode_rdev(old: int, new: int) -> int:
    """A device number from ``i_block[0]`` (old 8:8 encoding) or ``i_block[1]`` (new 12:20)."""
    if old:
        return os.makedev((old >> 8) & 0xFF, old & 0xFF)
    return os.makedev((new & 0xFFF00) >> 8, (new & 0xFF) | ((new >> 12) & 0xFFF00))


def _decode_rdev(i_block: bytes) -> int:
    return decode_rdev(_U32.unpack_from(i_block, 0)[0], _U32.unpack_from(i_block, 4)[0])


def _bad(image: str, ino: int, path: bytes | None, what: str) -> CorruptImage:
    where = f"inode {ino}" if path is None else f"inode {ino} ({os.fsdecode(path)})"
    subject = f"inode {ino}" if path is None else os.fsdecode(path)
    return CorruptImage(f"{image}: {where}: {what}", subject=subject)


def parse_inode(  # noqa: PLR0913 - keyword-only: the superblock features that widen on-disk fields, the checksum seed and message labels
    ino: int,
    raw: bytes,
    *,
    huge_file: bool,
    bit64: bool,
    block_size: int,
    verify_seed: int | None,
    image: str,
    path: bytes | None = None,
) -> Inode:
    """Decode one on-disk inode.

    Args:
        ino: inode number (for messages and the checksum).
        raw: ``s_inode_size`` bytes.
        huge_file: the filesystem has ``huge_file`` (48-bit ``i_blocks``).
        bit64: the filesystem has ``64bit`` (48-bit ``i_file_acl``).
        block_size: filesystem block size.
        verify_seed: the filesystem checksum seed to verify the inode checksum with, or
            ``None`` not to verify.
        image: image label for messages.
        path: a path naming the inode, for messages.

    Returns:
        The decoded inode; the caller decides whether an unused inode (mode 0 or no links)
        may be referenced.

    Raises:
        CorruptImage: bad ``i_extra_isize``, unknown file type, checksum mismatch.
    """
    inode_size = len(raw)
    padded = raw if inode_size >= INODE_STRUCT.size else raw.ljust(INODE_STRUCT.size, b"\0")
    (
        i_mode,
        i_uid,
        i_size_lo,
        i_atime,
        i_ctime,
        i_mtime,
        _i_dtime,
        i_gid,
        i_links_count,
        i_blocks_lo,
        i_flags,
        _l_i_version,
        i_block,
        i_generation,
        i_file_acl_lo,
        i_size_high,
        _i_obso_faddr,
        l_i_blocks_high,
        l_i_file_acl_high,
        l_i_uid_high,
        l_i_gid_high,
        l_i_checksum_lo,
        _l_i_reserved,
        i_extra_isize,
        i_checksum_hi,
        i_ctime_extra,
        i_mtime_extra,
        i_atime_extra,
        i_crtime,
        i_crtime_extra,
    ) = INODE_STRUCT.unpack_from(padded)
    if inode_size <= GOOD_OLD_INODE_SIZE:
        extra = 0
    else:
        extra = i_extra_isize
        if extra % 4 or GOOD_OLD_INODE_SIZE + extra > inode_size:
            raise _bad(image, ino, path, f"bad i_extra_isize {extra} for {inode_size}-byte inodes")
    if verify_seed is not None:
        has_hi = extra >= _EXTRA_CSUM_HI
        iseed = read_csum.inode_csum_seed(verify_seed, ino, i_generation)
        computed = read_csum.inode_csum(iseed, raw, has_hi=has_hi)
        stored = l_i_checksum_lo | (i_checksum_hi << 16 if has_hi else 0)
        if not has_hi:
            computed &= 0xFFFF
        if stored != computed:
            raise _bad(
                image, ino, path, f"checksum mismatch (stored {stored:#x}, computed {computed:#x})"
            )
    mode_type = i_mode & _S_IFMT
    if i_mode and mode_type not in _VALID_TYPES:
        raise _bad(image, ino, path, f"bad file type in mode {i_mode:#o}")
    blocks = i_blocks_lo
    if huge_file:
        blocks |= l_i_blocks_high << 32
        if i_flags & _HUGE_FILE_FL:
            blocks *= block_size // 512
    rdev = _decode_rdev(i_block) if mode_type in _DEVICE_TYPES else 0
    return Inode(
        ino=ino,
        mode=i_mode,
        uid=i_uid | (l_i_uid_high << 16),
        gid=i_gid | (l_i_gid_high << 16),
        size=i_size_lo | (i_size_high << 32),
        nlink=i_links_count,
        blocks=blocks,
        flags=i_flags,
        atime_ns=decode_time_ns(i_atime, i_atime_extra if extra >= _EXTRA_ATIME else None),
        mtime_ns=decode_time_ns(i_mtime, i_mtime_extra if extra >= _EXTRA_MTIME else None),
        ctime_ns=decode_time_ns(i_ctime, i_ctime_extra if extra >= _EXTRA_CTIME else None),
        crtime_ns=(
            decode_time_ns(i_crtime, i_crtime_extra if extra >= _EXTRA_CRTIME_EXTRA else None)
            if extra >= _EXTRA_CRTIME
            else None
        ),
        generation=i_generation,
        file_acl=i_file_acl_lo | (l_i_file_acl_high << 32 if bit64 else 0),
        rdev=rdev,
        i_block=i_block,
        xattr_area=raw[GOOD_OLD_INODE_SIZE + extra :] if inode_size > GOOD_OLD_INODE_SIZE else b"",
    )
