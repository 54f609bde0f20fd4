"""The superblock of a layer image (SPEC §6.1)."""

from __future__ import annotations

from lcow.formats.ext4.layout import (
    BLOCKS_PER_GROUP,
    EXT4_SUPER_MAGIC,
    EXTRA_ISIZE,
    FIRST_INO,
    INODE_SIZE,
    LOG_BLOCK_SIZE,
    LOST_AND_FOUND_INO,
    SUPERBLOCK,
    SUPERBLOCK_FIELD_NAMES,
    SUPERBLOCK_SIZE,
    CompatFeature,
    IncompatFeature,
    RoCompatFeature,
)

__all__ = ["pack_superblock"]

_HASH_HALF_MD4 = 1  # s_def_hash_version, as mke2fs chooses
_FLAGS_SIGNED_HASH = 0x1  # s_flags: stated, so that no kernel writes it on a read-write mount

# dir_index although no directory is indexed: the kernel then reads a one-block directory
# through its htree code, which skips the block-device read-ahead call its linear code makes
# for every directory opened. That call's cost grows with the device's read-ahead setting
# (2560 KiB on a loop device over a file, measured): it tripled the sys time of a warm
# ``find`` (issue 17). Linear directories stay valid under it (e2fsck -fn is clean).
COMPAT = CompatFeature.EXT_ATTR | CompatFeature.SPARSE_SUPER2 | CompatFeature.DIR_INDEX
INCOMPAT = IncompatFeature.FILETYPE | IncompatFeature.EXTENTS | IncompatFeature.FLEX_BG
RO_COMPAT = (
    RoCompatFeature.LARGE_FILE
    | RoCompatFeature.HUGE_FILE
    | RoCompatFeature.EXTRA_ISIZE
    | RoCompatFeature.READONLY
)


def pack_superblock(  # noqa: PLR0913 - keyword-only: one parameter per superblock count the writer computes at close
    *,
    blocks_count: int,
    free_blocks: int,
    inodes_count: int,
    free_inodes: int,
    inodes_per_group: int,
    inline_data: bool,
) -> bytes:
    """The 1024-byte superblock. Times, UUID, label and hash seed are zero so output is
    reproducible."""
    incompat = INCOMPAT | (IncompatFeature.INLINE_DATA if inline_data else 0)
    values: dict[str, int | bytes] = dict.fromkeys(SUPERBLOCK_FIELD_NAMES, 0)
    for name, fmt_bytes in (
        ("s_uuid", 16),
        ("s_volume_name", 16),
        ("s_last_mounted", 64),
        ("s_journal_uuid", 16),
        ("s_hash_seed", 16),
        ("s_jnl_blocks", 68),
        ("s_first_error_func", 32),
        ("s_last_error_func", 32),
        ("s_mount_opts", 64),
        ("s_backup_bgs", 8),
        ("s_encrypt_algos", 4),
        ("s_encrypt_pw_salt", 16),
    ):
        values[name] = bytes(fmt_bytes)
    values.update(
        s_inodes_count=inodes_count,
        s_blocks_count_lo=blocks_count & 0xFFFFFFFF,
        s_free_blocks_count_lo=free_blocks & 0xFFFFFFFF,
        s_free_inodes_count=free_inodes,
        s_first_data_block=0,
        s_log_block_size=LOG_BLOCK_SIZE,
        s_log_cluster_size=LOG_BLOCK_SIZE,
        s_blocks_per_group=BLOCKS_PER_GROUP,
        s_clusters_per_group=BLOCKS_PER_GROUP,
        s_inodes_per_group=inodes_per_group,
        s_max_mnt_count=-1,
        s_magic=EXT4_SUPER_MAGIC,
        s_state=1,  # cleanly unmounted
        s_errors=1,  # continue
        s_rev_level=1,  # dynamic inode sizes
        s_first_ino=FIRST_INO,
        s_inode_size=INODE_SIZE,
        s_feature_compat=int(COMPAT),
        s_feature_incompat=int(incompat),
        s_feature_ro_compat=int(RO_COMPAT),
        s_min_extra_isize=EXTRA_ISIZE,
        s_want_extra_isize=EXTRA_ISIZE,
        s_log_groups_per_flex=31,
        s_def_hash_version=_HASH_HALF_MD4,
        s_flags=_FLAGS_SIGNED_HASH,
        s_lpf_ino=LOST_AND_FOUND_INO,
    )
    packed = SUPERBLOCK.pack(*(values[name] for name in SUPERBLOCK_FIELD_NAMES))
    return packed.ljust(SUPERBLOCK_SIZE, b"\x00")
