"""Packing one inode into its 256-byte table slot (SPEC §6.3)."""

from __future__ import annotations

import stat
import struct

from lcow.formats.ext4.extents import build_extent_tree, split_runs
from lcow.formats.ext4.layout import (
    EXT4_EXTENT_MAGIC,
    EXTENT_HEADER,
    EXTENTS_IN_INODE,
    EXTRA_ISIZE,
    INLINE_IBLOCK_SIZE,
    INODE_STRUCT,
    MAX_EXTENT_LEN,
    InodeFlag,
)
from lcow.formats.ext4.tree import TIME_BIAS, Tree
from lcow.formats.ext4.xattrs import XattrItem, pack_xattrs, xattr_items

__all__ = ["encode_time", "inode_xattrs", "pack_inode_into"]

_EMPTY_EXTENTS = EXTENT_HEADER.pack(EXT4_EXTENT_MAGIC, 0, EXTENTS_IN_INODE, 0, 0).ljust(60, b"\x00")
_MIN_SEC = -(1 << 31)
_MAX_SEC = 0x37FFFFFFF
_FLAG_EXTENTS = int(InodeFlag.EXTENTS)
_FLAG_INLINE = int(InodeFlag.INLINE_DATA)
_BASE = INODE_STRUCT.size
_pack_into = INODE_STRUCT.pack_into
_ZERO_IBLOCK = bytes(60)
# A root holding one extent: header + ee_block, ee_len, ee_start_hi, ee_start_lo, padding to 60.
_ROOT1 = struct.Struct("<HHHHIIHHI36x")
_S_IFREG, _S_IFDIR, _S_IFLNK = stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK
_S_IFCHR, _S_IFBLK = stat.S_IFCHR, stat.S_IFBLK


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


def inode_xattrs(tree: Tree, ino: int, inline_enabled: bool) -> tuple[bytes | None, bytes | None]:
    """The in-inode xattr area and the external block of ``ino`` (either may be ``None``)."""
    items: list[XattrItem] = []
    if inline_enabled and stat.S_ISREG(tree.mode[ino]) and ino in tree.data:
        items.append((7, b"data", tree.data[ino][INLINE_IBLOCK_SIZE:]))
    xattrs = tree.xattrs.get(ino)
    if xattrs:
        items.extend(xattr_items(xattrs))
    if not items:
        return None, None
    return pack_xattrs(items, owner=f"inode {ino}")


def pack_inode_into(  # noqa: PLR0913, PLR0917 - hot loop: once per inode left to Python (all without the C packer); one argument per slot input
    buf: bytearray,
    offset: int,
    tree: Tree,
    ino: int,
    deep_root: bytes | None,
    xattr_area: bytes | None,
    xattr_block: int,
    extra_blocks: int,
) -> None:
    """Pack inode ``ino`` into its 256-byte table slot at ``buf[offset:]`` (zeroed beforehand).

    Args:
        buf: the inode table being built.
        offset: byte offset of the slot in ``buf``.
        tree: the namespace holding the inode.
        ino: inode number.
        deep_root: the extent root when the tree has nodes outside the inode.
        xattr_area: the in-inode xattr area (magic included), if any.
        xattr_block: block number of the external xattr block, or 0.
        extra_blocks: metadata blocks owned besides data (extent nodes, xattr block).
    """
    mode = tree.mode[ino]
    fmt = mode & 0o170000
    flags = 0
    data_blocks = 0
    nblocks = tree.nblocks[ino]
    if fmt == _S_IFREG and nblocks and deep_root is None:
        # The common case, a dense file in one to four extents.
        data_blocks = nblocks
        block = _dense_root(tree.start[ino], nblocks)
        flags = _FLAG_EXTENTS
    else:
        runs = tree.data_runs(ino)
        data_blocks = sum(run[2] for run in runs) if runs else 0
        if fmt == _S_IFREG and ino in tree.data:  # inline data
            block = tree.data[ino][:INLINE_IBLOCK_SIZE].ljust(60, b"\x00")
            flags = _FLAG_INLINE
        elif fmt in (_S_IFREG, _S_IFDIR) or (fmt == _S_IFLNK and runs):
            if deep_root is not None:
                block = deep_root
            elif runs:
                block = build_extent_tree(split_runs(runs), _no_alloc)[0]
            else:
                block = _EMPTY_EXTENTS
            flags = _FLAG_EXTENTS
        elif fmt == _S_IFLNK:  # fast symlink: the target is the block map area
            block = tree.data[ino].ljust(60, b"\x00")
        elif fmt in (_S_IFCHR, _S_IFBLK):
            block = bytes(4) + tree.rdev.get(ino, 0).to_bytes(4, "little") + bytes(52)
        else:
            block = _ZERO_IBLOCK
    size = tree.size[ino]
    uid = tree.uid[ino]
    gid = tree.gid[ino]
    sectors = (data_blocks + extra_blocks) * 8
    atime, atime_x = encode_time(tree.atime[ino] - TIME_BIAS)
    ctime, ctime_x = encode_time(tree.ctime[ino] - TIME_BIAS)
    mtime, mtime_x = encode_time(tree.mtime[ino] - TIME_BIAS)
    links = tree.links[ino] + 2 if fmt == _S_IFDIR else tree.links[ino]
    _pack_into(
        buf,
        offset,
        mode,
        uid & 0xFFFF,
        size & 0xFFFFFFFF,
        atime,
        ctime,
        mtime,
        0,  # i_dtime
        gid & 0xFFFF,
        links,
        sectors & 0xFFFFFFFF,
        flags,
        b"",  # osd1
        block,
        0,  # i_generation
        xattr_block,
        size >> 32,
        0,  # i_obso_faddr
        (sectors >> 32) & 0xFFFF,  # l_i_blocks_high
        0,  # l_i_file_acl_high
        uid >> 16,
        gid >> 16,
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
        buf[offset + _BASE : offset + _BASE + len(xattr_area)] = xattr_area


def _dense_root(start: int, nblocks: int) -> bytes:
    """Depth-0 extent root for ``nblocks`` contiguous blocks from ``start`` (≤ 4 extents)."""
    if nblocks <= MAX_EXTENT_LEN:
        return _ROOT1.pack(
            EXT4_EXTENT_MAGIC,
            1,
            EXTENTS_IN_INODE,
            0,
            0,
            0,
            nblocks,
            start >> 32,
            start & 0xFFFFFFFF,
        )
    return build_extent_tree(split_runs([(0, start, nblocks)]), _no_alloc)[0]


def _no_alloc(count: int) -> int:
    raise AssertionError("an extent tree that fits the inode allocates nothing")
