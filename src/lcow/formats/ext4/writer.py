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
Features: ext_attr, dir_index (no directory indexed), sparse_super2 (no backups), filetype,
extents, flex_bg, large_file, huge_file, extra_isize, read-only; inline_data on request. No
journal, no checksums.

When the optional C module ``lcow._ext4pack`` is built (and ``LCOW_NATIVE`` is not ``0``), it
packs the directory blocks and the inode table rows that need no dictionary data; every other
inode goes through :func:`~lcow.formats.ext4.inodes.pack_inode_into`. Both give the same bytes.
"""

from __future__ import annotations

import os
import stat
from array import array
from dataclasses import dataclass
from typing import Protocol, cast

from lcow._util import native
from lcow._util.outbuf import OutputWriter, WriteObserver
from lcow.errors import FailedPrecondition, InvalidArgument, LimitExceeded
from lcow.formats.ext4.dirents import pack_directory
from lcow.formats.ext4.extents import Run, build_extent_tree, split_runs
from lcow.formats.ext4.inodes import inode_xattrs, pack_inode_into
from lcow.formats.ext4.layout import (
    BLOCK_SIZE,
    BLOCKS_PER_GROUP,
    DESCS_PER_BLOCK,
    EXTENTS_IN_INODE,
    FAST_SYMLINK_MAX,
    GROUP_DESC,
    INODE_SIZE,
    INODES_PER_BLOCK,
    LOST_AND_FOUND_INO,
    MAX_EXTENT_LEN,
    MAX_FILE_BLOCKS,
    MAX_FS_BLOCKS,
    FileType,
)
from lcow.formats.ext4.superblock import pack_superblock
from lcow.formats.ext4.tree import Tree

__all__ = ["Ext4Writer", "ImageStats"]

_TABLE_CHUNK = 1 << 20  # inode table bytes packed per write
_INODE_EXTENT_BLOCKS = EXTENTS_IN_INODE * MAX_EXTENT_LEN  # longest file mapped by the inode alone

_FTYPE = {
    stat.S_IFREG: FileType.REG_FILE,
    stat.S_IFDIR: FileType.DIR,
    stat.S_IFCHR: FileType.CHRDEV,
    stat.S_IFBLK: FileType.BLKDEV,
    stat.S_IFIFO: FileType.FIFO,
    stat.S_IFSOCK: FileType.SOCK,
    stat.S_IFLNK: FileType.SYMLINK,
}


class _Ext4Pack(Protocol):
    """What this module calls in the C accelerator ``lcow._ext4pack`` (``ext4pack.c``)."""

    def pack_inodes(  # noqa: PLR0913, PLR0917 - mirrors the positional-only signature of pack_inodes in ext4pack.c
        self,
        table: bytearray,
        first: int,
        last: int,
        ipg: int,
        columns: tuple[array[int], ...],
        special: bytes | bytearray,
        dirs: array[int],
        free_inodes: array[int],
        bitmaps: bytearray,
        /,
    ) -> list[int]: ...

    def pack_dir(
        self, ino: int, parent: int, children: dict[bytes, int], mode: array[int], /
    ) -> bytearray: ...


#: The C packer (same bytes as the Python code), or None: not built, or ``LCOW_NATIVE=0``.
#: Tests set it to None to compare both.
_ext4pack = cast("_Ext4Pack | None", native.load("_ext4pack"))


@dataclass(frozen=True)
class ImageStats:
    """Summary of a finished image."""

    size: int  # bytes of the filesystem
    blocks_count: int
    used_blocks: int
    inodes_count: int
    used_inodes: int
    groups: int


@dataclass(frozen=True)
class _Layout:
    """Where :meth:`Ext4Writer.close` puts the tables, once the metadata's end is known."""

    groups: int
    ipg: int  # inodes per group
    table_start: int  # first block of the inode tables, all groups back to back
    table_blocks: int  # inode table blocks per group
    bitmap_start: int  # first bitmap block: a block and an inode bitmap per group, interleaved
    used_end: int  # first block past the bitmaps
    blocks_count: int  # blocks in the filesystem

    @classmethod
    def after(cls, meta_end: int, groups: int, ipg: int) -> _Layout:
        """Tables from block ``meta_end`` on, for ``groups`` groups of ``ipg`` inodes."""
        table_blocks = ipg // INODES_PER_BLOCK
        bitmap_start = meta_end + groups * table_blocks
        used_end = bitmap_start + 2 * groups
        blocks_count = max(used_end, (groups - 1) * BLOCKS_PER_GROUP + 1)
        return cls(groups, ipg, meta_end, table_blocks, bitmap_start, used_end, blocks_count)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


class Ext4Writer:
    """Builds an ext4 filesystem into a new, empty file.

    Args:
        fd: writable descriptor of an empty regular file (positional writes only).
        max_size: largest filesystem allowed, bytes.
        inline_data: enable the ``inline_data`` feature (the caller stores small files inline).
        write_behind: hand written pages to writeback and drop them from the page cache as the
            image grows (see :class:`~lcow._util.outbuf.OutputWriter`); for images not read
            back right away.
        observer: sees every byte written to ``fd`` (e.g. to hash the image as it is written).
        expected_size: the image's size in bytes, roughly, when known in advance (it decides
            whether ``write_behind`` is worth it).
    """

    def __init__(  # noqa: PLR0913 - keyword-only options, passed through to the OutputWriter
        self,
        fd: int,
        *,
        max_size: int,
        inline_data: bool = False,
        write_behind: bool = False,
        observer: WriteObserver | None = None,
        expected_size: int | None = None,
    ) -> None:
        max_blocks = min(_round_up(max_size, BLOCK_SIZE) // BLOCK_SIZE, MAX_FS_BLOCKS)
        if max_blocks < 64:
            raise InvalidArgument(f"maximum image size {max_size} is too small (minimum 256 KiB)")
        self.out = OutputWriter(
            fd, write_behind=write_behind, observer=observer, expected_size=expected_size
        )
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

    def file_runs(self, ino: int, size: int, owner: str) -> int:
        """Allocate a dense file of ``size`` bytes for ``ino``; returns its byte offset."""
        blocks = -(-size // BLOCK_SIZE)
        if blocks > MAX_FILE_BLOCKS:
            raise LimitExceeded(
                f"{owner}: file of {size} bytes is too large for ext4", subject=owner
            )
        start = self.allocate(blocks, owner)
        tree = self.tree
        tree.size[ino] = size
        tree.start[ino] = start
        tree.nblocks[ino] = blocks
        return start * BLOCK_SIZE

    def sparse_runs(
        self, ino: int, segments: list[tuple[int, int]], size: int, owner: str
    ) -> list[tuple[int, int]]:
        """Allocate only the blocks that hold data of a sparse file.

        Args:
            ino: the file's inode.
            segments: ``(offset, length)`` of each data segment in the file, ascending.
            size: logical file size.
            owner: the entry name, for errors.

        Returns:
            For each non-empty segment, ``(byte offset in the image, length)`` where its data goes.
        """
        ranges: list[list[int]] = []  # merged [first block, end block) holding data
        prev_end = 0
        for offset, length in segments:
            if offset < prev_end or length < 0 or offset + length > size:
                raise InvalidArgument(
                    f"{owner}: sparse map is out of order or out of range", subject=owner
                )
            prev_end = offset + length
            if not length:
                continue
            first, end = offset // BLOCK_SIZE, -(-(offset + length) // BLOCK_SIZE)
            if ranges and first <= ranges[-1][1]:
                ranges[-1][1] = max(ranges[-1][1], end)
            else:
                ranges.append([first, end])
        if -(-size // BLOCK_SIZE) > MAX_FILE_BLOCKS:
            raise LimitExceeded(
                f"{owner}: file of {size} bytes is too large for ext4", subject=owner
            )
        start = self.allocate(sum(end - first for first, end in ranges), owner)
        runs: list[Run] = []
        physical = start
        for first, end in ranges:
            runs.append((first, physical, end - first))
            physical += end - first
        self.tree.size[ino] = size
        if runs:
            self.tree.runs[ino] = runs
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
        tree = self.tree
        count = tree.count
        xattr_block = array("I", bytes(4 * (count + 1)))
        extra_blocks = array("I", bytes(4 * (count + 1)))
        deep_roots: dict[int, bytes] = {}  # extent roots of trees deeper than the inode
        self._write_metadata(xattr_block, extra_blocks, deep_roots)
        meta_end = self.cursor

        layout = _Layout.after(meta_end, *self._geometry(meta_end, count))
        groups, ipg, blocks_count = layout.groups, layout.ipg, layout.blocks_count
        if blocks_count > self.max_blocks:
            limit = self.max_blocks * BLOCK_SIZE
            raise LimitExceeded(f"image would exceed the maximum size of {limit} bytes")

        dirs, free_inodes, inode_bitmaps = self._write_inode_table(
            layout, xattr_block, extra_blocks, deep_roots
        )
        free_blocks = self._write_bitmaps(layout, inode_bitmaps)
        self._write_descriptors(layout, free_blocks, free_inodes, dirs)
        superblock = pack_superblock(
            blocks_count=blocks_count,
            free_blocks=sum(free_blocks),
            inodes_count=groups * ipg,
            free_inodes=sum(free_inodes),
            inodes_per_group=ipg,
            inline_data=self.inline_data,
        )
        self.out.write_at(1024, superblock)
        self.out.close()
        os.ftruncate(self.out.fd, blocks_count * BLOCK_SIZE)
        return ImageStats(
            size=blocks_count * BLOCK_SIZE,
            blocks_count=blocks_count,
            used_blocks=blocks_count - sum(free_blocks),
            inodes_count=groups * ipg,
            used_inodes=groups * ipg - sum(free_inodes),
            groups=groups,
        )

    def _write_metadata(
        self, xattr_block: array[int], extra_blocks: array[int], deep_roots: dict[int, bytes]
    ) -> None:
        """Directory blocks, slow symlink targets, xattr blocks and extent tree nodes."""
        tree = self.tree
        out = self.out

        def alloc(n: int) -> int:
            return self.allocate(n, "image metadata")

        mode = tree.mode
        for ino in self._metadata_inodes():
            fmt = stat.S_IFMT(mode[ino])
            if not fmt:
                continue
            if fmt == stat.S_IFDIR:
                body = self._directory(ino)
                n = len(body) // BLOCK_SIZE
                start = alloc(n)
                out.write_at(start * BLOCK_SIZE, body)
                # Kept like a dense file's data, so the inode packs as a plain one.
                tree.size[ino] = len(body)
                tree.start[ino] = start
                tree.nblocks[ino] = n
            elif fmt == stat.S_IFLNK and len(tree.data[ino]) > FAST_SYMLINK_MAX:
                start = alloc(1)
                out.write_at(start * BLOCK_SIZE, tree.data[ino].ljust(BLOCK_SIZE, b"\x00"))
                tree.runs[ino] = [(0, start, 1)]
            if ino in tree.xattrs or (
                self.inline_data and fmt == stat.S_IFREG and ino in tree.data
            ):
                _, block = inode_xattrs(tree, ino, self.inline_data)
                if block is not None:
                    at = alloc(1)
                    out.write_at(at * BLOCK_SIZE, block)
                    xattr_block[ino] = at
                    extra_blocks[ino] = 1
            # Dense data of at most four extents fits the inode; only the rest may need nodes.
            if ino in tree.runs or tree.nblocks[ino] > _INODE_EXTENT_BLOCKS:
                extents = split_runs(tree.data_runs(ino) or [])
                if len(extents) > EXTENTS_IN_INODE:
                    root, nodes, node_count = build_extent_tree(extents, alloc)
                    for blockno, content in nodes:
                        out.write_at(blockno * BLOCK_SIZE, content)
                    deep_roots[ino] = root
                    extra_blocks[ino] += node_count
        out.flush()

    def _metadata_inodes(self) -> list[int]:
        """The inodes :meth:`_write_metadata` may give blocks, ascending (the allocation order):
        directories, symlinks, inline files, inodes with xattrs or sparse maps, and files longer
        than the inode's own extents can map. Plain files need nothing, and are most inodes."""
        tree = self.tree
        nblocks = tree.nblocks
        long_files: list[int] = []
        if max(nblocks) > _INODE_EXTENT_BLOCKS:
            long_files = [ino for ino, n in enumerate(nblocks) if n > _INODE_EXTENT_BLOCKS]
        return sorted({*tree.children, *tree.data, *tree.xattrs, *tree.runs, *long_files})

    def _directory(self, ino: int) -> bytearray:
        """The blocks of directory ``ino``."""
        tree = self.tree
        parent = tree.parent.get(ino, ino)
        if _ext4pack is not None:
            return _ext4pack.pack_dir(ino, parent, tree.children[ino], tree.mode)
        return pack_directory(self._dirents(ino, parent))

    def _write_inode_table(
        self,
        layout: _Layout,
        xattr_block: array[int],
        extra_blocks: array[int],
        deep_roots: dict[int, bytes],
    ) -> tuple[list[int], list[int], bytearray]:
        """Pack every inode into the tables (contiguous across groups); returns per-group
        directory counts, free inode counts and the inode bitmaps (one block per group)."""
        tree = self.tree
        groups, ipg, table_start = layout.groups, layout.ipg, layout.table_start
        dirs = array("I", bytes(4 * groups))
        free_inodes = array("I", [ipg]) * groups
        bitmaps = bytearray(groups * BLOCK_SIZE)
        for g in range(groups):  # padding past the group's inodes is "in use"
            bitmaps[g * BLOCK_SIZE + ipg // 8 : (g + 1) * BLOCK_SIZE] = b"\xff" * (
                BLOCK_SIZE - ipg // 8
            )
        # What the C packer reads: the inode columns, and which inodes to leave to Python.
        columns = (
            *(tree.mode, tree.uid, tree.gid, tree.links, tree.size),
            *(tree.mtime, tree.atime, tree.ctime, tree.start, tree.nblocks),
            *(xattr_block, extra_blocks),
        )
        special = self._special_inodes(deep_roots) if _ext4pack is not None else b""
        chunk_inodes = _TABLE_CHUNK // INODE_SIZE
        for first in range(1, tree.count + 1, chunk_inodes):
            last = min(first + chunk_inodes, tree.count + 1)
            table = bytearray((last - first) * INODE_SIZE)
            if _ext4pack is not None:
                left = _ext4pack.pack_inodes(
                    table, first, last, ipg, columns, special, dirs, free_inodes, bitmaps
                )
            else:
                left = self._account_inodes(first, last, ipg, dirs, free_inodes, bitmaps)
            for ino in left:
                area = None
                if ino in tree.xattrs or (self.inline_data and ino in tree.data):
                    area = inode_xattrs(tree, ino, self.inline_data)[0]
                pack_inode_into(
                    table,
                    (ino - first) * INODE_SIZE,
                    tree,
                    ino,
                    deep_roots.get(ino),
                    area,
                    xattr_block[ino],
                    extra_blocks[ino],
                )
            self.out.write_at(table_start * BLOCK_SIZE + (first - 1) * INODE_SIZE, table)
        self.out.flush()
        return dirs.tolist(), free_inodes.tolist(), bitmaps

    def _special_inodes(self, deep_roots: dict[int, bytes]) -> bytearray:
        """Mask by inode number of those the C packer leaves to :func:`pack_inode_into`: the
        ones with dictionary data (xattrs, inline data or symlink targets, sparse maps, device
        numbers, extent trees outside the inode)."""
        tree = self.tree
        special = bytearray(tree.count + 1)
        for table in (tree.xattrs, tree.data, tree.runs, tree.rdev, deep_roots):
            for ino in table:
                special[ino] = 1
        return special

    def _account_inodes(  # noqa: PLR0913, PLR0917 - Python twin of _ext4pack.pack_inodes' accounting, same argument order (tests compare both)
        self,
        first: int,
        last: int,
        ipg: int,
        dirs: array[int],
        free_inodes: array[int],
        bitmaps: bytearray,
    ) -> list[int]:
        """Count inodes ``[first, last)`` in the group totals and bitmaps; returns the live ones
        (the pure-Python side of ``_ext4pack.pack_inodes``, which packs nothing itself)."""
        tree = self.tree
        mode = tree.mode
        live = []
        for ino in range(first, last):
            g, index = divmod(ino - 1, ipg)
            if mode[ino]:
                if ino in tree.children:
                    dirs[g] += 1
                live.append(ino)
            elif ino >= LOST_AND_FOUND_INO:
                continue  # free: left zero
            # (reserved inodes 1..10 are in use and empty)
            bitmaps[g * BLOCK_SIZE + (index >> 3)] |= 1 << (index & 7)
            free_inodes[g] -= 1
        return live

    def _write_bitmaps(self, layout: _Layout, inode_bitmaps: bytearray) -> list[int]:
        """Block and inode bitmaps, interleaved per group; returns free blocks per group."""
        groups, blocks_count, bitmap_start = layout.groups, layout.blocks_count, layout.bitmap_start
        used_end = layout.used_end
        gdt_blocks = -(-groups // DESCS_PER_BLOCK)
        bits = bytearray(groups * BLOCK_SIZE)
        _set_range(bits, 0, 1 + gdt_blocks, True)
        _set_range(bits, self.first_data_block, used_end, True)
        for start, count in self.freed:
            _set_range(bits, start, start + count, False)
        _set_range(bits, blocks_count, groups * BLOCKS_PER_GROUP, True)  # past the end
        free_blocks = []
        for g in range(groups):
            piece = bits[g * BLOCK_SIZE : (g + 1) * BLOCK_SIZE]
            self.out.write_at((bitmap_start + 2 * g) * BLOCK_SIZE, piece)
            inode_bitmap = inode_bitmaps[g * BLOCK_SIZE : (g + 1) * BLOCK_SIZE]
            self.out.write_at((bitmap_start + 2 * g + 1) * BLOCK_SIZE, inode_bitmap)
            free_blocks.append(BLOCKS_PER_GROUP - int.from_bytes(piece, "little").bit_count())
        return free_blocks

    def _write_descriptors(
        self, layout: _Layout, free_blocks: list[int], free_inodes: list[int], dirs: list[int]
    ) -> None:
        """The group descriptor table, one descriptor per group."""
        groups, bitmap_start = layout.groups, layout.bitmap_start
        table_start, table_blocks = layout.table_start, layout.table_blocks
        gdt = bytearray(-(-groups // DESCS_PER_BLOCK) * BLOCK_SIZE)
        for g in range(groups):
            GROUP_DESC.pack_into(
                gdt,
                g * GROUP_DESC.size,
                bitmap_start + 2 * g,  # bg_block_bitmap_lo
                bitmap_start + 2 * g + 1,  # bg_inode_bitmap_lo
                table_start + g * table_blocks,  # bg_inode_table_lo
                free_blocks[g],
                free_inodes[g],
                dirs[g],
                0,  # bg_flags: no checksums, so no *_UNINIT
                0,
                0,
                0,
                0,
                0,
            )
        self.out.write_at(BLOCK_SIZE, gdt)

    def _dirents(self, ino: int, parent: int) -> list[tuple[int, int, bytes]]:
        tree = self.tree
        mode = tree.mode
        entries = [(ino, FileType.DIR, b"."), (parent, FileType.DIR, b"..")]
        for name, child in tree.children[ino].items():
            entries.append((child, _FTYPE[stat.S_IFMT(mode[child])], name))
        return entries

    def _geometry(self, meta_end: int, inodes_needed: int) -> tuple[int, int]:
        """Smallest group count (then inodes per group) that fits blocks and inodes."""
        groups = max(1, -(-meta_end // BLOCKS_PER_GROUP))
        max_groups = self.gdt_reserved * DESCS_PER_BLOCK
        while groups <= max_groups:
            ipg = max(16, _round_up(-(-inodes_needed // groups), 16))
            if ipg <= BLOCKS_PER_GROUP:
                used_end = meta_end + groups * (ipg // INODES_PER_BLOCK) + 2 * groups
                if used_end <= groups * BLOCKS_PER_GROUP:
                    return groups, ipg
            groups += 1
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
