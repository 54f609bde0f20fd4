"""ext4 reader: the filesystem's metadata primitives (SPEC §6.1-§6.3).

:class:`Volume` is the base every part of the reader stands on: it checks the superblock once,
then reads blocks, group descriptors and inodes and maps a file's logical blocks to disk
blocks (:meth:`Volume.data_runs`). The other reader modules (file contents, directories,
lookups, walks, scans) are functions over a :class:`Volume`; the facade
:class:`~lcow.formats.ext4.reader.Ext4Reader` is a :class:`Volume` that gathers them as methods.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import Self

from lcow.errors import CorruptImage
from lcow.formats.ext4 import read_csum
from lcow.formats.ext4.layout import (
    SUPERBLOCK_OFFSET,
    SUPERBLOCK_SIZE,
    IncompatFeature,
    RoCompatFeature,
)
from lcow.formats.ext4.read_extents import (
    MAX_LOGICAL_BLOCKS,
    DataRun,
    MapContext,
    blockmap_max_blocks,
    blockmap_runs,
    extent_runs,
    simple_extent_runs,
)
from lcow.formats.ext4.read_inode import Inode, parse_inode
from lcow.formats.ext4.read_itable import InodeTable
from lcow.formats.ext4.read_super import (
    GroupDesc,
    group_desc_offset,
    parse_group_desc,
    parse_superblock,
)
from lcow.formats.ext4.read_types import ReadLimits
from lcow.formats.source import ByteSource, ContainerKind, open_source

__all__ = ["Volume", "corrupt", "is_fast_symlink", "subject_of", "where"]


def where(vol: Volume, ino: int, path: bytes | None = None) -> str:
    """The subject of a message about inode ``ino``: image, inode, and path when known."""
    if path is None:
        return f"{vol.name}: inode {ino}"
    return f"{vol.name}: inode {ino} ({os.fsdecode(path)})"


def subject_of(ino: int, path: bytes | None) -> str:
    """What an error about inode ``ino`` names as its subject: the path, else the inode."""
    return os.fsdecode(path) if path is not None else f"inode {ino}"


def corrupt(vol: Volume, ino: int, path: bytes | None, what: str) -> CorruptImage:
    """The error for damage ``what`` found at inode ``ino`` (reached at ``path``)."""
    return CorruptImage(f"{where(vol, ino, path)}: {what}", subject=subject_of(ino, path))


def is_fast_symlink(vol: Volume, inode: Inode) -> bool:
    """Whether ``inode`` is a symlink whose target lives in ``i_block`` (no data blocks)."""
    ea_blocks = vol.superblock.cluster_size // 512 if inode.file_acl else 0
    return inode.is_symlink and not inode.has_inline_data and inode.blocks - ea_blocks == 0


class Volume:
    """A read-only ext4 filesystem: superblock, group descriptors, blocks, inodes, mappings.

    Attributes:
        source: the virtual disk.
        name: the image's name, for messages.
        verify_checksums: whether checksums of what is read are verified.
        limits: walk and size limits.
        superblock: the checked superblock.
        block_size: bytes per block.
        inode_table: the bulk reader of the inode tables.
        csum_seed: the ``metadata_csum`` seed (0 without the feature).
        verify_metadata: ``metadata_csum`` checksums are verified.
        dir_filetype: directory records carry a file type (``filetype`` feature).
        inline_data_feature: the ``inline_data`` feature is on.
    """

    def __init__(
        self,
        source: ByteSource,
        *,
        verify_checksums: bool = False,
        limits: ReadLimits | None = None,
        close_source: bool = False,
    ) -> None:
        """Check the superblock of the filesystem in ``source``.

        Args:
            source: the virtual disk holding the filesystem.
            verify_checksums: verify ``metadata_csum``/``gdt_csum`` checksums of everything read.
            limits: walk and size limits; defaults when ``None``.
            close_source: close ``source`` in :meth:`close`.

        Raises:
            CorruptImage: not ext2/3/4, or an impossible superblock.
            NotSupported: an unsupported feature or a journal needing recovery.
        """
        self.source = source
        self.name = source.name
        self.verify_checksums = verify_checksums
        self.limits = limits or ReadLimits()
        self._close_source = close_source
        if source.size < SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE:
            raise CorruptImage(f"{self.name}: too small for an ext4 filesystem", subject=self.name)
        sb = parse_superblock(
            source.pread(SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE),
            disk_size=source.size,
            name=self.name,
            verify=verify_checksums,
        )
        self.superblock = sb
        self.block_size = sb.block_size
        self.csum_seed = (
            read_csum.fs_csum_seed(sb.s_uuid, sb.s_checksum_seed) if sb.has_metadata_csum else 0
        )
        self.verify_metadata = verify_checksums and sb.has_metadata_csum
        self.dir_filetype = sb.incompat(IncompatFeature.FILETYPE)
        self.inline_data_feature = sb.incompat(IncompatFeature.INLINE_DATA)
        self._huge_file = bool(sb.s_feature_ro_compat & RoCompatFeature.HUGE_FILE)
        self._bit64 = sb.incompat(IncompatFeature.BIT64)
        self._groups: dict[int, GroupDesc] = {}
        self._inode_size = sb.s_inode_size
        self.inode_table = InodeTable(source, sb, self.group_desc, self._corrupt)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        kind: ContainerKind | None = None,
        verify_checksums: bool = False,
        limits: ReadLimits | None = None,
    ) -> Self:
        """Open an image file (raw, fixed VHD or VHDX, detected unless ``kind`` is given).

        Raises:
            CorruptImage: damaged container or filesystem.
            NotSupported: unsupported container variant or filesystem feature.
            OSError: the file cannot be opened.
        """
        source = open_source(path, kind=kind)
        try:
            return cls(source, verify_checksums=verify_checksums, limits=limits, close_source=True)
        except BaseException:
            source.close()
            raise

    def close(self) -> None:
        """Close the source if this reader owns it."""
        if self._close_source:
            self.source.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _corrupt(self, ino: int, path: bytes | None, what: str) -> CorruptImage:
        return corrupt(self, ino, path, what)

    def read_block(self, block: int) -> bytes:
        """Read one filesystem block.

        Raises:
            CorruptImage: ``block`` is outside the filesystem.
        """
        if not 0 <= block < self.superblock.s_blocks_count:
            raise CorruptImage(
                f"{self.name}: block {block} is outside the filesystem "
                f"({self.superblock.s_blocks_count} blocks)",
                subject=self.name,
            )
        return self.source.pread(block * self.block_size, self.block_size)

    def group_desc(self, group: int) -> GroupDesc:
        """The descriptor of block group ``group`` (cached)."""
        desc = self._groups.get(group)
        if desc is None:
            sb = self.superblock
            if not 0 <= group < sb.group_count:
                raise CorruptImage(f"{self.name}: group {group} does not exist", subject=self.name)
            raw = self.source.pread(group_desc_offset(sb, group), sb.s_desc_size)
            desc = parse_group_desc(
                sb,
                group,
                raw,
                name=self.name,
                verify=self.verify_checksums,
                csum_seed=self.csum_seed,
            )
            self._groups[group] = desc
        return desc

    def inode(self, ino: int, *, path: bytes | None = None) -> Inode:
        """Decode inode ``ino`` (used or not).

        Args:
            ino: inode number.
            path: a path naming it, for error messages.

        Raises:
            CorruptImage: number out of range, uninitialised inode table, bad inode.
        """
        data, offset = self.inode_table.slot(ino, path)
        return parse_inode(
            ino,
            data[offset : offset + self._inode_size],
            huge_file=self._huge_file,
            bit64=self._bit64,
            block_size=self.block_size,
            verify_seed=self.csum_seed if self.verify_metadata else None,
            image=self.name,
            path=path,
        )

    def used_inode(self, ino: int, *, path: bytes | None) -> Inode:
        """Decode inode ``ino`` reached from a directory entry: it must be in use.

        Raises:
            CorruptImage: see :meth:`inode`; an unused inode; inline data without the feature.
        """
        inode = self.inode(ino, path=path)
        if inode.mode == 0 or inode.nlink == 0:
            raise self._corrupt(ino, path, "a directory entry points at an unused inode")
        if inode.has_inline_data and not self.inline_data_feature:
            raise self._corrupt(ino, path, "inline data flag without the inline_data feature")
        return inode

    def _map_context(self, inode: Inode, path: bytes | None) -> MapContext:
        verify = None
        if self.verify_metadata:
            iseed = read_csum.inode_csum_seed(self.csum_seed, inode.ino, inode.generation)

            def verify(block_nr: int, block: bytes, tail: int) -> None:
                stored = int.from_bytes(block[tail : tail + 4], "little")
                computed = read_csum.crc32c_raw(iseed, block[:tail])
                if stored != computed:
                    raise self._corrupt(
                        inode.ino,
                        path,
                        f"extent block {block_nr} checksum mismatch (stored {stored:#010x}, "
                        f"computed {computed:#010x})",
                    )

        return MapContext(
            ino=inode.ino,
            image=self.name,
            path=path,
            block_size=self.block_size,
            blocks_count=self.superblock.s_blocks_count,
            first_data_block=self.superblock.s_first_data_block,
            read_block=self.read_block,
            verify_extent_block=verify,
        )

    def _has_no_data(self, inode: Inode) -> bool:
        fmt = inode.file_type
        if fmt in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            return True
        return inode.has_inline_data or is_fast_symlink(self, inode)

    def data_runs(self, inode: Inode, *, path: bytes | None = None) -> Iterator[DataRun]:
        """Block runs of a file's data, tiling ``[0, ceil(size / block_size))``.

        Inline data, fast symlinks, devices, FIFOs and sockets have no runs.

        Args:
            inode: the file.
            path: for error messages.

        Yields:
            ``DataRun(logical, physical or None, length)`` in logical order (blocks).

        Raises:
            CorruptImage: a size the mapping cannot address, or a bad mapping.
        """
        if self._has_no_data(inode):
            return iter(())
        nblocks = -(-inode.size // self.block_size)
        if inode.has_extents:
            if nblocks > MAX_LOGICAL_BLOCKS:
                raise self._corrupt(inode.ino, path, f"size {inode.size} exceeds extent reach")
            sb = self.superblock
            runs = simple_extent_runs(
                inode.i_block, nblocks, sb.s_blocks_count, sb.s_first_data_block
            )
            if runs is not None:
                return iter(runs)
            return extent_runs(self._map_context(inode, path), inode.i_block, nblocks)
        ctx = self._map_context(inode, path)
        if nblocks > blockmap_max_blocks(self.block_size):
            raise self._corrupt(inode.ino, path, f"size {inode.size} exceeds block-map reach")
        return blockmap_runs(ctx, inode.i_block, nblocks)
