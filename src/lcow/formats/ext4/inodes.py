"""Packing one inode into its 256-byte table slot (SPEC §6.3)."""

from __future__ import annotations

import stat

from lcow.formats.ext4.layout import (
    EXT4_EXTENT_MAGIC,
    EXTENT_HEADER,
    EXTENTS_IN_INODE,
    EXTRA_ISIZE,
    INLINE_IBLOCK_SIZE,
    INODE_SIZE,
    INODE_STRUCT,
    InodeFlag,
)
from lcow.formats.ext4.tree import Inode
from lcow.formats.ext4.xattrs import XattrItem, pack_xattrs, split_name

__all__ = ["encode_time", "inode_xattrs", "pack_inode"]

_EMPTY_EXTENTS = EXTENT_HEADER.pack(EXT4_EXTENT_MAGIC, 0, EXTENTS_IN_INODE, 0, 0).ljust(60, b"\x00")
_MIN_SEC = -(1 << 31)
_MAX_SEC = 0x37FFFFFFF
_FLAG_EXTENTS = int(InodeFlag.EXTENTS)
_FLAG_INLINE = int(InodeFlag.INLINE_DATA)
_PAD = bytes(INODE_SIZE - INODE_STRUCT.size)


def encode_time(ns: int) -> tuple[int, int]:
    """Split ns since the epoch into ``(i_xtime, i_xtime_extra)``: low 32 bits of the seconds,
    and epoch bits (0-1) plus nanoseconds << 2, clamped to what ext4 can hold."""
    sec, nsec = divmod(ns, 1_000_000_000)
    if sec < _MIN_SEC:
        sec, nsec = _MIN_SEC, 0
    elif sec > _MAX_SEC:
        sec, nsec = _MAX_SEC, 999_999_999
    low = sec & 0xFFFFFFFF
    signed_low = low - (1 << 32) if low & 0x80000000 else low
    epoch = ((sec - signed_low) >> 32) & 3
    return low, epoch | (nsec << 2)


def inode_xattrs(node: Inode, inline_enabled: bool) -> tuple[bytes | None, bytes | None]:
    """The in-inode xattr area and the external block for ``node`` (either may be ``None``)."""
    items: list[XattrItem] = []
    if inline_enabled and node.data is not None and stat.S_ISREG(node.mode):
        items.append((7, b"data", node.data[INLINE_IBLOCK_SIZE:]))
    if node.xattrs:
        rest = []
        for name, value in node.xattrs.items():
            split = split_name(name)
            if split is not None:
                rest.append((split[0], split[1], value))
        rest.sort(key=lambda item: (item[0], len(item[1]), item[1]))
        items.extend(rest)
    if not items:
        return None, None
    owner = f"inode {node.ino}"
    return pack_xattrs(items, owner=owner)


def pack_inode(
    node: Inode,
    links: int,
    i_block: bytes | None,
    xattr_area: bytes | None,
    xattr_block: int,
    extra_blocks: int,
) -> bytes:
    """The 256 bytes of ``node``'s table slot."""
    mode = node.mode
    fmt = stat.S_IFMT(mode)
    flags = 0
    data_blocks = 0
    if node.runs is not None:
        data_blocks = sum(run[2] for run in node.runs)
    if fmt == stat.S_IFREG:
        if node.data is not None:  # inline data
            block = node.data[:INLINE_IBLOCK_SIZE].ljust(60, b"\x00")
            flags = _FLAG_INLINE
        else:
            block = i_block or _EMPTY_EXTENTS
            flags = _FLAG_EXTENTS
    elif fmt == stat.S_IFDIR:
        block = i_block or _EMPTY_EXTENTS
        flags = _FLAG_EXTENTS
    elif fmt == stat.S_IFLNK:
        if i_block is not None:  # slow symlink: target in a block
            block = i_block
            flags = _FLAG_EXTENTS
        else:
            block = (node.data or b"").ljust(60, b"\x00")
    elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
        block = bytes(4) + node.rdev.to_bytes(4, "little") + bytes(52)
    else:
        block = bytes(60)
    size = node.size
    sectors = (data_blocks + extra_blocks) * 8
    atime, atime_x = encode_time(node.atime)
    ctime, ctime_x = encode_time(node.ctime)
    mtime, mtime_x = encode_time(node.mtime)
    packed = INODE_STRUCT.pack(
        mode & 0xFFFF,
        node.uid & 0xFFFF,
        size & 0xFFFFFFFF,
        atime,
        ctime,
        mtime,
        0,  # i_dtime
        node.gid & 0xFFFF,
        links,
        sectors & 0xFFFFFFFF,
        flags,
        b"\x00" * 4,  # osd1
        block,
        0,  # i_generation
        xattr_block & 0xFFFFFFFF,
        size >> 32,
        0,  # i_obso_faddr
        (sectors >> 32) & 0xFFFF,  # l_i_blocks_high
        (xattr_block >> 32) & 0xFFFF,
        (node.uid >> 16) & 0xFFFF,
        (node.gid >> 16) & 0xFFFF,
        0,  # l_i_checksum_lo
        0,  # l_i_reserved
        EXTRA_ISIZE,
        0,  # i_checksum_hi
        ctime_x,
        mtime_x,
        atime_x,
        mtime,  # i_crtime = the archive's mtime
        mtime_x,
    )
    if xattr_area is not None:
        return packed + xattr_area
    return packed + _PAD
