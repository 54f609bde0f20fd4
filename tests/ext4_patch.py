"""Byte patches of ext4 images made by lcow's writer: hostile images for reader tests.

lcow's writer lays out a valid image; these helpers find a structure in it with lcow's reader
(a directory entry, an inode slot) and overwrite a few bytes, to make what the writer never
would: a directory entry pointing at an ancestor, a directory with two names, a loop. The
writer sets no checksums (no ``metadata_csum``), so a patched image needs no fix-up.
"""

from __future__ import annotations

import os
from pathlib import Path

from lcow.formats.ext4.layout import DIRENT_HEADER, FileType
from lcow.formats.ext4.reader import Ext4Reader

__all__ = ["dirent_offset", "inode_number", "inode_offset", "point_entry"]


def dirent_offset(image: Path, directory: bytes, name: bytes) -> int:
    """Byte offset in ``image`` of the record named ``name`` in ``directory`` (block-based
    directories only: lcow's writer keeps directories in blocks unless asked for inline data).

    Raises:
        LookupError: no such record.
    """
    with Ext4Reader.open(image) as reader:
        inode = reader.lookup(directory)
        for run in reader.data_runs(inode):
            if run.physical is None:
                continue
            for i in range(run.length):
                block_nr = run.physical + i
                block = reader.read_block(block_nr)
                off = 0
                while off + DIRENT_HEADER.size <= len(block):
                    ino, rec_len, name_len, _ = DIRENT_HEADER.unpack_from(block, off)
                    start = off + DIRENT_HEADER.size
                    if ino and block[start : start + name_len] == name:
                        return block_nr * reader.block_size + off
                    if rec_len < DIRENT_HEADER.size:
                        break
                    off += rec_len
    raise LookupError(f"{image}: no entry {name!r} in {os.fsdecode(directory)}")


def inode_number(image: Path, path: bytes) -> int:
    """The inode number at ``path`` in ``image``."""
    with Ext4Reader.open(image) as reader:
        return reader.lookup(path).ino


def inode_offset(image: Path, ino: int) -> int:
    """Byte offset in ``image`` of inode ``ino``'s slot in its inode table."""
    with Ext4Reader.open(image) as reader:
        sb = reader.superblock
        group, index = divmod(ino - 1, sb.s_inodes_per_group)
        table = reader.group_desc(group).bg_inode_table
        return table * reader.block_size + index * sb.s_inode_size


def point_entry(
    image: Path,
    directory: bytes,
    name: bytes,
    target: bytes | int,
    file_type: int = FileType.DIR,
) -> None:
    """Make entry ``name`` of ``directory`` point at ``target`` (a path or an inode number),
    with entry type ``file_type``: the patch behind every directory-loop case."""
    offset = dirent_offset(image, directory, name)
    ino = inode_number(image, target) if isinstance(target, bytes) else target
    with open(image, "r+b") as f:
        f.seek(offset)
        f.write(ino.to_bytes(4, "little"))
        f.seek(offset + 7)
        f.write(bytes([file_type]))
