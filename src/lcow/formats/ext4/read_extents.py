"""ext4 reader: mapping a file's logical blocks to disk blocks (SPEC §6.3).

Two mappings exist: extent trees (``EXTENTS_FL``; kernel ``fs/ext4/extents.c``) of any depth up
to :data:`MAX_EXTENT_DEPTH`, and the ext2/3 block map (12 direct pointers, then single, double
and triple indirect blocks). Both produce :class:`DataRun` items that tile ``[0, nblocks)`` in
order; holes and unwritten (preallocated) extents come out with ``physical=None`` because both
read as zeros.

Hostile trees are refused with :class:`~lcow.errors.CorruptImage`: bad magic, entry counts
above the node capacity, depth mismatches, unsorted or overlapping entries, entries outside
their parent's range, blocks outside the filesystem, a tree block reached twice (a loop or a
shared subtree), or more mapped blocks than the filesystem holds. Every node is read at most
once, so the work is bounded by the size of the image.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from lcow.errors import CorruptImage
from lcow.formats.ext4.layout import (
    EXT4_EXTENT_MAGIC,
    EXTENT_ENTRY,
    EXTENT_HEADER,
    EXTENT_INDEX,
    MAX_EXTENT_LEN,
)

__all__ = [
    "MAX_EXTENT_DEPTH",
    "MAX_LOGICAL_BLOCKS",
    "DataRun",
    "MapContext",
    "blockmap_max_blocks",
    "blockmap_runs",
    "extent_runs",
    "simple_extent_runs",
]

MAX_EXTENT_DEPTH = 5  # EXT4_MAX_EXTENT_DEPTH
MAX_LOGICAL_BLOCKS = 1 << 32  # ee_block and ei_block are 32-bit
_DIRECT_BLOCKS = 12  # EXT4_NDIR_BLOCKS
_I_BLOCK_WORDS = struct.Struct("<15I")
_EXTENT_TAIL = 4  # struct ext4_extent_tail: et_checksum
_ROOT_CAPACITY = 4  # extents in i_block after the header: (60 - 12) // 12


class DataRun(NamedTuple):
    """A run of logical blocks of one file.

    Attributes:
        logical: first logical block.
        physical: first physical block, or ``None`` for a hole or an unwritten extent (both
            read as zeros).
        length: blocks in the run.
    """

    logical: int
    physical: int | None
    length: int


@dataclass(frozen=True)
class MapContext:
    """What a mapping walk needs to know about the filesystem and the inode.

    Attributes:
        ino: inode number (for messages).
        image: image label for messages.
        path: a path naming the inode, for messages.
        block_size: filesystem block size.
        blocks_count: blocks in the filesystem.
        first_data_block: superblock block (0 or 1); no mapping may point at or below it.
        read_block: reads one filesystem block (bounds already checked by the caller).
        verify_extent_block: checks an extent block's ``metadata_csum`` tail (or ``None``).
    """

    ino: int
    image: str
    path: bytes | None
    block_size: int
    blocks_count: int
    first_data_block: int
    read_block: Callable[[int], bytes]
    verify_extent_block: Callable[[int, bytes, int], None] | None = None

    def corrupt(self, what: str) -> CorruptImage:
        """An error naming the image, inode and path."""
        if self.path is None:
            return CorruptImage(
                f"{self.image}: inode {self.ino}: {what}", subject=f"inode {self.ino}"
            )
        path = os.fsdecode(self.path)
        return CorruptImage(f"{self.image}: inode {self.ino} ({path}): {what}", subject=path)

    def check_blocks(self, first: int, count: int, what: str) -> None:
        """Refuse a block range outside the filesystem's data area."""
        if first <= self.first_data_block or first + count > self.blocks_count:
            raise self.corrupt(
                f"{what} at block {first} (+{count}) lies outside the filesystem "
                f"({self.blocks_count} blocks)"
            )


def _coalesce(runs: Iterator[DataRun]) -> Iterator[DataRun]:
    pending: DataRun | None = None
    for run in runs:
        if (
            pending is not None
            and pending.logical + pending.length == run.logical
            and (
                (pending.physical is None and run.physical is None)
                or (
                    pending.physical is not None
                    and run.physical is not None
                    and pending.physical + pending.length == run.physical
                )
            )
        ):
            pending = DataRun(pending.logical, pending.physical, pending.length + run.length)
            continue
        if pending is not None:
            yield pending
        pending = run
    if pending is not None:
        yield pending


def _fill(ctx: MapContext, mapped: Iterator[DataRun], nblocks: int) -> Iterator[DataRun]:
    """Clip sorted mapped runs to ``nblocks``, add holes between them, bound the total."""
    cursor = 0
    total = 0
    for run in mapped:
        if run.logical >= nblocks:
            break
        count = min(run.length, nblocks - run.logical)
        if run.logical > cursor:
            yield DataRun(cursor, None, run.logical - cursor)
        if run.physical is not None:
            total += count
            if total > ctx.blocks_count:
                raise ctx.corrupt("maps more blocks than the filesystem holds")
        yield DataRun(run.logical, run.physical, count)
        cursor = run.logical + count
    if cursor < nblocks:
        yield DataRun(cursor, None, nblocks - cursor)


def extent_runs(ctx: MapContext, i_block: bytes, nblocks: int) -> Iterator[DataRun]:
    """Runs of an extent-mapped file, tiling ``[0, nblocks)``.

    Args:
        ctx: filesystem and inode context.
        i_block: the inode's 60-byte ``i_block`` (the tree root).
        nblocks: logical blocks the file size covers; extents past it (preallocation) are
            ignored and their subtrees not read.

    Yields:
        Coalesced runs in logical order.

    Raises:
        CorruptImage: a malformed or hostile tree (see the module docstring).
    """
    seen: set[int] = set()
    mapped = _walk_node(ctx, i_block, None, 0, MAX_LOGICAL_BLOCKS, nblocks, seen)
    return _coalesce(_fill(ctx, mapped, nblocks))


def simple_extent_runs(
    i_block: bytes, nblocks: int, blocks_count: int, first_data_block: int
) -> list[DataRun] | None:
    """Runs of a file whose extent tree is only its root (depth 0), the common case, fast.

    Produces exactly what :func:`extent_runs` produces for such a tree, without building a
    :class:`MapContext`. Anything unusual — another depth, a bad header or entry — gives
    ``None``, and the caller falls back to :func:`extent_runs`, which explains the problem.

    Args:
        i_block: the inode's 60-byte ``i_block``.
        nblocks: logical blocks the file size covers.
        blocks_count: blocks in the filesystem.
        first_data_block: the superblock's block (0 or 1).

    Returns:
        Coalesced runs tiling ``[0, nblocks)``, or ``None``.
    """
    magic, entries, max_entries, depth, _ = EXTENT_HEADER.unpack_from(i_block)
    if (
        magic != EXT4_EXTENT_MAGIC
        or depth
        or not 0 < max_entries <= _ROOT_CAPACITY
        or entries > max_entries
    ):
        return None
    runs: list[DataRun] = []
    cursor = prev_end = total = 0
    for i in range(entries):
        ee_block, ee_len, start_hi, start_lo = EXTENT_ENTRY.unpack_from(i_block, 12 + 12 * i)
        unwritten = ee_len > MAX_EXTENT_LEN
        length = ee_len - MAX_EXTENT_LEN if unwritten else ee_len
        physical = (start_hi << 32) | start_lo
        if (
            length == 0
            or ee_block < prev_end
            or ee_block + length > MAX_LOGICAL_BLOCKS
            or physical <= first_data_block
            or physical + length > blocks_count
        ):
            return None
        if ee_block >= nblocks:
            break
        count = min(length, nblocks - ee_block)
        if ee_block > cursor:
            _push(runs, cursor, None, ee_block - cursor)
        if unwritten:
            _push(runs, ee_block, None, count)
        else:
            total += count
            if total > blocks_count:
                return None
            _push(runs, ee_block, physical, count)
        cursor = ee_block + count
        prev_end = ee_block + length
    if cursor < nblocks:
        _push(runs, cursor, None, nblocks - cursor)
    return runs


def _push(runs: list[DataRun], logical: int, physical: int | None, length: int) -> None:
    """Append a run, merging it into the previous one when they continue each other."""
    if runs:
        p_logical, p_physical, p_length = runs[-1]
        if p_logical + p_length == logical and (
            (p_physical is None and physical is None)
            or (
                p_physical is not None
                and physical is not None
                and p_physical + p_length == physical
            )
        ):
            runs[-1] = DataRun(p_logical, p_physical, p_length + length)
            return
    runs.append(DataRun(logical, physical, length))


def _walk_node(  # noqa: PLR0912, PLR0913, PLR0917 - hot loop: recursion per extent node with its range, stop block and loop guard; leaf and index inline (no extra generator per run)
    ctx: MapContext,
    node: bytes,
    expect_depth: int | None,
    lo: int,
    hi: int,
    limit: int,
    seen: set[int],
) -> Iterator[DataRun]:
    magic, entries, max_entries, depth, _ = EXTENT_HEADER.unpack_from(node)
    where = "extent root" if expect_depth is None else "extent block"
    if magic != EXT4_EXTENT_MAGIC:
        raise ctx.corrupt(f"{where} has bad magic {magic:#06x}")
    capacity = (len(node) - EXTENT_HEADER.size) // EXTENT_ENTRY.size
    if expect_depth is not None:
        capacity = (len(node) - EXTENT_HEADER.size - _EXTENT_TAIL) // EXTENT_ENTRY.size
    if max_entries == 0 or max_entries > capacity or entries > max_entries:
        raise ctx.corrupt(f"{where} has {entries} of {max_entries} entries (capacity {capacity})")
    if depth > MAX_EXTENT_DEPTH or (expect_depth is not None and depth != expect_depth):
        raise ctx.corrupt(f"{where} has depth {depth}, expected {expect_depth}")
    base = EXTENT_HEADER.size
    if depth == 0:
        prev_end = lo
        for i in range(entries):
            ee_block, ee_len, start_hi, start_lo = EXTENT_ENTRY.unpack_from(node, base + 12 * i)
            unwritten = ee_len > MAX_EXTENT_LEN
            length = ee_len - MAX_EXTENT_LEN if unwritten else ee_len
            if length == 0:
                raise ctx.corrupt(f"extent {i} at logical block {ee_block} is empty")
            if ee_block < prev_end or ee_block + length > hi:
                raise ctx.corrupt(
                    f"extent {i} [{ee_block}, {ee_block + length}) is out of order or outside "
                    f"its range [{prev_end}, {hi})"
                )
            physical = (start_hi << 32) | start_lo
            ctx.check_blocks(physical, length, f"extent {i}")
            if ee_block >= limit:
                return
            yield DataRun(ee_block, None if unwritten else physical, length)
            prev_end = ee_block + length
        return
    indexes = [EXTENT_INDEX.unpack_from(node, base + 12 * i) for i in range(entries)]
    for i, (ei_block, leaf_lo, leaf_hi, _) in enumerate(indexes):
        next_block = indexes[i + 1][0] if i + 1 < entries else hi
        if ei_block < lo or ei_block >= next_block or next_block > hi:
            raise ctx.corrupt(
                f"extent index {i} at logical block {ei_block} is out of order or outside "
                f"[{lo}, {hi})"
            )
        if ei_block >= limit:
            return
        child = (leaf_hi << 32) | leaf_lo
        ctx.check_blocks(child, 1, f"extent index {i} child")
        if child in seen:
            raise ctx.corrupt(f"extent tree reaches block {child} twice (loop)")
        seen.add(child)
        block = ctx.read_block(child)
        if ctx.verify_extent_block is not None:
            ctx.verify_extent_block(child, block, EXTENT_HEADER.size + 12 * _max_of(block))
        yield from _walk_node(ctx, block, depth - 1, ei_block, next_block, limit, seen)


def _max_of(block: bytes) -> int:
    max_entries: int = EXTENT_HEADER.unpack_from(block)[2]
    return max_entries


def blockmap_max_blocks(block_size: int) -> int:
    """Logical blocks an ext2/3 block map can address (12 + P + P² + P³, P = pointers/block)."""
    p = block_size // 4
    return _DIRECT_BLOCKS + p + p * p + p * p * p


def blockmap_runs(ctx: MapContext, i_block: bytes, nblocks: int) -> Iterator[DataRun]:
    """Runs of a block-mapped (ext2/3) file, tiling ``[0, nblocks)``.

    Args:
        ctx: filesystem and inode context.
        i_block: the inode's 60-byte ``i_block`` (12 direct, 3 indirect pointers).
        nblocks: logical blocks the file size covers.

    Yields:
        Coalesced runs in logical order.

    Raises:
        CorruptImage: pointers outside the filesystem, an indirect block reached twice.
    """
    return _coalesce(_fill(ctx, _blockmap(ctx, i_block, nblocks), nblocks))


def _blockmap(ctx: MapContext, i_block: bytes, nblocks: int) -> Iterator[DataRun]:
    words = _I_BLOCK_WORDS.unpack(i_block)
    seen: set[int] = set()
    for i in range(_DIRECT_BLOCKS):
        if i >= nblocks:
            return
        if words[i]:
            ctx.check_blocks(words[i], 1, f"block pointer {i}")
            yield DataRun(i, words[i], 1)
    per = ctx.block_size // 4
    start = _DIRECT_BLOCKS
    for level in (1, 2, 3):
        if start >= nblocks:
            return
        yield from _indirect(ctx, words[_DIRECT_BLOCKS + level - 1], level, start, nblocks, seen)
        start += per**level


def _indirect(  # noqa: PLR0913, PLR0917 - recursion per indirect-block level: pointer, level, logical start, bound and loop guard
    ctx: MapContext, ptr: int, level: int, start: int, nblocks: int, seen: set[int]
) -> Iterator[DataRun]:
    if ptr == 0:
        return
    ctx.check_blocks(ptr, 1, f"level-{level} indirect block")
    if ptr in seen:
        raise ctx.corrupt(f"block map reaches indirect block {ptr} twice (loop)")
    seen.add(ptr)
    per = ctx.block_size // 4
    words = struct.unpack(f"<{per}I", ctx.read_block(ptr))
    span = per ** (level - 1)
    for j, word in enumerate(words):
        child_start = start + j * span
        if child_start >= nblocks:
            return
        if not word:
            continue
        if level == 1:
            ctx.check_blocks(word, 1, f"data block pointer at logical block {child_start}")
            yield DataRun(child_start, word, 1)
        else:
            yield from _indirect(ctx, word, level - 1, child_start, nblocks, seen)
