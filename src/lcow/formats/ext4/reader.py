"""Read-only ext4 reader for layer images (SPEC §6; issue 3).

:class:`Ext4Reader` reads every image the project meets — lcow's and tar2ext4's writers,
``mke2fs -d`` and the kernel — from a :class:`~lcow.formats.source.ByteSource` (raw file, fixed
VHD, dynamic VHDX, memory). It supports 1-64 KiB blocks, 32- and 64-byte group descriptors
(``64bit``, ``meta_bg``, ``flex_bg``), 128-byte and larger inodes, ``huge_file``, extent trees of
any depth and ext2/3 block maps, inline data (files, directories, symlinks), linear and htree
directories, in-inode, external-block and EA-inode xattrs, fast and slow symlinks and devices;
with ``verify_checksums=True`` every ``metadata_csum`` (or ``gdt_csum``) checksum it passes is
checked.

The reader is built for hostile input: the superblock is checked eagerly, every structure is
bounds-checked before use, a walk keeps a set of visited directories (no loops) and of directory
blocks (no shared blocks), limits its depth and the size of each directory
(:class:`ReadLimits`), and reads each metadata block a bounded number of times; a lookup, which
sees one path and not the whole tree, checks every directory it enters against that
directory's ``..`` (:meth:`Ext4Reader.check_subdir`), so it cannot loop either. Damage raises
:class:`~lcow.errors.CorruptImage` naming the image, inode and path; limits raise
:class:`~lcow.errors.LimitExceeded`; refused features :class:`~lcow.errors.NotSupported`.

Layer export (Diff) builds on :meth:`Ext4Reader.walk_inodes` (every entry's inode),
:meth:`Ext4Reader.open_file` (contents) and :meth:`Ext4Reader.spans` (where the bytes sit in the
host file, for ``os.copy_file_range``); Changes and DiffSize on the lean metadata scan of
:mod:`lcow.formats.ext4.read_scan` (:meth:`Ext4Reader.scan`, :meth:`Ext4Reader.scan_dir`,
:meth:`Ext4Reader.content_size`). Inodes are read a chunk of inode table at a time
(:mod:`lcow.formats.ext4.read_itable`), directories a run of blocks at a time
(:mod:`lcow.formats.ext4.read_listing`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from lcow._util.escape import quoted
from lcow.errors import CorruptImage, InvalidArgument, LimitExceeded, NotFound
from lcow.formats.ext4 import read_csum, read_listing, read_scan
from lcow.formats.ext4.layout import (
    EXT4_XATTR_MAGIC,
    ROOT_INO,
    SUPERBLOCK_OFFSET,
    SUPERBLOCK_SIZE,
    IncompatFeature,
    InodeFlag,
    RoCompatFeature,
)
from lcow.formats.ext4.read_dirs import (
    DirEntry,
    parse_dir_region,
    parse_inline_dir,
)
from lcow.formats.ext4.read_dirs import verify_dir_block as _verify_dir_block
from lcow.formats.ext4.read_extents import (
    MAX_LOGICAL_BLOCKS,
    DataRun,
    MapContext,
    blockmap_max_blocks,
    blockmap_runs,
    extent_runs,
    simple_extent_runs,
)
from lcow.formats.ext4.read_file import FileReader, FileSegment
from lcow.formats.ext4.read_inode import Inode, parse_inode
from lcow.formats.ext4.read_itable import InodeTable
from lcow.formats.ext4.read_super import (
    GroupDesc,
    Superblock,
    group_desc_offset,
    parse_group_desc,
    parse_superblock,
)
from lcow.formats.ext4.read_types import ByteSpan, Entry, ReadLimits, ScanEntry
from lcow.formats.ext4.read_xattrs import (
    INLINE_DATA_INDEX,
    INLINE_DATA_NAME,
    XATTR_SIZE_MAX,
    RawXattr,
    acl_disk_to_xattr,
    full_name,
    is_acl_index,
    parse_block_xattrs,
    parse_inode_xattrs,
)
from lcow.formats.source import ByteSource, ContainerKind, open_source

__all__ = [
    "ByteSpan",
    "DataRun",
    "DirEntry",
    "Entry",
    "Ext4Reader",
    "FileReader",
    "Inode",
    "ReadLimits",
    "ScanEntry",
    "Superblock",
]

_FAST_SYMLINK_SIZE = 60  # a target shorter than i_block (EXT4_N_BLOCKS * 4) may live in it
_INLINE_IBLOCK = 60
_XATTR_MAGIC_BYTES = EXT4_XATTR_MAGIC.to_bytes(4, "little")
_INDEX_FL = int(InodeFlag.INDEX)
_EA_INODE_FL = int(InodeFlag.EA_INODE)
_PATH_MAX = 4096


class Ext4Reader:
    """A read-only view of an ext4 filesystem."""

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
        self._seed = (
            read_csum.fs_csum_seed(sb.s_uuid, sb.s_checksum_seed) if sb.has_metadata_csum else 0
        )
        self._verify_meta = verify_checksums and sb.has_metadata_csum
        self._huge_file = bool(sb.s_feature_ro_compat & RoCompatFeature.HUGE_FILE)
        self._bit64 = sb.incompat(IncompatFeature.BIT64)
        self._filetype = sb.incompat(IncompatFeature.FILETYPE)
        self._inline = sb.incompat(IncompatFeature.INLINE_DATA)
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
    ) -> Ext4Reader:
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

    def __enter__(self) -> Ext4Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- low level ------------------------------------------------------------------------

    def _where(self, ino: int, path: bytes | None = None) -> str:
        if path is None:
            return f"{self.name}: inode {ino}"
        return f"{self.name}: inode {ino} ({os.fsdecode(path)})"

    def _corrupt(self, ino: int, path: bytes | None, what: str) -> CorruptImage:
        subject = os.fsdecode(path) if path is not None else f"inode {ino}"
        return CorruptImage(f"{self._where(ino, path)}: {what}", subject=subject)

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
                csum_seed=self._seed,
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
            verify_seed=self._seed if self._verify_meta else None,
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
        if inode.has_inline_data and not self._inline:
            raise self._corrupt(ino, path, "inline data flag without the inline_data feature")
        return inode

    def _map_context(self, inode: Inode, path: bytes | None) -> MapContext:
        verify = None
        if self._verify_meta:
            iseed = read_csum.inode_csum_seed(self._seed, inode.ino, inode.generation)

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

    # -- data -----------------------------------------------------------------------------

    def _is_fast_symlink(self, inode: Inode) -> bool:
        ea_blocks = self.superblock.cluster_size // 512 if inode.file_acl else 0
        return inode.is_symlink and not inode.has_inline_data and inode.blocks - ea_blocks == 0

    def _has_no_data(self, inode: Inode) -> bool:
        fmt = inode.file_type
        if fmt in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            return True
        return inode.has_inline_data or self._is_fast_symlink(inode)

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

    def _system_data(self, inode: Inode, path: bytes | None) -> bytes:
        where = self._where(inode.ino, path)
        for item in parse_inode_xattrs(inode.xattr_area, where=where, subject=where):
            if item.name_index == INLINE_DATA_INDEX and item.name == INLINE_DATA_NAME:
                if item.value_inum:
                    raise self._corrupt(inode.ino, path, "system.data lives in an EA inode")
                return item.value
        return b""

    def inline_data(self, inode: Inode, *, path: bytes | None = None) -> bytes:
        """The ``i_size`` bytes of an inline-data inode (``i_block`` then ``system.data``).

        Raises:
            CorruptImage: the inode is not inline, or its size exceeds the stored bytes.
        """
        if not inode.has_inline_data:
            raise InvalidArgument(f"{self._where(inode.ino, path)}: has no inline data")
        data = inode.i_block + self._system_data(inode, path)
        if inode.size > len(data):
            raise self._corrupt(
                inode.ino, path, f"inline size {inode.size} exceeds the {len(data)} stored bytes"
            )
        return data[: inode.size]

    def _segments(self, inode: Inode, path: bytes | None) -> Iterator[FileSegment]:
        if not (inode.is_reg or inode.is_symlink or inode.is_dir):
            return
        if inode.has_inline_data:
            data = self.inline_data(inode, path=path)
            if data:
                yield FileSegment(0, len(data), None, data)
            return
        if self._is_fast_symlink(inode):
            target = self.readlink(inode, path=path)
            yield FileSegment(0, len(target), None, target)
            return
        bs = self.block_size
        for run in self.data_runs(inode, path=path):
            offset = run.logical * bs
            length = min(run.length * bs, inode.size - offset)
            image = None if run.physical is None else run.physical * bs
            yield FileSegment(offset, length, image, None)

    def spans(self, inode: Inode, *, path: bytes | None = None) -> Iterator[ByteSpan]:
        """Where each byte of a file's contents lives, in file order, covering ``[0, size)``.

        Stored ranges are translated through the container (VHDX blocks may be absent), so
        ``host_offset`` can be handed to ``os.copy_file_range`` with ``source.fileno()``.

        Raises:
            CorruptImage: a bad mapping (see :meth:`data_runs`).
        """
        for seg in self._segments(inode, path):
            if seg.image_offset is None:
                yield ByteSpan(seg.offset, seg.length, None, seg.data)
                continue
            offset = seg.offset
            for host, length in self.source.host_ranges(seg.image_offset, seg.length):
                yield ByteSpan(offset, length, host, None)
                offset += length

    def open_file(self, inode: Inode, *, path: bytes | None = None) -> FileReader:
        """A seekable binary reader over a file's contents (regular file, symlink, directory).

        Raises:
            CorruptImage: a bad mapping (raised on first read).
        """
        return FileReader(self.source, inode.size, lambda: self._segments(inode, path))

    def read_file(
        self, inode: Inode, *, path: bytes | None = None, max_size: int = 1 << 30
    ) -> bytes:
        """A whole file's contents.

        Raises:
            LimitExceeded: the file is larger than ``max_size``.
            CorruptImage: a bad mapping.
        """
        if inode.size > max_size:
            raise LimitExceeded(
                f"{self._where(inode.ino, path)}: {inode.size} bytes exceed the {max_size}-byte "
                "read limit"
            )
        with self.open_file(inode, path=path) as fh:
            return fh.readall()

    def readlink(self, inode: Inode, *, path: bytes | None = None) -> bytes:
        """A symlink's target.

        Raises:
            InvalidArgument: not a symlink.
            CorruptImage: empty or oversized target, a fast symlink whose size does not fit.
        """
        if not inode.is_symlink:
            raise InvalidArgument(f"{self._where(inode.ino, path)}: not a symlink")
        if inode.size == 0 or inode.size > max(self.block_size, _PATH_MAX):
            raise self._corrupt(inode.ino, path, f"symlink target of {inode.size} bytes")
        if inode.has_inline_data:
            return self.inline_data(inode, path=path)
        if self._is_fast_symlink(inode):
            if inode.size >= _FAST_SYMLINK_SIZE:
                raise self._corrupt(
                    inode.ino, path, f"fast symlink of {inode.size} bytes does not fit i_block"
                )
            return inode.i_block[: inode.size]
        return self.read_file(inode, path=path)

    # -- xattrs ---------------------------------------------------------------------------

    def _raw_xattrs(self, inode: Inode, path: bytes | None) -> list[RawXattr]:
        if not inode.file_acl and inode.xattr_area[:4] != _XATTR_MAGIC_BYTES:
            return []
        where = self._where(inode.ino, path)
        subject = os.fsdecode(path) if path is not None else f"inode {inode.ino}"
        items = parse_inode_xattrs(inode.xattr_area, where=where, subject=subject)
        if inode.file_acl:
            block = self.read_block(inode.file_acl)
            bwhere = f"{where}: xattr block {inode.file_acl}"
            if self._verify_meta:
                stored = int.from_bytes(block[16:20], "little")
                computed = read_csum.xattr_block_csum(self._seed, inode.file_acl, block)
                if stored != computed:
                    raise CorruptImage(
                        f"{bwhere}: checksum mismatch (stored {stored:#010x}, computed "
                        f"{computed:#010x})",
                        subject=subject,
                    )
            items += parse_block_xattrs(block, where=bwhere, subject=subject)
        return items

    def xattrs(self, inode: Inode, *, path: bytes | None = None) -> dict[bytes, bytes]:
        """Extended attributes as ``getxattr`` shows them (``system.data`` excluded).

        Raises:
            CorruptImage: malformed entries, a bad EA inode.
            LimitExceeded: values beyond ``limits.max_xattr_bytes``.
        """
        out: dict[bytes, bytes] = {}
        items = self._raw_xattrs(inode, path)
        if not items:
            return out
        total = 0
        where = self._where(inode.ino, path)
        for item in items:
            name = full_name(item.name_index, item.name)
            inline = item.name_index == INLINE_DATA_INDEX and item.name == INLINE_DATA_NAME
            if name is None or inline:
                continue
            total += item.value_size
            if total > self.limits.max_xattr_bytes:
                raise LimitExceeded(f"{where}: xattr values exceed {self.limits.max_xattr_bytes}")
            value = item.value
            if item.value_inum:
                value = self._ea_inode_value(inode, item, path)
            if is_acl_index(item.name_index):
                value = acl_disk_to_xattr(value, where=where, subject=where)
            out[name] = value
        return out

    def _ea_inode_value(self, owner: Inode, item: RawXattr, path: bytes | None) -> bytes:
        ea = self.inode(item.value_inum, path=path)
        if (
            not ea.flags & _EA_INODE_FL
            or not ea.is_reg
            or ea.size != item.value_size
            or ea.has_inline_data
        ):
            raise self._corrupt(
                owner.ino, path, f"xattr value inode {item.value_inum} is not a matching EA inode"
            )
        return self.read_file(ea, path=path, max_size=XATTR_SIZE_MAX)

    # -- directories ----------------------------------------------------------------------

    def iterdir(
        self, inode: Inode, *, path: bytes | None = None, seen_blocks: set[int] | None = None
    ) -> Iterator[DirEntry]:
        """Live entries of a directory in on-disk order, without ``.`` and ``..``.

        Args:
            inode: the directory.
            path: its path, for error messages.
            seen_blocks: directory blocks already read in this walk; a block read twice is
                corruption (two directories sharing a block). ``None`` not to track.

        Raises:
            InvalidArgument: not a directory.
            LimitExceeded: the directory is larger than ``limits.max_dir_size``.
            CorruptImage: bad records or mapping.
        """
        if not inode.is_dir:
            raise InvalidArgument(f"{self._where(inode.ino, path)}: not a directory")
        if inode.size > self.limits.max_dir_size:
            raise LimitExceeded(
                f"{self._where(inode.ino, path)}: directory of {inode.size} bytes exceeds the "
                f"{self.limits.max_dir_size}-byte limit"
            )
        where = self._where(inode.ino, path)
        subject = os.fsdecode(path) if path is not None else f"inode {inode.ino}"
        sb = self.superblock
        if inode.has_inline_data:
            entries = parse_inline_dir(
                inode.i_block[:_INLINE_IBLOCK],
                self._system_data(inode, path),
                where=f"{where}: inline directory",
                subject=subject,
                block_size=self.block_size,
                inodes_count=sb.s_inodes_count,
                has_filetype=self._filetype,
            )
            yield from (e for e in entries if e.name not in (b".", b".."))
            return
        indexed = bool(inode.flags & _INDEX_FL)
        iseed = (
            read_csum.inode_csum_seed(self._seed, inode.ino, inode.generation)
            if self._verify_meta
            else 0
        )
        for run in self.data_runs(inode, path=path):
            if run.physical is None:
                continue
            for i in range(run.length):
                block_nr = run.physical + i
                if seen_blocks is not None:
                    if block_nr in seen_blocks:
                        raise self._corrupt(
                            inode.ino, path, f"directory block {block_nr} is used twice"
                        )
                    seen_blocks.add(block_nr)
                block = self.read_block(block_nr)
                bwhere = f"{where}: directory block {run.logical + i}"
                if self._verify_meta:
                    _verify_dir_block(block, iseed, indexed=indexed, where=bwhere, subject=subject)
                for entry in parse_dir_region(
                    block,
                    where=bwhere,
                    subject=subject,
                    block_size=self.block_size,
                    inodes_count=sb.s_inodes_count,
                    has_filetype=self._filetype,
                ):
                    if entry.name not in (b".", b".."):
                        yield entry

    def listdir(
        self, inode: Inode, *, path: bytes | None = None, seen_blocks: set[int] | None = None
    ) -> list[DirEntry]:
        """Entries of a directory sorted by name (see :meth:`iterdir`).

        Raises:
            CorruptImage: duplicate names, or see :meth:`iterdir`.
            LimitExceeded: more than ``limits.max_dir_entries`` entries.
        """
        entries: dict[bytes, DirEntry] = {}
        for entry in self.iterdir(inode, path=path, seen_blocks=seen_blocks):
            if entry.name in entries:
                raise self._corrupt(inode.ino, path, f"name {quoted(entry.name)} appears twice")
            if len(entries) >= self.limits.max_dir_entries:
                raise LimitExceeded(
                    f"{self._where(inode.ino, path)}: more than {self.limits.max_dir_entries} "
                    "entries"
                )
            entries[entry.name] = entry
        return [entries[name] for name in sorted(entries)]

    def lookup(self, path: bytes) -> Inode:
        """The inode at ``path`` (absolute or relative to the root; symlinks not followed).

        Raises:
            NotFound: a component is missing or not a directory.
            CorruptImage: damage on the way.
        """
        root = self.used_inode(ROOT_INO, path=b"/")
        if not root.is_dir:
            raise self._corrupt(ROOT_INO, b"/", "the root inode is not a directory")
        inodes = [root]
        walked = b""
        for part in path.split(b"/"):
            if part in (b"", b"."):
                continue
            if part == b"..":
                if len(inodes) > 1:
                    inodes.pop()
                    walked = walked.rsplit(b"/", 1)[0]
                continue
            cur = inodes[-1]
            if not cur.is_dir:
                raise NotFound(
                    f"{self.name}: {os.fsdecode(walked or b'/')} is not a directory",
                    subject=os.fsdecode(path),
                )
            for entry in self.iterdir(cur, path=walked or b"/"):
                if entry.name == part:
                    walked += b"/" + part
                    found = self.used_inode(entry.ino, path=walked)
                    if found.is_dir:
                        self.check_subdir(cur, found, path=walked)
                    inodes.append(found)
                    break
            else:
                raise NotFound(
                    f"{self.name}: {os.fsdecode(walked + b'/' + part)} does not exist",
                    subject=os.fsdecode(path),
                )
        return inodes[-1]

    def dotdot(self, inode: Inode, *, path: bytes | None = None) -> int:
        """The inode a directory's ``..`` entry names: its parent (the root's is itself).

        Read from the first directory block (or, inline, the first four bytes of ``i_block``).

        Raises:
            InvalidArgument: not a directory.
            CorruptImage: no ``..`` entry where it belongs, or a bad record in that block.
        """
        if not inode.is_dir:
            raise InvalidArgument(f"{self._where(inode.ino, path)}: not a directory")
        where = self._where(inode.ino, path)
        subject = os.fsdecode(path) if path is not None else f"inode {inode.ino}"
        sb = self.superblock
        if inode.has_inline_data:
            entries = parse_inline_dir(
                inode.i_block[:_INLINE_IBLOCK],
                b"",
                where=f"{where}: inline directory",
                subject=subject,
                block_size=self.block_size,
                inodes_count=sb.s_inodes_count,
                has_filetype=self._filetype,
            )
            return next(entries).ino  # the inline parent comes first, checked
        first = next(iter(self.data_runs(inode, path=path)), None)
        if first is not None and first.physical is not None:
            for entry in parse_dir_region(
                self.read_block(first.physical),
                where=f"{where}: directory block 0",
                subject=subject,
                block_size=self.block_size,
                inodes_count=sb.s_inodes_count,
                has_filetype=self._filetype,
            ):
                if entry.name == b"..":
                    return entry.ino
        raise self._corrupt(inode.ino, path, "directory has no '..' entry")

    def check_subdir(self, parent: Inode, child: Inode, *, path: bytes | None = None) -> None:
        """Check a directory reached by a name in directory ``parent``: it must be a child of
        ``parent`` alone.

        A directory has one name (no hard links to directories), so its ``..`` names the one
        directory holding it and it is never the root. A path resolved through checked steps
        therefore never loops, whatever the image holds: this is how lookups that see one path,
        not the whole tree, stop at a directory loop or a hard-linked directory (whole walks
        also keep a set of the directories they entered).

        Args:
            parent: the directory the name was found in.
            child: the directory the name points at.
            path: the child's path, for the message.

        Raises:
            CorruptImage: ``child`` is the root, or its ``..`` names another directory (a loop,
                or a second name of a directory); see also :meth:`dotdot`.
        """
        if child.ino == ROOT_INO:
            raise self._corrupt(child.ino, path, "the root directory reached again (loop)")
        up = self.dotdot(child, path=path)
        if up != parent.ino:
            raise self._corrupt(
                child.ino,
                path,
                f"directory reached twice (loop or second name): its '..' is inode {up}, "
                f"not inode {parent.ino} it was reached from",
            )

    # -- walk -----------------------------------------------------------------------------

    def children(
        self, inode: Inode, *, path: bytes, seen_blocks: set[int]
    ) -> list[tuple[bytes, int]]:
        """``(name, ino)`` of a directory's entries sorted by name: :meth:`listdir` for walks.

        Same checks and errors as :meth:`listdir`, but directory blocks are read a run at a
        time and records parsed without building :class:`DirEntry` objects.

        Args:
            inode: the directory.
            path: its path, for error messages.
            seen_blocks: directory blocks already read in this walk (see :meth:`iterdir`).

        Raises:
            CorruptImage: bad records or mapping, a shared block, duplicate names.
            LimitExceeded: see :meth:`listdir`.
        """
        if inode.has_inline_data or self._verify_meta or inode.size > self.limits.max_dir_size:
            listing = self.listdir(inode, path=path, seen_blocks=seen_blocks)
            return [(e.name, e.ino) for e in listing]
        if not inode.is_dir:
            raise InvalidArgument(f"{self._where(inode.ino, path)}: not a directory")
        runs = self.data_runs(inode, path=path)
        return read_listing.list_names(
            self, runs, ino=inode.ino, path=path, seen_blocks=seen_blocks
        )

    def entry(self, inode: Inode, path: bytes, *, xattrs: bool = True) -> Entry:
        """Build the :class:`Entry` of an inode reached at ``path``.

        Raises:
            CorruptImage: bad symlink target or xattrs.
        """
        return Entry(
            path=path,
            ino=inode.ino,
            mode=inode.mode,
            uid=inode.uid,
            gid=inode.gid,
            size=inode.size,
            nlink=inode.nlink,
            blocks=inode.blocks,
            atime_ns=inode.atime_ns,
            mtime_ns=inode.mtime_ns,
            ctime_ns=inode.ctime_ns,
            crtime_ns=inode.crtime_ns,
            rdev=inode.rdev,
            link_target=self.readlink(inode, path=path) if inode.is_symlink else None,
            xattrs=self.xattrs(inode, path=path) if xattrs else {},
            inode=inode,
        )

    def walk(self, top: bytes = b"/", *, xattrs: bool = True) -> Iterator[Entry]:
        """Every entry under ``top`` (itself first), depth first, children sorted by name.

        Hard links appear once per name with the same ``ino``. The walk is bounded: a
        directory reached twice, a directory block shared by two directories, or nesting
        deeper than ``limits.max_depth`` stops it with an error.

        Args:
            top: directory (or file) to start at.
            xattrs: read extended attributes (cheaper to skip when not needed).

        Yields:
            Entries with absolute paths.

        Raises:
            NotFound: ``top`` does not exist.
            CorruptImage: damage anywhere in the tree, naming inode and path.
            LimitExceeded: a configured limit is hit.
        """
        entry = self.entry
        for path, inode in self.walk_inodes(top):
            yield entry(inode, path, xattrs=xattrs)

    def walk_inodes(self, top: bytes = b"/") -> Iterator[tuple[bytes, Inode]]:
        """``(path, inode)`` of every entry under ``top``: :meth:`walk` without building
        :class:`Entry` objects (no xattrs or link targets read).

        Raises:
            NotFound: ``top`` does not exist.
            CorruptImage: damage anywhere in the tree, naming inode and path.
            LimitExceeded: a configured limit is hit.
        """
        root = self.lookup(top)
        top_path = read_scan.normal_path(top)
        yield top_path, root
        if not root.is_dir:
            return
        seen_dirs = {root.ino}
        seen_blocks: set[int] = set()
        prefix = b"" if top_path == b"/" else top_path
        stack = [(prefix, iter(self.children(root, path=top_path, seen_blocks=seen_blocks)))]
        max_depth = self.limits.max_depth
        used_inode = self.used_inode
        while stack:
            dir_path, listing = stack[-1]
            child = next(listing, None)
            if child is None:
                stack.pop()
                continue
            path = dir_path + b"/" + child[0]
            inode = used_inode(child[1], path=path)
            yield path, inode
            if not inode.is_dir:
                continue
            if inode.ino in seen_dirs:
                raise self._corrupt(inode.ino, path, "directory reached twice (loop)")
            seen_dirs.add(inode.ino)
            if len(stack) >= max_depth:
                raise LimitExceeded(
                    f"{self._where(inode.ino, path)}: nesting deeper than {max_depth} directories"
                )
            stack.append((path, iter(self.children(inode, path=path, seen_blocks=seen_blocks))))

    # -- metadata scan (lcow.formats.ext4.read_scan) -----------------------------------------

    def scan(
        self,
        top: bytes = b"/",
        *,
        capability: bool = False,
        relative: bool = False,
        hide_lost_found: bool = False,
    ) -> Iterator[ScanEntry]:
        """Metadata of every entry under ``top`` (itself first), in :meth:`walk` order, fast.

        What Changes and DiffSize compare, and nothing more (see
        :mod:`lcow.formats.ext4.read_scan`): the inode table is read in bulk and only the
        needed fields are decoded; xattrs are read only for directories (the overlay opaque
        flag) and, with ``capability``, for entries that have any. Symlink targets are not
        read. The same bounds as :meth:`walk` apply.

        Args:
            top: directory (or file) to start at.
            capability: fill :attr:`ScanEntry.capability` (``security.capability``).
            relative: give paths relative to ``top`` in absolute form (``top`` itself is
                ``b"/"``), as a layer whose content lives in ``/upper`` sees them.
            hide_lost_found: leave out ``top``'s ``lost+found`` when it is an empty directory
                (every ext4 root has one; it is not layer content).

        Yields:
            Entries with absolute paths.

        Raises:
            NotFound: ``top`` does not exist.
            CorruptImage: damage anywhere in the tree, naming inode and path.
            LimitExceeded: a configured limit is hit.
        """
        return read_scan.scan(
            self, top, capability=capability, relative=relative, hide_lost_found=hide_lost_found
        )

    def scan_dir(
        self,
        ino: int,
        *,
        path: bytes,
        base: bytes = b"",
        capability: bool = False,
        hide_lost_found: bool = False,
        seen_dirs: set[int],
        seen_blocks: set[int],
    ) -> list[ScanEntry]:
        """Metadata of one directory's entries: :meth:`scan` one level at a time, for callers
        that expand a tree lazily (see :func:`lcow.formats.ext4.read_scan.scan_dir`).

        Raises:
            InvalidArgument: ``ino`` is not a directory.
            CorruptImage: damage in the directory or its entries' inodes.
            LimitExceeded: a configured limit is hit.
        """
        return read_scan.scan_dir(
            self,
            ino,
            path=path,
            base=base,
            capability=capability,
            hide_lost_found=hide_lost_found,
            seen_dirs=seen_dirs,
            seen_blocks=seen_blocks,
        )

    def content_size(self, top: bytes = b"/", *, hide_lost_found: bool = False) -> int:
        """Bytes of the distinct non-directory inodes below ``top`` (hard links once).

        overlay2's DiffSize of a layer whose content is ``top``: the sizes :meth:`scan` would
        report for every non-directory below ``top``, each inode counted once, with the same
        bounds, but without records or order; a name is read (and checked) only where an
        error message needs it, since names do not change a size.

        Args:
            top: the directory whose contents are summed.
            hide_lost_found: leave out ``top``'s ``lost+found`` when it is an empty directory.

        Raises:
            NotFound: ``top`` does not exist.
            CorruptImage: damage anywhere in the tree, naming inode and path.
            LimitExceeded: a configured limit is hit.
        """
        return read_scan.content_size(self, top, hide_lost_found=hide_lost_found)
