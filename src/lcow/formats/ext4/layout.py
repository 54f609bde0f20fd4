"""ext4 on-disk layout: constants, flag words and struct formats (SPEC §6.1).

Names follow ``fs/ext4/ext4.h`` and the kernel's ext4 disk-layout documentation so they grep
against it. This module holds no logic and does no I/O; the writer and the reader share it.
"""

from __future__ import annotations

import struct
from enum import IntFlag

__all__ = [
    "BLOCKS_PER_GROUP",
    "BLOCK_SIZE",
    "DESC_SIZE",
    "EXT4_EXTENT_MAGIC",
    "EXT4_SUPER_MAGIC",
    "EXT4_XATTR_MAGIC",
    "EXTENT_ENTRY",
    "EXTENT_HEADER",
    "EXTENT_INDEX",
    "EXTRA_ISIZE",
    "FIRST_INO",
    "GROUP_DESC",
    "INODE_SIZE",
    "INODE_STRUCT",
    "LOST_AND_FOUND_INO",
    "MAX_EXTENT_LEN",
    "MAX_LINKS",
    "MAX_NAME_LEN",
    "ROOT_INO",
    "SUPERBLOCK_OFFSET",
    "SUPERBLOCK_SIZE",
    "XATTR_ENTRY",
    "XATTR_HEADER",
    "CompatFeature",
    "FileType",
    "IncompatFeature",
    "InodeFlag",
    "RoCompatFeature",
]

BLOCK_SIZE = 4096
LOG_BLOCK_SIZE = 2  # 1024 << 2
BLOCKS_PER_GROUP = BLOCK_SIZE * 8  # one block bitmap block covers a group
INODE_SIZE = 256
EXTRA_ISIZE = 24  # bytes used past the 128-byte base inode: up to i_crtime_extra
INODES_PER_BLOCK = BLOCK_SIZE // INODE_SIZE
DESC_SIZE = 32  # no 64bit feature
DESCS_PER_BLOCK = BLOCK_SIZE // DESC_SIZE
SUPERBLOCK_OFFSET = 1024
SUPERBLOCK_SIZE = 1024
EXT4_SUPER_MAGIC = 0xEF53
EXT4_EXTENT_MAGIC = 0xF30A
EXT4_XATTR_MAGIC = 0xEA020000
ROOT_INO = 2
LOST_AND_FOUND_INO = 11
FIRST_INO = 11
MAX_LINKS = 65000
MAX_NAME_LEN = 255
MAX_EXTENT_LEN = 32768  # longest initialised extent, in blocks
EXTENTS_IN_INODE = 4  # (60 - 12) / 12
EXTENTS_PER_BLOCK = (BLOCK_SIZE - 12) // 12  # 340, no metadata_csum tail
FAST_SYMLINK_MAX = 59  # i_block is 60 bytes; targets shorter than that live in it
INLINE_IBLOCK_SIZE = 60
INODE_XATTR_OFFSET = 128 + EXTRA_ISIZE  # in-inode xattr area: magic, entries, values
INODE_XATTR_SPACE = INODE_SIZE - INODE_XATTR_OFFSET - 4  # after the magic
MAX_FILE_BLOCKS = 1 << 32  # 32-bit logical block numbers
MAX_FS_BLOCKS = 1 << 32  # 32-bit block numbers (no 64bit feature)


class CompatFeature(IntFlag):
    """``s_feature_compat``."""

    DIR_PREALLOC = 0x1
    IMAGIC_INODES = 0x2
    HAS_JOURNAL = 0x4
    EXT_ATTR = 0x8
    RESIZE_INODE = 0x10
    DIR_INDEX = 0x20
    SPARSE_SUPER2 = 0x200


class IncompatFeature(IntFlag):
    """``s_feature_incompat``."""

    COMPRESSION = 0x1
    FILETYPE = 0x2
    RECOVER = 0x4
    JOURNAL_DEV = 0x8
    META_BG = 0x10
    EXTENTS = 0x40
    BIT64 = 0x80
    MMP = 0x100
    FLEX_BG = 0x200
    EA_INODE = 0x400
    DIRDATA = 0x1000
    CSUM_SEED = 0x2000
    LARGEDIR = 0x4000
    INLINE_DATA = 0x8000
    ENCRYPT = 0x10000
    CASEFOLD = 0x20000


class RoCompatFeature(IntFlag):
    """``s_feature_ro_compat``."""

    SPARSE_SUPER = 0x1
    LARGE_FILE = 0x2
    BTREE_DIR = 0x4
    HUGE_FILE = 0x8
    GDT_CSUM = 0x10
    DIR_NLINK = 0x20
    EXTRA_ISIZE = 0x40
    QUOTA = 0x100
    BIGALLOC = 0x200
    METADATA_CSUM = 0x400
    READONLY = 0x1000
    PROJECT = 0x2000
    VERITY = 0x8000


class InodeFlag(IntFlag):
    """``i_flags``."""

    SECRM = 0x1
    IMMUTABLE = 0x10
    INDEX = 0x1000
    HUGE_FILE = 0x40000
    EXTENTS = 0x80000
    EA_INODE = 0x200000
    INLINE_DATA = 0x10000000


class FileType:
    """Directory entry ``file_type`` values."""

    UNKNOWN = 0
    REG_FILE = 1
    DIR = 2
    CHRDEV = 3
    BLKDEV = 4
    FIFO = 5
    SOCK = 6
    SYMLINK = 7


# struct ext4_super_block, the fields this project reads or writes, in order up to s_backup_bgs.
SUPERBLOCK_FIELDS = (
    ("s_inodes_count", "I"),
    ("s_blocks_count_lo", "I"),
    ("s_r_blocks_count_lo", "I"),
    ("s_free_blocks_count_lo", "I"),
    ("s_free_inodes_count", "I"),
    ("s_first_data_block", "I"),
    ("s_log_block_size", "I"),
    ("s_log_cluster_size", "I"),
    ("s_blocks_per_group", "I"),
    ("s_clusters_per_group", "I"),
    ("s_inodes_per_group", "I"),
    ("s_mtime", "I"),
    ("s_wtime", "I"),
    ("s_mnt_count", "H"),
    ("s_max_mnt_count", "h"),
    ("s_magic", "H"),
    ("s_state", "H"),
    ("s_errors", "H"),
    ("s_minor_rev_level", "H"),
    ("s_lastcheck", "I"),
    ("s_checkinterval", "I"),
    ("s_creator_os", "I"),
    ("s_rev_level", "I"),
    ("s_def_resuid", "H"),
    ("s_def_resgid", "H"),
    ("s_first_ino", "I"),
    ("s_inode_size", "H"),
    ("s_block_group_nr", "H"),
    ("s_feature_compat", "I"),
    ("s_feature_incompat", "I"),
    ("s_feature_ro_compat", "I"),
    ("s_uuid", "16s"),
    ("s_volume_name", "16s"),
    ("s_last_mounted", "64s"),
    ("s_algorithm_usage_bitmap", "I"),
    ("s_prealloc_blocks", "B"),
    ("s_prealloc_dir_blocks", "B"),
    ("s_reserved_gdt_blocks", "H"),
    ("s_journal_uuid", "16s"),
    ("s_journal_inum", "I"),
    ("s_journal_dev", "I"),
    ("s_last_orphan", "I"),
    ("s_hash_seed", "16s"),
    ("s_def_hash_version", "B"),
    ("s_jnl_backup_type", "B"),
    ("s_desc_size", "H"),
    ("s_default_mount_opts", "I"),
    ("s_first_meta_bg", "I"),
    ("s_mkfs_time", "I"),
    ("s_jnl_blocks", "68s"),
    ("s_blocks_count_hi", "I"),
    ("s_r_blocks_count_hi", "I"),
    ("s_free_blocks_count_hi", "I"),
    ("s_min_extra_isize", "H"),
    ("s_want_extra_isize", "H"),
    ("s_flags", "I"),
    ("s_raid_stride", "H"),
    ("s_mmp_interval", "H"),
    ("s_mmp_block", "Q"),
    ("s_raid_stripe_width", "I"),
    ("s_log_groups_per_flex", "B"),
    ("s_checksum_type", "B"),
    ("s_reserved_pad", "H"),
    ("s_kbytes_written", "Q"),
    ("s_snapshot_inum", "I"),
    ("s_snapshot_id", "I"),
    ("s_snapshot_r_blocks_count", "Q"),
    ("s_snapshot_list", "I"),
    ("s_error_count", "I"),
    ("s_first_error_time", "I"),
    ("s_first_error_ino", "I"),
    ("s_first_error_block", "Q"),
    ("s_first_error_func", "32s"),
    ("s_first_error_line", "I"),
    ("s_last_error_time", "I"),
    ("s_last_error_ino", "I"),
    ("s_last_error_line", "I"),
    ("s_last_error_block", "Q"),
    ("s_last_error_func", "32s"),
    ("s_mount_opts", "64s"),
    ("s_usr_quota_inum", "I"),
    ("s_grp_quota_inum", "I"),
    ("s_overhead_clusters", "I"),
    ("s_backup_bgs", "8s"),  # __le32[2]
    ("s_encrypt_algos", "4s"),
    ("s_encrypt_pw_salt", "16s"),
    ("s_lpf_ino", "I"),
)
SUPERBLOCK = struct.Struct("<" + "".join(f for _, f in SUPERBLOCK_FIELDS))
SUPERBLOCK_FIELD_NAMES = tuple(n for n, _ in SUPERBLOCK_FIELDS)
assert SUPERBLOCK.size == 0x26C  # s_lpf_ino ends at 0x26C (kernel docs)

# struct ext4_group_desc, 32-byte form: bg_block_bitmap_lo, bg_inode_bitmap_lo, bg_inode_table_lo,
# bg_free_blocks_count_lo, bg_free_inodes_count_lo, bg_used_dirs_count_lo, bg_flags,
# bg_exclude_bitmap_lo, bg_block_bitmap_csum_lo, bg_inode_bitmap_csum_lo, bg_itable_unused_lo,
# bg_checksum.
GROUP_DESC = struct.Struct("<IIIHHHHIHHHH")
assert GROUP_DESC.size == DESC_SIZE

# struct ext4_inode up to i_crtime_extra (128 + EXTRA_ISIZE bytes):
# i_mode, i_uid, i_size_lo, i_atime, i_ctime, i_mtime, i_dtime, i_gid, i_links_count, i_blocks_lo,
# i_flags, l_i_version, i_block[60], i_generation, i_file_acl_lo, i_size_high, i_obso_faddr,
# l_i_blocks_high, l_i_file_acl_high, l_i_uid_high, l_i_gid_high, l_i_checksum_lo, l_i_reserved,
# i_extra_isize, i_checksum_hi, i_ctime_extra, i_mtime_extra, i_atime_extra, i_crtime,
# i_crtime_extra.
INODE_STRUCT = struct.Struct("<HHIIIIIHHII4s60sIIII6HHHIIIII")
assert INODE_STRUCT.size == 128 + EXTRA_ISIZE

# struct ext4_extent_header: eh_magic, eh_entries, eh_max, eh_depth, eh_generation.
EXTENT_HEADER = struct.Struct("<HHHHI")
# struct ext4_extent: ee_block, ee_len, ee_start_hi, ee_start_lo.
EXTENT_ENTRY = struct.Struct("<IHHI")
# struct ext4_extent_idx: ei_block, ei_leaf_lo, ei_leaf_hi, ei_unused.
EXTENT_INDEX = struct.Struct("<IIHH")

# struct ext4_dir_entry_2 header: inode, rec_len, name_len, file_type.
DIRENT_HEADER = struct.Struct("<IHBB")

# struct ext4_xattr_header (block):
# h_magic, h_refcount, h_blocks, h_hash, h_checksum, h_reserved[3].
XATTR_HEADER = struct.Struct("<IIIII12s")
# struct ext4_xattr_entry:
# e_name_len, e_name_index, e_value_offs, e_value_inum, e_value_size, e_hash.
XATTR_ENTRY = struct.Struct("<BBHIII")

# Attribute name prefixes by e_name_index (longest first where one is a prefix of another).
XATTR_PREFIXES: tuple[tuple[int, bytes], ...] = (
    (2, b"system.posix_acl_access"),
    (3, b"system.posix_acl_default"),
    (8, b"system.richacl"),
    (1, b"user."),
    (4, b"trusted."),
    (6, b"security."),
    (7, b"system."),
)
XATTR_INDEX_PREFIX: dict[int, bytes] = {
    0: b"",
    1: b"user.",
    2: b"system.posix_acl_access",
    3: b"system.posix_acl_default",
    4: b"trusted.",
    6: b"security.",
    7: b"system.",
    8: b"system.richacl",
}
