"""ext4 reader: a directory's entries (SPEC §6.4).

Functions over a :class:`~lcow.formats.ext4.read_volume.Volume`; the facade
:class:`~lcow.formats.ext4.reader.Ext4Reader` exposes them as methods and documents them there.
:func:`iterdir` yields :class:`~lcow.formats.ext4.read_dirs.DirEntry` objects block by block
(every record checked, checksums verified on request); :func:`listdir` sorts them and refuses
duplicates; :func:`children` is what a walk lists, through the faster
:mod:`lcow.formats.ext4.read_listing` when the directory allows it.
"""

from __future__ import annotations

from collections.abc import Iterator

from lcow._util.escape import quoted
from lcow.errors import InvalidArgument, LimitExceeded
from lcow.formats.ext4 import read_csum, read_listing
from lcow.formats.ext4.layout import InodeFlag
from lcow.formats.ext4.read_content import system_data
from lcow.formats.ext4.read_dirs import DirEntry, parse_dir_region, parse_inline_dir
from lcow.formats.ext4.read_dirs import verify_dir_block as _verify_dir_block
from lcow.formats.ext4.read_inode import Inode
from lcow.formats.ext4.read_volume import Volume, corrupt, subject_of, where

__all__ = ["INLINE_IBLOCK", "children", "iterdir", "listdir"]

INLINE_IBLOCK = 60  # bytes of i_block that hold an inline directory's first entries
_INDEX_FL = int(InodeFlag.INDEX)


def iterdir(
    vol: Volume, inode: Inode, *, path: bytes | None = None, seen_blocks: set[int] | None = None
) -> Iterator[DirEntry]:
    """See :meth:`Ext4Reader.iterdir`."""
    if not inode.is_dir:
        raise InvalidArgument(f"{where(vol, inode.ino, path)}: not a directory")
    if inode.size > vol.limits.max_dir_size:
        raise LimitExceeded(
            f"{where(vol, inode.ino, path)}: directory of {inode.size} bytes exceeds the "
            f"{vol.limits.max_dir_size}-byte limit"
        )
    at = where(vol, inode.ino, path)
    subject = subject_of(inode.ino, path)
    sb = vol.superblock
    if inode.has_inline_data:
        entries = parse_inline_dir(
            inode.i_block[:INLINE_IBLOCK],
            system_data(vol, inode, path),
            where=f"{at}: inline directory",
            subject=subject,
            block_size=vol.block_size,
            inodes_count=sb.s_inodes_count,
            has_filetype=vol.dir_filetype,
        )
        yield from (e for e in entries if e.name not in (b".", b".."))
        return
    indexed = bool(inode.flags & _INDEX_FL)
    verify = vol.verify_metadata
    iseed = read_csum.inode_csum_seed(vol.csum_seed, inode.ino, inode.generation) if verify else 0
    for run in vol.data_runs(inode, path=path):
        if run.physical is None:
            continue
        for i in range(run.length):
            block_nr = run.physical + i
            if seen_blocks is not None:
                if block_nr in seen_blocks:
                    raise corrupt(vol, inode.ino, path, f"directory block {block_nr} is used twice")
                seen_blocks.add(block_nr)
            block = vol.read_block(block_nr)
            bwhere = f"{at}: directory block {run.logical + i}"
            if verify:
                _verify_dir_block(block, iseed, indexed=indexed, where=bwhere, subject=subject)
            for entry in parse_dir_region(
                block,
                where=bwhere,
                subject=subject,
                block_size=vol.block_size,
                inodes_count=sb.s_inodes_count,
                has_filetype=vol.dir_filetype,
            ):
                if entry.name not in (b".", b".."):
                    yield entry


def listdir(
    vol: Volume, inode: Inode, *, path: bytes | None = None, seen_blocks: set[int] | None = None
) -> list[DirEntry]:
    """See :meth:`Ext4Reader.listdir`."""
    entries: dict[bytes, DirEntry] = {}
    limit = vol.limits.max_dir_entries
    for entry in iterdir(vol, inode, path=path, seen_blocks=seen_blocks):
        if entry.name in entries:
            raise corrupt(vol, inode.ino, path, f"name {quoted(entry.name)} appears twice")
        if len(entries) >= limit:
            raise LimitExceeded(f"{where(vol, inode.ino, path)}: more than {limit} entries")
        entries[entry.name] = entry
    return [entries[name] for name in sorted(entries)]


def children(
    vol: Volume, inode: Inode, *, path: bytes, seen_blocks: set[int]
) -> list[tuple[bytes, int]]:
    """See :meth:`Ext4Reader.children`."""
    if inode.has_inline_data or vol.verify_metadata or inode.size > vol.limits.max_dir_size:
        listing = listdir(vol, inode, path=path, seen_blocks=seen_blocks)
        return [(e.name, e.ino) for e in listing]
    if not inode.is_dir:
        raise InvalidArgument(f"{where(vol, inode.ino, path)}: not a directory")
    runs = vol.data_runs(inode, path=path)
    return read_listing.list_names(vol, runs, ino=inode.ino, path=path, seen_blocks=seen_blocks)
