"""One-pass ext4 image writer (SPEC §6.1-§6.5).

Layout, in write order (all 4 KiB blocks):

* block 0 holds the superblock at byte 1024; blocks ``1 .. gdt_reserved`` are kept for group
  descriptors, enough for the largest image allowed (8 blocks at 128 GiB);
* file data streams in archive order, each file contiguous (sparse files: only their data);
* at :meth:`Ext4Writer.close`: directory blocks, slow symlink targets, xattr blocks and extent
  tree nodes; then the inode tables of all groups back to back; then a block bitmap and an
  inode bitmap per group, interleaved; then group descriptors and the superblock.

The group count and inodes per group are chosen last, as the smallest that hold everything
(``flex_bg`` lets every table live anywhere). Blocks of replaced files are freed in the bitmap.
Features: ext_attr, sparse_super2 (no backups), filetype, extents, flex_bg, large_file,
huge_file, extra_isize, read-only; inline_data on request. No journal, no checksums.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from lcow._util.outbuf import OutputWriter
from lcow.errors import FailedPrecondition, InvalidArgument, LimitExceeded
from lcow.formats.ext4.dirents import pack_directory
from lcow.formats.ext4.extents import Run, build_extent_tree, split_runs
from lcow.formats.ext4.inodes import inode_xattrs, pack_inode
from lcow.formats.ext4.layout import (
    BLOCK_SIZE,
    BLOCKS_PER_GROUP,
    DESCS_PER_BLOCK,
    GROUP_DESC,
    INODES_PER_BLOCK,
    MAX_FILE_BLOCKS,
    MAX_FS_BLOCKS,
    FileType,
)
from lcow.formats.ext4.superblock import pack_superblock
from lcow.formats.ext4.tree import Inode, Tree

__all__ = ["Ext4Writer", "ImageStats"]

_FTYPE = {
    stat.S_IFREG: FileType.REG_FILE,
    stat.S_IFDIR: FileType.DIR,
    stat.S_IFCHR: FileType.CHRDEV,
    stat.S_IFBLK: FileType.BLKDEV,
    stat.S_IFIFO: FileType.FIFO,
    stat.S_IFSOCK: FileType.SOCK,
    stat.S_IFLNK: FileType.SYMLINK,
}


@dataclass(frozen=True)
class ImageStats:
    """Summary of a finished image."""

    size: int  # bytes of the filesystem
    blocks_count: int
    used_blocks: int
    inodes_count: int
    used_inodes: int
    groups: int


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


class Ext4Writer:
    """Builds an ext4 filesystem into a new, empty file.

    Args:
        fd: writable descriptor of an empty regular file (positional writes only).
        max_size: largest filesystem allowed, bytes.
        inline_data: enable the ``inline_data`` feature (the caller stores small files inline).
    """

    def __init__(self, fd: int, *, max_size: int, inline_data: bool = False) -> None:
        max_blocks = min(_round_up(max_size, BLOCK_SIZE) // BLOCK_SIZE, MAX_FS_BLOCKS)
        if max_blocks < 64:
            raise InvalidArgument(f"maximum image size {max_size} is too small (minimum 256 KiB)")
        self.out = OutputWriter(fd)
        self.max_blocks = max_blocks
        self.inline_data = inline_data
        max_groups = -(-max_blocks // BLOCKS_PER_GROUP)
        self.gdt_reserved = -(-max_groups // DESCS_PER_BLOCK)
        self.first_data_block = 1 + self.gdt_reserved
        self.cursor = self.first_data_block  # next free block
        self.freed: list[tuple[int, int]] = []  # (start, count) given back by replaced files
        self.tree = Tree(self._free_runs)
        self._closed = False

    # -- allocation --------------------------------------------------------------------------

    def _free_runs(self, runs: list[Run]) -> None:
        self.freed.extend((physical, length) for _, physical, length in runs)

    def allocate(self, count: int, owner: str) -> int:
        """Reserve ``count`` consecutive blocks; returns the first. Errors name ``owner``."""
        start = self.cursor
        if start + count > self.max_blocks:
            limit = self.max_blocks * BLOCK_SIZE
            raise LimitExceeded(
                f"{owner}: image would exceed the maximum size of {limit} bytes", subject=owner
            )
        self.cursor = start + count
        return start

    def file_runs(self, node: Inode, size: int, owner: str) -> int:
        """Allocate a dense file of ``size`` bytes for ``node``; returns its byte offset."""
        blocks = -(-size // BLOCK_SIZE)
        if blocks > MAX_FILE_BLOCKS:
            raise LimitExceeded(f"{owner}: file of {size} bytes is too large for ext4", subject=owner)
        start = self.allocate(blocks, owner)
        node.size = size
        node.runs = [(0, start, blocks)] if blocks else None
        return start * BLOCK_SIZE

    def sparse_runs(
        self, node: Inode, segments: list[tuple[int, int]], size: int, owner: str
    ) -> list[tuple[int, int]]:
        """Allocate only the blocks that hold data of a sparse file.

        Args:
            segments: ``(offset, length)`` of each data segment in the file, ascending.
            size: logical file size.

        Returns:
            For each segment, ``(byte offset in the image, length)`` where its data goes.
        """
        ranges: list[list[int]] = []  # merged [first block, end block) with data
        prev_end = 0
        for offset, length in segments:
            if offset < prev_end or length < 0 or offset + length > size:
                raise InvalidArgument(f"{owner}: sparse map is out of order or out of range", subject=owner)
            prev_end = offset + length
            if not length:
                continue
            first, end = offset // BLOCK_SIZE, -(-(offset + length) // BLOCK_SIZE)
            if ranges and first <= ranges[-1][1]:
                ranges[-1][1] = max(ranges[-1][1], end)
            else:
                ranges.append([first, end])
        if -(-size // BLOCK_SIZE) > MAX_FILE_BLOCKS:
            raise LimitExceeded(f"{owner}: file of {size} bytes is too large for ext4", subject=owner)
        total = sum(end - first for first, end in ranges)
        start = self.allocate(total, owner)
        runs: list[Run] = []
        physical = start
        for first, end in ranges:
            runs.append((first, physical, end - first))
            physical += end - first
        node.size = size
        node.runs = runs or None
        # Map each segment's logical offset to its image offset.
        placed: list[tuple[int, int]] = []
        k = 0
        for offset, length in segments:
            if not length:
                continue
            block = offset // BLOCK_SIZE
            while not runs[k][0] <= block < runs[k][0] + runs[k][2]:
                k += 1
            logical, phys, _ = runs[k]
            placed.append(((phys + block - logical) * BLOCK_SIZE + offset % BLOCK_SIZE, length))
        return placed

    # -- finishing ---------------------------------------------------------------------------

    def close(self) -> ImageStats:
        """Write directories, metadata, tables, bitmaps, descriptors and the superblock."""
        if self._closed:
            raise FailedPrecondition("image already closed")
        self._closed = True
        out = self.out
        tree = self.tree
        meta_start = self.cursor
        extra_blocks: dict[int, int] = {}  # ino -> metadata blocks owned (tree nodes, xattr)
        i_blocks: dict[int, bytes] = {}  # ino -> 60-byte i_block
        xattr_block: dict[int, int] = {}
        inode_areas: dict[int, bytes | None] = {}

        def alloc(n: int) -> int:
            return self.allocate(n, "image metadata")

        for node in tree.live_inodes():
            ino = node.ino
            fmt = stat.S_IFMT(node.mode)
            if fmt == stat.S_IFDIR:
                body = pack_directory(self._dirents(node))
                start = alloc(len(body) // BLOCK_SIZE)
                out.write_at(start * BLOCK_SIZE, body)
                node.size = len(body)
                node.runs = [(0, start, len(body) // BLOCK_SIZE)]
            elif fmt == stat.S_IFLNK and node.data is not None and len(node.data) >= 60:
                start = alloc(1)
                out.write_at(start * BLOCK_SIZE, node.data.ljust(BLOCK_SIZE, b"\x00"))
                node.runs = [(0, start, 1)]
            area, block = inode_xattrs(node, self.inline_data)
            inode_areas[ino] = area
            if block is not None:
                at = alloc(1)
                out.write_at(at * BLOCK_SIZE, block)
                xattr_block[ino] = at
                extra_blocks[ino] = 1
            if node.runs is not None:
                runs = split_runs(node.runs)
                root, nodes, count = build_extent_tree(runs, alloc)
                for blockno, content in nodes:
                    out.write_at(blockno * BLOCK_SIZE, content)
                i_blocks[ino] = root
                if count:
                    extra_blocks[ino] = extra_blocks.get(ino, 0) + count
        meta_end = self.cursor
        out.flush()

        # Geometry: the fewest groups whose inode tables and bitmaps fit after everything else.
        inodes_needed = len(tree.inodes)
        groups, ipg = self._geometry(meta_end, inodes_needed)
        table_blocks = ipg // INODES_PER_BLOCK
        table_start = meta_end
        bitmap_start = table_start + groups * table_blocks
        used_end = bitmap_start + 2 * groups
        blocks_count = max(used_end, (groups - 1) * BLOCKS_PER_GROUP + 1)
        if blocks_count > self.max_blocks:
            limit = self.max_blocks * BLOCK_SIZE
            raise LimitExceeded(f"image would exceed the maximum size of {limit} bytes")

        # Inode tables, one group at a time.
        used_inodes = 0
        dirs_per_group = [0] * groups
        free_inodes = [ipg] * groups
        inode_bitmaps = [bytearray(BLOCK_SIZE) for _ in range(groups)]
        for g in range(groups):
            bm = inode_bitmaps[g]
            bm[ipg // 8 :] = b"\xff" * (BLOCK_SIZE - ipg // 8)  # padding bits past the group
        table = bytearray(ipg * 256)
        group = 0
        for ino in range(1, len(tree.inodes) + 1):
            g, index = divmod(ino - 1, ipg)
            if g != group:
                out.write_at((table_start + group * table_blocks) * BLOCK_SIZE, table)
                table = bytearray(ipg * 256)
                group = g
            node = tree.inodes[ino - 1]
            if node is None:
                if ino >= 11:
                    continue
                # Reserved inodes 1, 3..10 are in use but empty.
            else:
                if node.children is not None:
                    dirs_per_group[g] += 1
                links = 2 + node.links if node.children is not None else node.links
                table[index * 256 : index * 256 + 256] = pack_inode(
                    node,
                    links,
                    i_blocks.get(ino),
                    inode_areas.get(ino),
                    xattr_block.get(ino, 0),
                    extra_blocks.get(ino, 0),
                )
            inode_bitmaps[g][index >> 3] |= 1 << (index & 7)
            free_inodes[g] -= 1
            used_inodes += 1
        out.write_at((table_start + group * table_blocks) * BLOCK_SIZE, table)
        out.flush()

        # Block bitmap over the whole filesystem, then per-group slices.
        gdt_blocks = -(-groups // DESCS_PER_BLOCK)
        bits = bytearray(groups * BLOCK_SIZE)
        _set_range(bits, 0, 1 + gdt_blocks, True)
        _set_range(bits, self.first_data_block, used_end, True)
        for start, count in self.freed:
            _set_range(bits, start, start + count, False)
        _set_range(bits, blocks_count, groups * BLOCKS_PER_GROUP, True)  # past the end
        used_blocks = 0
        free_blocks = []
        for g in range(groups):
            piece = bits[g * BLOCK_SIZE : (g + 1) * BLOCK_SIZE]
            out.write_at((bitmap_start + 2 * g) * BLOCK_SIZE, piece)
            out.write_at((bitmap_start + 2 * g + 1) * BLOCK_SIZE, inode_bitmaps[g])
            ones = int.from_bytes(piece, "little").bit_count()
            free_blocks.append(BLOCKS_PER_GROUP - ones)
        used_blocks = blocks_count - sum(free_blocks)

        # Group descriptors.
        gdt = bytearray(gdt_blocks * BLOCK_SIZE)
        for g in range(groups):
            GROUP_DESC.pack_into(
                gdt,
                g * GROUP_DESC.size,
                bitmap_start + 2 * g,
                bitmap_start + 2 * g + 1,
                table_start + g * table_blocks,
                free_blocks[g],
                free_inodes[g],
                dirs_per_group[g],
                0,
                0,
                0,
                0,
                0,
                0,
            )
        out.write_at(BLOCK_SIZE, gdt)
        superblock = pack_superblock(
            blocks_count=blocks_count,
            free_blocks=sum(free_blocks),
            inodes_count=groups * ipg,
            free_inodes=sum(free_inodes),
            inodes_per_group=ipg,
            inline_data=self.inline_data,
        )
        out.write_at(1024, superblock)
        out.flush()
        os.ftruncate(out.fd, blocks_count * BLOCK_SIZE)
        return ImageStats(
            size=blocks_count * BLOCK_SIZE,
            blocks_count=blocks_count,
            used_blocks=used_blocks,
            inodes_count=groups * ipg,
            used_inodes=used_inodes,
            groups=groups,
        )

    def _dirents(self, node: Inode) -> list[tuple[int, int, bytes]]:
        parent = node.parent if node.parent is not None else node
        entries = [(node.ino, FileType.DIR, b"."), (parent.ino, FileType.DIR, b"..")]
        for name, child in node.children.items():  # type: ignore[union-attr]
            entries.append((child.ino, _FTYPE[stat.S_IFMT(child.mode)], name))
        return entries

    def _geometry(self, meta_end: int, inodes_needed: int) -> tuple[int, int]:
        """Smallest group count (then inodes per group) that fits blocks and inodes."""
        groups = max(1, -(-meta_end // BLOCKS_PER_GROUP))
        while True:
            ipg = max(16, _round_up(-(-inodes_needed // groups), 16))
            if ipg <= BLOCKS_PER_GROUP:
                used_end = meta_end + groups * (ipg // INODES_PER_BLOCK) + 2 * groups
                if used_end <= groups * BLOCKS_PER_GROUP and groups <= self.gdt_reserved * DESCS_PER_BLOCK:
                    return groups, ipg
            groups += 1
            if groups > self.gdt_reserved * DESCS_PER_BLOCK:
                limit = self.max_blocks * BLOCK_SIZE
                raise LimitExceeded(f"image would exceed the maximum size of {limit} bytes")


def _set_range(bits: bytearray, start: int, end: int, value: bool) -> None:
    """Set or clear bits ``[start, end)`` of a little-endian bitmap."""
    end = min(end, len(bits) * 8)
    if start >= end:
        return
    fill = 0xFF if value else 0x00
    first_full = (start + 7) // 8
    last_full = end // 8
    if first_full < last_full:
        bits[first_full:last_full] = bytes([fill]) * (last_full - first_full)
        lo_bits = range(start, first_full * 8)
        hi_bits = range(last_full * 8, end)
    else:
        lo_bits = range(start, end)
        hi_bits = range(0)
    for b in (*lo_bits, *hi_bits):
        if value:
            bits[b >> 3] |= 1 << (b & 7)
        else:
            bits[b >> 3] &= ~(1 << (b & 7)) & 0xFF
