"""ext4 reader: superblock checks and group descriptors (SPEC §6.1; kernel ``ext4_fill_super``).

The superblock is checked eagerly and strictly — magic, block size, group geometry, the block
count against the size of the disk, descriptor size — and feature flags are screened: unknown
incompatible features, encryption, compression, ``dirdata`` and external journal devices are
refused with :class:`UnsupportedFeature`; a journal that needs recovery (``RECOVER``) with
:class:`JournalNeedsRecovery`. Read-only-compatible features never stop a reader.

Group descriptors (32-byte, or ``s_desc_size`` bytes with ``64bit``; ``meta_bg`` placement too)
are located here and parsed on demand.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from lcow.errors import CorruptImage, NotSupported
from lcow.formats.ext4 import read_csum
from lcow.formats.ext4.layout import (
    EXT4_SUPER_MAGIC,
    GROUP_DESC,
    SUPERBLOCK,
    SUPERBLOCK_FIELD_NAMES,
    SUPERBLOCK_SIZE,
    CompatFeature,
    IncompatFeature,
    RoCompatFeature,
)

__all__ = [
    "SUPPORTED_INCOMPAT",
    "GroupDesc",
    "JournalNeedsRecovery",
    "Superblock",
    "UnsupportedFeature",
    "group_desc_offset",
    "parse_group_desc",
    "parse_superblock",
]

# Features a read-only walk handles. MMP only matters to writers; CSUM_SEED changes the seed;
# CASEFOLD only changes htree hashing, which a linear read does not use.
SUPPORTED_INCOMPAT = (
    IncompatFeature.FILETYPE
    | IncompatFeature.EXTENTS
    | IncompatFeature.BIT64
    | IncompatFeature.FLEX_BG
    | IncompatFeature.META_BG
    | IncompatFeature.MMP
    | IncompatFeature.EA_INODE
    | IncompatFeature.CSUM_SEED
    | IncompatFeature.LARGEDIR
    | IncompatFeature.INLINE_DATA
    | IncompatFeature.CASEFOLD
)

_S_CHECKSUM_TYPE_CRC32C = 1
_S_CHECKSUM_SEED_OFFSET = 0x270
_S_CHECKSUM_OFFSET = 0x3FC
_EXT4_MIN_DESC_SIZE_64BIT = 64
_EXT4_MAX_DESC_SIZE = 1024
_EXT4_GOOD_OLD_REV = 0
_EXT4_GOOD_OLD_INODE_SIZE = 128
_EXT4_GOOD_OLD_FIRST_INO = 11
_MAX_LOG_BLOCK_SIZE = 6  # 64 KiB
_MAX_LOG_CLUSTER_SIZE = 19  # 512 MiB, the kernel's limit for bigalloc clusters
_BG_INODE_UNINIT = 0x1
# struct ext4_group_desc, high halves (64bit): bg_block_bitmap_hi, bg_inode_bitmap_hi,
# bg_inode_table_hi, bg_free_blocks_count_hi, bg_free_inodes_count_hi, bg_used_dirs_count_hi,
# bg_itable_unused_hi, bg_exclude_bitmap_hi, bg_block_bitmap_csum_hi, bg_inode_bitmap_csum_hi,
# bg_reserved.
_GROUP_DESC_HI = struct.Struct("<IIIHHHHIHHI")


class UnsupportedFeature(NotSupported):
    """The filesystem uses an incompatible feature the reader does not implement."""


class JournalNeedsRecovery(NotSupported):
    """The journal holds transactions that were never checkpointed (``RECOVER`` is set).

    Reading without replaying them would show a stale filesystem; run ``e2fsck`` (or mount it
    once read-write) first.
    """


@dataclass(frozen=True)
class Superblock:
    """The superblock fields the reader uses, with kernel names, plus derived geometry.

    Attributes:
        s_inodes_count: inodes in the filesystem.
        s_blocks_count: blocks (``_lo`` and, with ``64bit``, ``_hi``).
        s_first_data_block: block holding the superblock (1 for 1 KiB blocks, else 0).
        s_log_block_size: block size is ``1024 << s_log_block_size``.
        s_blocks_per_group: blocks per group.
        s_inodes_per_group: inodes per group.
        s_rev_level: 0 (fixed 128-byte inodes) or 1 (dynamic).
        s_first_ino: first non-reserved inode.
        s_inode_size: bytes per on-disk inode.
        s_feature_compat: compatible features.
        s_feature_incompat: incompatible features.
        s_feature_ro_compat: read-only-compatible features.
        s_uuid: filesystem UUID.
        s_desc_size: bytes per group descriptor.
        s_first_meta_bg: first meta block group (``meta_bg``).
        s_backup_bgs: the two backup groups of ``sparse_super2``.
        s_checksum_seed: ``s_checksum_seed`` when ``CSUM_SEED`` is set, else ``None``.
        s_checksum: stored superblock checksum.
        block_size: bytes per block.
        cluster_size: bytes per allocation cluster (the block size without ``bigalloc``).
        group_count: number of block groups.
        raw: the 1024 superblock bytes.
    """

    s_inodes_count: int
    s_blocks_count: int
    s_first_data_block: int
    s_log_block_size: int
    s_blocks_per_group: int
    s_inodes_per_group: int
    s_rev_level: int
    s_first_ino: int
    s_inode_size: int
    s_feature_compat: CompatFeature
    s_feature_incompat: IncompatFeature
    s_feature_ro_compat: RoCompatFeature
    s_uuid: bytes
    s_desc_size: int
    s_first_meta_bg: int
    s_backup_bgs: tuple[int, int]
    s_checksum_seed: int | None
    s_checksum: int
    block_size: int
    cluster_size: int
    group_count: int
    raw: bytes

    @property
    def has_metadata_csum(self) -> bool:
        """``metadata_csum`` (CRC-32C on every metadata structure) is enabled."""
        return bool(self.s_feature_ro_compat & RoCompatFeature.METADATA_CSUM)

    @property
    def has_gdt_csum(self) -> bool:
        """``uninit_bg`` (CRC-16 group descriptor checksums) is enabled."""
        return bool(self.s_feature_ro_compat & RoCompatFeature.GDT_CSUM)

    def incompat(self, flag: IncompatFeature) -> bool:
        """Whether an incompatible feature is set."""
        return bool(self.s_feature_incompat & flag)

    def has_super(self, group: int) -> bool:
        """Whether ``group`` holds a superblock backup (and so descriptor copies)."""
        if group == 0:
            return True
        if self.s_feature_compat & CompatFeature.SPARSE_SUPER2:
            return group in self.s_backup_bgs
        if group <= 1 or not self.s_feature_ro_compat & RoCompatFeature.SPARSE_SUPER:
            return True
        if not group & 1:
            return False
        return any(_is_power_of(group, base) for base in (3, 5, 7))


def _is_power_of(n: int, base: int) -> bool:
    while n % base == 0:
        n //= base
    return n == 1


def parse_superblock(raw: bytes, *, disk_size: int, name: str, verify: bool) -> Superblock:
    """Check and parse the primary superblock.

    Args:
        raw: the 1024 bytes at byte 1024.
        disk_size: bytes in the virtual disk (the filesystem must fit).
        name: image label for messages.
        verify: verify ``s_checksum`` when ``metadata_csum`` is set.

    Returns:
        The parsed superblock.

    Raises:
        CorruptImage: not ext2/3/4, impossible geometry, checksum mismatch.
        UnsupportedFeature: an incompatible feature the reader cannot handle.
        JournalNeedsRecovery: the journal needs replaying.
    """
    if len(raw) != SUPERBLOCK_SIZE:
        raise CorruptImage(f"{name}: image too small for an ext4 superblock", subject=name)
    f = dict(zip(SUPERBLOCK_FIELD_NAMES, SUPERBLOCK.unpack_from(raw), strict=True))
    if f["s_magic"] != EXT4_SUPER_MAGIC:
        raise _bad(name, f"bad magic {f['s_magic']:#06x} (not an ext2/3/4 filesystem)")
    incompat = IncompatFeature(f["s_feature_incompat"])
    ro_compat = RoCompatFeature(f["s_feature_ro_compat"])
    compat = CompatFeature(f["s_feature_compat"])
    _check_incompat(f["s_feature_incompat"], name)
    block_size, blocks, desc_size = _block_geometry(f, incompat, disk_size=disk_size, name=name)
    bigalloc = bool(ro_compat & RoCompatFeature.BIGALLOC)
    groups = _group_geometry(f, block_size, blocks, bigalloc=bigalloc, name=name)
    inode_size, first_ino = _inode_geometry(f, block_size, name=name)
    seed: int | None = None
    if incompat & IncompatFeature.CSUM_SEED:
        seed = struct.unpack_from("<I", raw, _S_CHECKSUM_SEED_OFFSET)[0]
    checksum = _checked_checksum(raw, f, ro_compat, verify=verify, name=name)
    backup = struct.unpack("<II", f["s_backup_bgs"])
    return Superblock(
        s_inodes_count=f["s_inodes_count"],
        s_blocks_count=blocks,
        s_first_data_block=f["s_first_data_block"],
        s_log_block_size=f["s_log_block_size"],
        s_blocks_per_group=f["s_blocks_per_group"],
        s_inodes_per_group=f["s_inodes_per_group"],
        s_rev_level=f["s_rev_level"],
        s_first_ino=first_ino,
        s_inode_size=inode_size,
        s_feature_compat=compat,
        s_feature_incompat=incompat,
        s_feature_ro_compat=ro_compat,
        s_uuid=f["s_uuid"],
        s_desc_size=desc_size,
        s_first_meta_bg=f["s_first_meta_bg"],
        s_backup_bgs=(backup[0], backup[1]),
        s_checksum_seed=seed,
        s_checksum=checksum,
        block_size=block_size,
        cluster_size=(1024 << f["s_log_cluster_size"]) if bigalloc else block_size,
        group_count=groups,
        raw=raw,
    )


def _bad(name: str, what: str) -> CorruptImage:
    return CorruptImage(f"{name}: ext4 superblock: {what}", subject=name)


def _check_incompat(incompat: int, name: str) -> None:
    """Refuse a filesystem whose incompatible features (raw bits) the reader cannot honour."""
    if incompat & IncompatFeature.RECOVER:
        raise JournalNeedsRecovery(
            f"{name}: ext4 journal needs recovery (RECOVER is set); run e2fsck or mount it "
            "read-write once before reading",
            subject=name,
        )
    if incompat & IncompatFeature.JOURNAL_DEV:
        raise UnsupportedFeature(f"{name}: an external ext4 journal device, not a filesystem")
    unknown = incompat & ~int(SUPPORTED_INCOMPAT)
    if unknown:
        raise UnsupportedFeature(
            f"{name}: ext4 incompatible features not supported: "
            f"{IncompatFeature(unknown)!r} ({unknown:#x})",
            subject=name,
        )


def _block_geometry(
    f: dict[str, Any], incompat: IncompatFeature, *, disk_size: int, name: str
) -> tuple[int, int, int]:
    """``(block_size, blocks_count, desc_size)``, checked against each other and the disk."""
    if f["s_log_block_size"] > _MAX_LOG_BLOCK_SIZE:
        raise _bad(name, f"block size 1024 << {f['s_log_block_size']} is too large")
    block_size = 1024 << f["s_log_block_size"]
    blocks = f["s_blocks_count_lo"]
    if incompat & IncompatFeature.BIT64:
        blocks |= f["s_blocks_count_hi"] << 32
        desc_size = f["s_desc_size"]
        if (
            desc_size < _EXT4_MIN_DESC_SIZE_64BIT
            or desc_size > _EXT4_MAX_DESC_SIZE
            or desc_size & (desc_size - 1)
        ):
            raise _bad(name, f"descriptor size {desc_size} is invalid")
    else:
        desc_size = GROUP_DESC.size
    first_data = f["s_first_data_block"]
    if first_data != (1 if block_size == 1024 else 0):
        raise _bad(name, f"first data block {first_data} does not match block size {block_size}")
    if blocks <= first_data:
        raise _bad(name, f"block count {blocks} is too small")
    if blocks * block_size > disk_size:
        raise _bad(
            name,
            f"block count {blocks} x {block_size} exceeds the disk size {disk_size} "
            "(truncated image?)",
        )
    return block_size, blocks, desc_size


def _group_geometry(
    f: dict[str, Any], block_size: int, blocks: int, *, bigalloc: bool, name: str
) -> int:
    """The group count, after checking the per-group sizes and the inode count."""
    bpg = f["s_blocks_per_group"]
    ipg = f["s_inodes_per_group"]
    if bpg < 8 or (not bigalloc and bpg > 8 * block_size) or bpg % 8:
        raise _bad(name, f"blocks per group {bpg} is invalid")
    if ipg < 1 or ipg > 8 * block_size:
        raise _bad(name, f"inodes per group {ipg} is invalid")
    if bigalloc and not f["s_log_block_size"] <= f["s_log_cluster_size"] <= _MAX_LOG_CLUSTER_SIZE:
        raise _bad(name, f"cluster size 1024 << {f['s_log_cluster_size']} is invalid")
    groups: int = -(-(blocks - f["s_first_data_block"]) // bpg)
    if groups * ipg != f["s_inodes_count"]:
        raise _bad(name, f"inode count {f['s_inodes_count']} != {groups} groups x {ipg} per group")
    return groups


def _inode_geometry(f: dict[str, Any], block_size: int, *, name: str) -> tuple[int, int]:
    """``(inode_size, first_ino)``: fixed by revision 0, stored (and checked) after it."""
    if f["s_rev_level"] == _EXT4_GOOD_OLD_REV:
        inode_size = _EXT4_GOOD_OLD_INODE_SIZE
        first_ino = _EXT4_GOOD_OLD_FIRST_INO
    else:
        inode_size = f["s_inode_size"]
        first_ino = f["s_first_ino"]
        if (
            inode_size < _EXT4_GOOD_OLD_INODE_SIZE
            or inode_size > block_size
            or inode_size & (inode_size - 1)
        ):
            raise _bad(name, f"inode size {inode_size} is invalid")
    if first_ino < _EXT4_GOOD_OLD_FIRST_INO or first_ino > f["s_inodes_count"]:
        raise _bad(name, f"first inode {first_ino} is invalid")
    return inode_size, first_ino


def _checked_checksum(
    raw: bytes, f: dict[str, Any], ro_compat: RoCompatFeature, *, verify: bool, name: str
) -> int:
    """The stored ``s_checksum``, verified when ``metadata_csum`` is set and ``verify``."""
    checksum: int = struct.unpack_from("<I", raw, _S_CHECKSUM_OFFSET)[0]
    if ro_compat & RoCompatFeature.METADATA_CSUM:
        if f["s_checksum_type"] != _S_CHECKSUM_TYPE_CRC32C:
            raise _bad(name, f"checksum type {f['s_checksum_type']} is not crc32c")
        if verify:
            expected = read_csum.superblock_csum(raw)
            if checksum != expected:
                raise _bad(
                    name, f"checksum mismatch (stored {checksum:#010x}, computed {expected:#010x})"
                )
    return checksum


def group_desc_offset(sb: Superblock, group: int) -> int:
    """Byte offset of group ``group``'s descriptor on the disk (handles ``meta_bg``).

    Args:
        sb: the superblock.
        group: group number, ``0 <= group < sb.group_count``.

    Returns:
        The byte offset.
    """
    per_block = sb.block_size // sb.s_desc_size
    desc_block, index = divmod(group, per_block)
    if sb.incompat(IncompatFeature.META_BG) and desc_block >= sb.s_first_meta_bg:
        first_group = desc_block * per_block
        block = (
            sb.s_first_data_block
            + first_group * sb.s_blocks_per_group
            + (1 if sb.has_super(first_group) else 0)
        )
    else:
        block = sb.s_first_data_block + 1 + desc_block
    return block * sb.block_size + index * sb.s_desc_size


@dataclass(frozen=True)
class GroupDesc:
    """The group descriptor fields the reader uses.

    Attributes:
        bg_inode_table: first block of the group's inode table.
        bg_flags: ``EXT4_BG_*`` flags.
        bg_checksum: stored checksum.
    """

    bg_inode_table: int
    bg_flags: int
    bg_checksum: int

    @property
    def inode_uninit(self) -> bool:
        """The inode table was never initialised (``EXT4_BG_INODE_UNINIT``)."""
        return bool(self.bg_flags & _BG_INODE_UNINIT)


def parse_group_desc(  # noqa: PLR0913 - the descriptor's group number and bytes plus keyword-only checksum settings
    sb: Superblock, group: int, raw: bytes, *, name: str, verify: bool, csum_seed: int
) -> GroupDesc:
    """Parse (and optionally verify) one group descriptor.

    Args:
        sb: the superblock.
        group: group number.
        raw: ``sb.s_desc_size`` bytes.
        name: image label for messages.
        verify: check ``bg_checksum`` when the filesystem has descriptor checksums.
        csum_seed: filesystem checksum seed.

    Returns:
        The descriptor.

    Raises:
        CorruptImage: checksum mismatch, or an inode table outside the filesystem.
    """
    fields = GROUP_DESC.unpack_from(raw)
    table = fields[2]
    flags = fields[6]
    checksum = fields[11]
    if sb.s_desc_size >= _EXT4_MIN_DESC_SIZE_64BIT:
        table |= _GROUP_DESC_HI.unpack_from(raw, GROUP_DESC.size)[2] << 32
    if verify and (sb.has_metadata_csum or sb.has_gdt_csum):
        expected = read_csum.group_desc_csum(
            metadata_csum=sb.has_metadata_csum,
            seed=csum_seed,
            uuid=sb.s_uuid,
            group=group,
            desc=raw,
        )
        if checksum != expected:
            raise CorruptImage(
                f"{name}: group {group} descriptor checksum mismatch (stored {checksum:#06x}, "
                f"computed {expected:#06x})",
                subject=name,
            )
    table_blocks = -(-sb.s_inodes_per_group * sb.s_inode_size // sb.block_size)
    if table < sb.s_first_data_block or table + table_blocks > sb.s_blocks_count:
        raise CorruptImage(
            f"{name}: group {group} inode table at block {table} lies outside the filesystem",
            subject=name,
        )
    return GroupDesc(bg_inode_table=table, bg_flags=flags, bg_checksum=checksum)
