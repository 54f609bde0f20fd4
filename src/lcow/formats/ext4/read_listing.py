"""ext4 reader: listing a directory's blocks for walks and scans (SPEC §6.4).

:func:`~lcow.formats.ext4.read_directory.listdir` yields
:class:`~lcow.formats.ext4.read_dirs.DirEntry` objects one block at a time; a walk of a whole
layer wants less per entry. These functions read a
directory's blocks a run at a time and collect plain ``(name, ino)`` pairs
(:func:`list_names`) or only inode numbers (:func:`list_inodes`, for summing sizes), with the
same record checks — a record they refuse is parsed again by
:func:`~lcow.formats.ext4.read_dirs.parse_dir_region` to raise its precise error — and the same
walk bounds: a block seen twice in one walk, more than ``limits.max_dir_entries`` entries.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable
from operator import itemgetter
from typing import TypeVar

from lcow._util.escape import quoted
from lcow.errors import CorruptImage, LimitExceeded
from lcow.formats.ext4.layout import IncompatFeature
from lcow.formats.ext4.read_dirs import collect_dir_inodes, collect_dir_names, parse_dir_region
from lcow.formats.ext4.read_extents import DataRun
from lcow.formats.ext4.read_volume import Volume, where

__all__ = ["list_inodes", "list_names"]

_READ_BLOCKS = 256  # directory blocks read at once
_first = itemgetter(0)
_T = TypeVar("_T")


def _collect(  # noqa: PLR0913, PLR0917 - hot loop: per-block driver shared by collect_dir_names/collect_dir_inodes; *extra forwards the collector's own outputs
    vol: Volume,
    runs: Iterable[DataRun],
    ino: int,
    path: bytes,
    seen_blocks: set[int],
    collect: Callable[..., bool],
    out: list[_T],
    *extra: object,
) -> list[_T]:
    bs = vol.block_size
    limit = vol.limits.max_dir_entries
    count = vol.superblock.s_inodes_count
    has_filetype = vol.superblock.incompat(IncompatFeature.FILETYPE)
    for _, physical, length in runs:
        if physical is None:
            continue
        for done in range(0, length, _READ_BLOCKS):
            first = physical + done
            nblocks = min(_READ_BLOCKS, length - done)
            for block_nr in range(first, first + nblocks):
                if block_nr in seen_blocks:
                    subject = os.fsdecode(path)
                    raise CorruptImage(
                        f"{where(vol, ino, path)}: directory block {block_nr} is used twice",
                        subject=subject,
                    )
                seen_blocks.add(block_nr)
            data = vol.source.pread(first * bs, nblocks * bs)
            for i in range(0, nblocks * bs, bs):
                ok = collect(
                    data,
                    i,
                    i + bs,
                    out,
                    *extra,
                    block_size=bs,
                    inodes_count=count,
                    has_filetype=has_filetype,
                )
                if not ok:
                    _raise_block_error(vol, ino, path, data[i : i + bs], has_filetype)
                if len(out) > limit:
                    raise LimitExceeded(f"{where(vol, ino, path)}: more than {limit} entries")
    return out


def _raise_block_error(
    vol: Volume, ino: int, path: bytes, block: bytes, has_filetype: bool
) -> None:
    """Raise the precise error for a directory block the fast parser refused."""
    subject = os.fsdecode(path)
    at = f"{where(vol, ino, path)}: directory block"
    for _ in parse_dir_region(
        block,
        where=at,
        subject=subject,
        block_size=vol.block_size,
        inodes_count=vol.superblock.s_inodes_count,
        has_filetype=has_filetype,
    ):
        pass
    raise CorruptImage(f"{at}: bad record", subject=subject)  # not reached


def list_names(  # noqa: PLR0913 - keyword-only: the directory's inode and path for messages and the walk's shared seen_blocks
    vol: Volume,
    runs: Iterable[DataRun],
    *,
    ino: int,
    path: bytes,
    seen_blocks: set[int],
    sort: bool = True,
) -> list[tuple[bytes, int]]:
    """``(name, ino)`` of the entries of directory ``ino`` stored in ``runs`` (as
    :meth:`Ext4Reader.data_runs` gives them), sorted by name unless ``sort`` is false.

    Args:
        vol: the filesystem.
        runs: the directory's data runs.
        ino: the directory's inode, for messages.
        path: its path, for messages.
        seen_blocks: directory blocks read so far in this walk (updated).
        sort: sort by name.

    Raises:
        CorruptImage: bad records, a block used twice, duplicate names.
        LimitExceeded: more than ``limits.max_dir_entries`` entries.
    """
    names: list[tuple[bytes, int]] = []
    out = _collect(vol, runs, ino, path, seen_blocks, collect_dir_names, names)
    if sort:
        out.sort(key=_first)
    if len(dict(out)) != len(out):
        out.sort(key=_first)
        dupe = next(a for a, b in itertools.pairwise(out) if a[0] == b[0])
        raise CorruptImage(
            f"{where(vol, ino, path)}: name {quoted(dupe[0])} appears twice",
            subject=os.fsdecode(path),
        )
    return out


def list_inodes(
    vol: Volume, runs: Iterable[DataRun], *, ino: int, path: bytes, seen_blocks: set[int]
) -> tuple[list[int], dict[int, bytes]]:
    """The inode numbers of directory ``ino``'s entries (on-disk order), and the names of those
    whose entry type says directory: what summing sizes needs. Records are checked as by
    :func:`list_names`; names are not (read them with :func:`list_names` when a message must
    name another entry).

    Raises:
        CorruptImage: bad records, a block used twice.
        LimitExceeded: more than ``limits.max_dir_entries`` entries.
    """
    inos: list[int] = []
    dir_names: dict[int, bytes] = {}
    _collect(vol, runs, ino, path, seen_blocks, collect_dir_inodes, inos, dir_names)
    return inos, dir_names
