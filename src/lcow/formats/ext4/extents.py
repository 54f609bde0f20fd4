"""Extent trees of any depth (SPEC §6.3; kernel docs "Extent Tree")."""

from __future__ import annotations

from collections.abc import Callable

from lcow.formats.ext4.layout import (
    BLOCK_SIZE,
    EXT4_EXTENT_MAGIC,
    EXTENT_ENTRY,
    EXTENT_HEADER,
    EXTENT_INDEX,
    EXTENTS_IN_INODE,
    EXTENTS_PER_BLOCK,
    MAX_EXTENT_LEN,
)

__all__ = ["Run", "build_extent_tree", "split_runs"]

# (logical block, physical block, length in blocks)
Run = tuple[int, int, int]


def split_runs(runs: list[Run]) -> list[Run]:
    """Split runs longer than one extent can map (32768 blocks)."""
    out: list[Run] = []
    for logical, physical, length in runs:
        while length > MAX_EXTENT_LEN:
            out.append((logical, physical, MAX_EXTENT_LEN))
            logical += MAX_EXTENT_LEN
            physical += MAX_EXTENT_LEN
            length -= MAX_EXTENT_LEN
        if length:
            out.append((logical, physical, length))
    return out


def _leaf_entries(runs: list[Run]) -> bytes:
    return b"".join(
        EXTENT_ENTRY.pack(lg, ln, (ph >> 32) & 0xFFFF, ph & 0xFFFFFFFF) for lg, ph, ln in runs
    )


def _index_entries(children: list[tuple[int, int]]) -> bytes:
    return b"".join(
        EXTENT_INDEX.pack(first, blk & 0xFFFFFFFF, (blk >> 32) & 0xFFFF, 0)
        for first, blk in children
    )


def build_extent_tree(
    runs: list[Run], alloc: Callable[[int], int]
) -> tuple[bytes, list[tuple[int, bytes]], int]:
    """Build the tree mapping ``runs`` (sorted, each ≤ 32768 blocks).

    Args:
        runs: the file's extents.
        alloc: returns the first of ``n`` consecutive new blocks for tree nodes.

    Returns:
        ``(i_block, node_blocks, tree_block_count)``: the 60-byte root for the inode, the
        ``(block number, 4 KiB content)`` of every leaf and index block, and how many there are.
    """
    if len(runs) <= EXTENTS_IN_INODE:
        root = EXTENT_HEADER.pack(EXT4_EXTENT_MAGIC, len(runs), EXTENTS_IN_INODE, 0, 0)
        root += _leaf_entries(runs)
        return root.ljust(60, b"\x00"), [], 0

    nodes: list[tuple[int, bytes]] = []
    # Level 0: leaves of up to 340 extents; each level above indexes the one below.
    level: list[tuple[int, bytes]] = []  # (first logical block, packed entries)
    for i in range(0, len(runs), EXTENTS_PER_BLOCK):
        chunk = runs[i : i + EXTENTS_PER_BLOCK]
        level.append((chunk[0][0], _leaf_entries(chunk)))
    counts = [min(EXTENTS_PER_BLOCK, len(runs) - i) for i in range(0, len(runs), EXTENTS_PER_BLOCK)]
    depth = 0
    while True:
        first_block = alloc(len(level))
        children: list[tuple[int, int]] = []
        for k, ((first, body), count) in enumerate(zip(level, counts, strict=True)):
            header = EXTENT_HEADER.pack(EXT4_EXTENT_MAGIC, count, EXTENTS_PER_BLOCK, depth, 0)
            nodes.append((first_block + k, (header + body).ljust(BLOCK_SIZE, b"\x00")))
            children.append((first, first_block + k))
        depth += 1
        if len(children) <= EXTENTS_IN_INODE:
            root = EXTENT_HEADER.pack(EXT4_EXTENT_MAGIC, len(children), EXTENTS_IN_INODE, depth, 0)
            root += _index_entries(children)
            return root.ljust(60, b"\x00"), nodes, len(nodes)
        level = []
        counts = []
        for i in range(0, len(children), EXTENTS_PER_BLOCK):  # next level up: index nodes
            group = children[i : i + EXTENTS_PER_BLOCK]
            level.append((group[0][0], _index_entries(group)))
            counts.append(len(group))
