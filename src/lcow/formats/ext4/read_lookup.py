"""ext4 reader: resolving a path, and the check that keeps it from looping (SPEC §6.4).

A lookup sees one path, not the whole tree, so it cannot keep a set of the directories a walk
entered; instead every directory it enters is checked against that directory's ``..``
(:func:`check_subdir`): a directory has one name, so its ``..`` must be the directory it was
found in, and the root is never found again. Functions over a
:class:`~lcow.formats.ext4.read_volume.Volume`; the facade
:class:`~lcow.formats.ext4.reader.Ext4Reader` exposes them as methods and documents them there.
"""

from __future__ import annotations

import os

from lcow.errors import InvalidArgument, NotFound
from lcow.formats.ext4.layout import ROOT_INO
from lcow.formats.ext4.read_directory import INLINE_IBLOCK, iterdir
from lcow.formats.ext4.read_dirs import parse_dir_region, parse_inline_dir
from lcow.formats.ext4.read_inode import Inode
from lcow.formats.ext4.read_volume import Volume, corrupt, subject_of, where

__all__ = ["check_subdir", "dotdot", "lookup", "normal_path"]


def normal_path(top: bytes) -> bytes:
    """``top`` as an absolute path without empty or ``.`` components."""
    parts = [p for p in top.split(b"/") if p not in (b"", b".")]
    return b"/" + b"/".join(parts) if parts else b"/"


def lookup(vol: Volume, path: bytes) -> Inode:
    """See :meth:`Ext4Reader.lookup`."""
    root = vol.used_inode(ROOT_INO, path=b"/")
    if not root.is_dir:
        raise corrupt(vol, ROOT_INO, b"/", "the root inode is not a directory")
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
                f"{vol.name}: {os.fsdecode(walked or b'/')} is not a directory",
                subject=os.fsdecode(path),
            )
        for entry in iterdir(vol, cur, path=walked or b"/"):
            if entry.name == part:
                walked += b"/" + part
                found = vol.used_inode(entry.ino, path=walked)
                if found.is_dir:
                    check_subdir(vol, cur, found, path=walked)
                inodes.append(found)
                break
        else:
            raise NotFound(
                f"{vol.name}: {os.fsdecode(walked + b'/' + part)} does not exist",
                subject=os.fsdecode(path),
            )
    return inodes[-1]


def dotdot(vol: Volume, inode: Inode, *, path: bytes | None = None) -> int:
    """See :meth:`Ext4Reader.dotdot`."""
    if not inode.is_dir:
        raise InvalidArgument(f"{where(vol, inode.ino, path)}: not a directory")
    at = where(vol, inode.ino, path)
    subject = subject_of(inode.ino, path)
    sb = vol.superblock
    if inode.has_inline_data:
        entries = parse_inline_dir(
            inode.i_block[:INLINE_IBLOCK],
            b"",
            where=f"{at}: inline directory",
            subject=subject,
            block_size=vol.block_size,
            inodes_count=sb.s_inodes_count,
            has_filetype=vol.dir_filetype,
        )
        return next(entries).ino  # the inline parent comes first, checked
    first = next(iter(vol.data_runs(inode, path=path)), None)
    if first is not None and first.physical is not None:
        for entry in parse_dir_region(
            vol.read_block(first.physical),
            where=f"{at}: directory block 0",
            subject=subject,
            block_size=vol.block_size,
            inodes_count=sb.s_inodes_count,
            has_filetype=vol.dir_filetype,
        ):
            if entry.name == b"..":
                return entry.ino
    raise corrupt(vol, inode.ino, path, "directory has no '..' entry")


def check_subdir(vol: Volume, parent: Inode, child: Inode, *, path: bytes | None = None) -> None:
    """See :meth:`Ext4Reader.check_subdir`."""
    if child.ino == ROOT_INO:
        raise corrupt(vol, child.ino, path, "the root directory reached again (loop)")
    up = dotdot(vol, child, path=path)
    if up != parent.ino:
        raise corrupt(
            vol,
            child.ino,
            path,
            f"directory reached twice (loop or second name): its '..' is inode {up}, "
            f"not inode {parent.ino} it was reached from",
        )
