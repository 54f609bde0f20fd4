"""Seed layer images for the reader fuzz, and a map of where their structures lie.

Each seed is a tar converted by lcow's own ``tar2ext4`` as ApplyDiff converts it (whiteouts
converted, VHD footer), chosen so that together the seeds hold every structure the reader
decodes: regular files of many sizes, xattrs in the inode and in a block, fast and slow
symlinks, hard links, whiteouts and an opaque directory, devices and FIFOs, sparse files, a
directory of many linear blocks (lcow writes no htree), an extent tree of depth 1, inline data
(files, directories, symlinks), and a dm-verity hash area before the footer. Seeds are
deterministic: the same bytes on every build (the footer's time and id are fixed), so a mutant
is fully described by the seed's name and a byte patch.

:func:`structure_map` lists the fields of a seed — superblock, group descriptors, the inodes in
use, extent headers and entries, directory records, xattr blocks, the footer — for targeted
mutations.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from lcow import ConvertOptions, tar2ext4
from lcow.formats.ext4.layout import (
    DIRENT_HEADER,
    EXTENT_HEADER,
    SUPERBLOCK_FIELDS,
    SUPERBLOCK_OFFSET,
)
from lcow.formats.ext4.read_super import group_desc_offset
from lcow.formats.ext4.reader import Ext4Reader
from lcow.formats.vhd.footer import build_fixed_footer
from tests.helpers import TarEntry, write_tar

__all__ = ["BASE_ENTRIES", "SEEDS", "Field", "SeedOptions", "build_seed", "structure_map", "tar_of"]

FOOTER = 512
_UNIQUE_ID = bytes(range(16))


@dataclass(frozen=True)
class Field:
    """One field of an on-disk structure: where it is and what it is.

    Attributes:
        kind: the structure (``sb``, ``gd``, ``inode``, ``extent``, ``dirent``, ``xattr``,
            ``footer``).
        name: the field (``s_inodes_count``, ``i_size_lo``, ``rec_len`` ...).
        offset: byte offset in the image file.
        size: bytes.
        role: what a value of it means, for choosing values: ``ino`` (an inode number),
            ``block`` (a block number), ``len`` (a length or count), ``mode`` (``i_mode``),
            ``flags`` (``i_flags``), ``name`` (a name's first byte), ``raw``.
    """

    kind: str
    name: str
    offset: int
    size: int
    role: str = "raw"


def _mixed() -> list[TarEntry]:
    big = bytes(range(256)) * 300  # 76,800 bytes: several blocks, one extent
    return [
        TarEntry("etc", "dir", mode=0o755, xattrs={"user.dirnote": b"d" * 40}),
        TarEntry("etc/hosts", data=b"127.0.0.1 localhost\n"),
        TarEntry("etc/empty", data=b""),
        TarEntry("etc/big", data=big, uid=1000, gid=1000),
        TarEntry("etc/five", data=b"x" * 5000, xattrs={"user.small": b"v"}),
        TarEntry(
            "etc/manyx",
            data=b"m",
            xattrs={f"user.k{i}": bytes([65 + i]) * 120 for i in range(6)},  # spills to a block
        ),
        TarEntry("etc/cap", data=b"c", xattrs={"security.capability": bytes(20)}),
        TarEntry("etc/fast", "symlink", target="hosts"),
        TarEntry("etc/slow", "symlink", target="/" + "long/" * 30 + "target"),
        TarEntry("etc/hard", "hardlink", target="etc/big"),
        TarEntry("etc/.wh.gone", data=b""),
        TarEntry("opq", "dir", mode=0o700),
        TarEntry("opq/.wh..wh..opq", data=b""),
        TarEntry("opq/kept", data=b"kept\n"),
        TarEntry("dev", "dir"),
        TarEntry("dev/null", "chr", major=1, minor=3),
        TarEntry("dev/sda", "blk", major=8, minor=0),
        TarEntry("dev/fifo", "fifo"),
        TarEntry("sparse", "sparse", size=3 << 20, sparse=[(0, b"head"), (1 << 20, b"mid" * 1000)]),
        TarEntry("a/b/c/d/e/deep", data=b"deep\n"),
    ]


def _inline() -> list[TarEntry]:
    return [
        TarEntry("tiny", data=b"tiny file\n"),
        TarEntry("in-xattr", data=b"y" * 100),  # i_block and system.data
        TarEntry("small-dir", "dir"),
        TarEntry("small-dir/one", data=b"1"),
        TarEntry("small-dir/link", "symlink", target="one"),
        TarEntry("mid-dir", "dir"),
        *(TarEntry(f"mid-dir/n{i:02d}", data=b"%d" % i) for i in range(12)),
        TarEntry("block-file", data=b"b" * 9000),
        TarEntry("xa", data=b"x", xattrs={"user.note": b"n" * 30}),
        TarEntry("slow", "symlink", target="t" * 100),
        TarEntry("gone/.wh.x", data=b""),
    ]


def _bigdir() -> list[TarEntry]:
    names = [f"entry-with-a-rather-long-name-{i:04d}" for i in range(700)]
    entries = [TarEntry("big", "dir")]
    entries += [TarEntry(f"big/{n}", data=b"%d" % i) for i, n in enumerate(names)]
    entries += [TarEntry(f"big/sub{i}", "dir") for i in range(20)]
    entries += [TarEntry(f"big/sub{i}/f", data=b"f") for i in range(20)]
    return entries


def _extents() -> list[TarEntry]:
    # 400 separate one-block pieces: more than the inode's 4 extents, so an extent tree of
    # depth 1 (one index in the inode, a leaf block).
    pieces = [(i * 8192, bytes([i % 251 + 1]) * 4096) for i in range(400)]
    return [
        TarEntry("tree", "sparse", size=400 * 8192, sparse=pieces),
        TarEntry("two", "sparse", size=1 << 20, sparse=[(0, b"a" * 4096), (65536, b"b" * 100)]),
        TarEntry("hole-only", "sparse", size=1 << 24, sparse=[]),
        TarEntry("plain", data=b"p" * 10000),
    ]


def _verity() -> list[TarEntry]:
    return [
        TarEntry("bin", "dir"),
        TarEntry("bin/tool", data=b"\x7fELF" + bytes(3000), mode=0o755),
        TarEntry("bin/sh", "symlink", target="tool"),
        TarEntry("etc/.wh..wh..opq", data=b""),
        TarEntry("etc/conf", data=b"k=v\n", xattrs={"trusted.overlay.opaque": b"y"}),
    ]


class SeedOptions(TypedDict, total=False):
    """The ConvertOptions a seed sets beyond ApplyDiff's."""

    inline_data: bool
    dm_verity: bool


#: name -> (entries, extra ConvertOptions).
SEEDS: dict[str, tuple[Callable[[], list[TarEntry]], SeedOptions]] = {
    "mixed": (_mixed, {}),
    "inline": (_inline, {"inline_data": True}),
    "bigdir": (_bigdir, {}),
    "extents": (_extents, {}),
    "verity": (_verity, {"dm_verity": True}),
}

#: The parent layer below every mutant (valid; shares directories with the seeds).
BASE_ENTRIES = [
    TarEntry("etc", "dir"),
    TarEntry("etc/hosts", data=b"old\n"),
    TarEntry("etc/gone", data=b"will be whited out\n"),
    TarEntry("opq", "dir"),
    TarEntry("opq/hidden", data=b"hidden\n"),
    TarEntry("big", "dir"),
    TarEntry("big/entry-with-a-rather-long-name-0001", data=b"old"),
    TarEntry("bin", "dir"),
]


def tar_of(entries: list[TarEntry], work: Path) -> bytes:
    """The tar of ``entries`` (built in ``work``)."""
    path = write_tar(work / "seed.tar", entries)
    data = path.read_bytes()
    path.unlink()
    return data


def build_seed(name: str, work: Path) -> bytes:
    """The bytes of seed ``name``: ``tar2ext4`` with ApplyDiff's options, footer fixed."""
    make, extra = SEEDS[name]
    work.mkdir(parents=True, exist_ok=True)
    target = work / f"{name}.vhd"
    options = ConvertOptions(convert_whiteouts=True, vhd_footer=True, **extra)
    result = tar2ext4(io.BytesIO(tar_of(make(), work)), target, options)
    data = bytearray(target.read_bytes())
    target.unlink()
    if result.hash_offset is not None:  # the verity superblock's uuid (offset 16) is random
        data[result.hash_offset + 16 : result.hash_offset + 32] = _UNIQUE_ID
    data[-FOOTER:] = build_fixed_footer(len(data) - FOOTER, timestamp=0, unique_id=_UNIQUE_ID)
    return bytes(data)


# -- structure map -----------------------------------------------------------------------------

_GD_FIELDS = (
    ("bg_block_bitmap_lo", 0, 4, "block"),
    ("bg_inode_bitmap_lo", 4, 4, "block"),
    ("bg_inode_table_lo", 8, 4, "block"),
    ("bg_free_blocks_count_lo", 12, 2, "len"),
    ("bg_free_inodes_count_lo", 14, 2, "len"),
    ("bg_used_dirs_count_lo", 16, 2, "len"),
    ("bg_flags", 18, 2, "raw"),
    ("bg_itable_unused_lo", 28, 2, "len"),
    ("bg_checksum", 30, 2, "raw"),
)
_INODE_FIELDS = (
    ("i_mode", 0, 2, "mode"),
    ("i_uid", 2, 2, "raw"),
    ("i_size_lo", 4, 4, "len"),
    ("i_mtime", 16, 4, "raw"),
    ("i_links_count", 26, 2, "len"),
    ("i_blocks_lo", 28, 4, "len"),
    ("i_flags", 32, 4, "flags"),
    ("eh_magic", 40, 2, "raw"),
    ("eh_entries", 42, 2, "len"),
    ("eh_max", 44, 2, "len"),
    ("eh_depth", 46, 2, "len"),
    ("ee_block", 52, 4, "block"),
    ("ee_len", 56, 2, "len"),
    ("ee_start_hi", 58, 2, "block"),
    ("ee_start_lo", 60, 4, "block"),
    ("i_block_tail", 64, 36, "raw"),
    ("i_file_acl_lo", 104, 4, "block"),
    ("i_size_high", 108, 4, "len"),
    ("i_blocks_high", 116, 2, "len"),
    ("i_file_acl_high", 118, 2, "block"),
    ("i_extra_isize", 128, 2, "len"),
    ("i_mtime_extra", 136, 4, "raw"),
    ("xattr_magic", 160, 4, "raw"),
    ("xattr_entry", 164, 16, "raw"),
)
_SB_ROLES = {
    "s_inodes_count": "len",
    "s_blocks_count_lo": "len",
    "s_first_data_block": "block",
    "s_log_block_size": "len",
    "s_log_cluster_size": "len",
    "s_blocks_per_group": "len",
    "s_inodes_per_group": "len",
    "s_first_ino": "ino",
    "s_inode_size": "len",
    "s_desc_size": "len",
    "s_first_meta_bg": "len",
    "s_blocks_count_hi": "len",
    "s_min_extra_isize": "len",
    "s_want_extra_isize": "len",
    "s_log_groups_per_flex": "len",
    "s_journal_inum": "ino",
    "s_lpf_ino": "ino",
}


def _sb_fields() -> list[Field]:
    fields = []
    offset = SUPERBLOCK_OFFSET
    for name, fmt in SUPERBLOCK_FIELDS:
        size = struct.calcsize("<" + fmt)
        if size <= 8:
            fields.append(Field("sb", name, offset, size, _SB_ROLES.get(name, "raw")))
        offset += size
    return fields


def _dirent_fields(reader: Ext4Reader, block_nr: int) -> list[Field]:
    block = reader.read_block(block_nr)
    base = block_nr * reader.block_size
    fields = []
    off = 0
    while off + DIRENT_HEADER.size <= len(block):
        _ino, rec_len, _, _ = DIRENT_HEADER.unpack_from(block, off)
        fields += [
            Field("dirent", "inode", base + off, 4, "ino"),
            Field("dirent", "rec_len", base + off + 4, 2, "len"),
            Field("dirent", "name_len", base + off + 6, 1, "len"),
            Field("dirent", "file_type", base + off + 7, 1, "raw"),
            Field("dirent", "name", base + off + 8, 1, "name"),
        ]
        if rec_len < DIRENT_HEADER.size:
            break
        off += rec_len
    return fields


def _extent_block_fields(reader: Ext4Reader, i_block: bytes) -> list[Field]:
    """Fields of the extent tree blocks below an inode's root (depth 1 roots)."""
    magic, entries, _, depth, _ = EXTENT_HEADER.unpack_from(i_block)
    if magic != 0xF30A or depth == 0:
        return []
    fields = []
    for i in range(min(entries, 4)):
        leaf_lo, leaf_hi = struct.unpack_from("<IH", i_block, 12 + 12 * i + 4)
        block_nr = leaf_lo | leaf_hi << 32
        if not 0 < block_nr < reader.superblock.s_blocks_count:
            continue
        base = block_nr * reader.block_size
        fields += [
            Field("extent", "eh_magic", base, 2),
            Field("extent", "eh_entries", base + 2, 2, "len"),
            Field("extent", "eh_max", base + 4, 2, "len"),
            Field("extent", "eh_depth", base + 6, 2, "len"),
        ]
        for k in (0, 1, 2, entries // 2, 300, 339):
            at = base + 12 + 12 * k
            fields += [
                Field("extent", "ee_block", at, 4, "block"),
                Field("extent", "ee_len", at + 4, 2, "len"),
                Field("extent", "ee_start_lo", at + 8, 4, "block"),
            ]
    return fields


def structure_map(image: Path) -> list[Field]:
    """Every field of ``image`` worth a targeted mutation (see :class:`Field`)."""
    fields = _sb_fields()
    size = os.path.getsize(image)
    with Ext4Reader.open(image) as reader:
        sb = reader.superblock
        for group in range(sb.group_count):
            at = group_desc_offset(sb, group)
            fields += [Field("gd", n, at + o, s, r) for n, o, s, r in _GD_FIELDS]
        dir_blocks: list[int] = []
        seen: set[int] = set()
        for path, inode in reader.walk_inodes(b"/"):
            if inode.ino in seen:
                continue
            seen.add(inode.ino)
            slot = _inode_offset(reader, inode.ino)
            fields += [
                Field("inode", n, slot + o, s, r)
                for n, o, s, r in _INODE_FIELDS
                if o + s <= sb.s_inode_size
            ]
            if inode.is_dir and not inode.has_inline_data:
                for run in reader.data_runs(inode, path=path):
                    if run.physical is not None:
                        dir_blocks += range(run.physical, run.physical + min(run.length, 4))
            if inode.has_extents and not inode.has_inline_data:
                fields += _extent_block_fields(reader, inode.i_block)
            if inode.file_acl:
                base = inode.file_acl * reader.block_size
                fields += [
                    Field("xattr", "h_magic", base, 4),
                    Field("xattr", "h_refcount", base + 4, 4, "len"),
                    Field("xattr", "h_blocks", base + 8, 4, "len"),
                    Field("xattr", "e_name_len", base + 32, 1, "len"),
                    Field("xattr", "e_name_index", base + 33, 1),
                    Field("xattr", "e_value_offs", base + 34, 2, "len"),
                    Field("xattr", "e_value_inum", base + 36, 4, "ino"),
                    Field("xattr", "e_value_size", base + 40, 4, "len"),
                ]
        for block_nr in dir_blocks:
            fields += _dirent_fields(reader, block_nr)
    fields += [
        Field("footer", "cookie", size - FOOTER, 8),
        Field("footer", "current_size", size - FOOTER + 48, 8, "len"),
        Field("footer", "disk_type", size - FOOTER + 60, 4),
        Field("footer", "checksum", size - FOOTER + 64, 4),
    ]
    return [f for f in fields if f.offset + f.size <= size]


def _inode_offset(reader: Ext4Reader, ino: int) -> int:
    sb = reader.superblock
    group, index = divmod(ino - 1, sb.s_inodes_per_group)
    return reader.group_desc(group).bg_inode_table * reader.block_size + index * sb.s_inode_size
