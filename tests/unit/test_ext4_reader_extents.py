"""Block mapping of the ext4 reader on hand-built extent trees and block maps (issue 3).

Trees are built in memory (a dict of blocks) so every depth up to 5 and every hostile shape —
loops, shared subtrees, overlaps, entries outside their parent's range — can be tried.
"""

from __future__ import annotations

import struct

import pytest

from lcow.errors import CorruptImage
from lcow.formats.ext4.layout import EXTENT_ENTRY, EXTENT_HEADER, EXTENT_INDEX
from lcow.formats.ext4.read_extents import (
    DataRun,
    MapContext,
    blockmap_max_blocks,
    blockmap_runs,
    extent_runs,
)

BS = 1024
MAGIC = 0xF30A


def leaf(extents: list[tuple[int, int, int]], *, size: int = BS, max_entries: int = 0) -> bytes:
    """An extent leaf node: ``(logical, length, physical)``; length > 32768 = unwritten."""
    cap = max_entries or (size - 12) // 12
    body = EXTENT_HEADER.pack(MAGIC, len(extents), cap, 0, 0)
    for logical, length, physical in extents:
        body += EXTENT_ENTRY.pack(logical, length, physical >> 32, physical & 0xFFFFFFFF)
    return body.ljust(size, b"\0")


def index(
    depth: int, children: list[tuple[int, int]], *, size: int = BS, max_entries: int = 0
) -> bytes:
    """An index node of ``depth``: ``(logical, child block)``."""
    cap = max_entries or (size - 12) // 12
    body = EXTENT_HEADER.pack(MAGIC, len(children), cap, depth, 0)
    for logical, child in children:
        body += EXTENT_INDEX.pack(logical, child & 0xFFFFFFFF, child >> 32, 0)
    return body.ljust(size, b"\0")


def ctx(
    blocks: dict[int, bytes], *, blocks_count: int = 1 << 20, reads: list[int] | None = None
) -> MapContext:
    """A mapping context over in-memory blocks, recording reads in ``reads``."""

    def read_block(n: int) -> bytes:
        if reads is not None:
            reads.append(n)
        return blocks[n]

    return MapContext(
        ino=12,
        image="img",
        path=b"/f",
        block_size=BS,
        blocks_count=blocks_count,
        first_data_block=1,
        read_block=read_block,
    )


def runs(context: MapContext, root: bytes, nblocks: int) -> list[DataRun]:
    return list(extent_runs(context, root, nblocks))


def test_depth_zero_in_inode_with_holes_and_unwritten() -> None:
    root = leaf([(0, 2, 100), (2, 3, 102), (10, 32768 + 4, 500), (20, 1, 700)], size=60)
    assert runs(ctx({}), root, 25) == [
        DataRun(0, 100, 5),  # two physically contiguous extents coalesce
        DataRun(5, None, 15),  # hole, unwritten extent and hole read as zeros
        DataRun(20, 700, 1),
        DataRun(21, None, 4),  # trailing hole up to the size
    ]


def test_extents_past_the_size_are_clipped_and_not_read() -> None:
    root = index(1, [(0, 50), (100, 51)], size=60)
    blocks = {50: leaf([(0, 10, 1000)]), 51: leaf([(100, 10, 2000)])}
    reads: list[int] = []
    assert runs(ctx(blocks, reads=reads), root, 5) == [DataRun(0, 1000, 5)]
    assert reads == [50]
    assert runs(ctx({}), leaf([], size=60), 3) == [DataRun(0, None, 3)]
    assert runs(ctx({}), leaf([], size=60), 0) == []


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_trees_of_every_depth(depth: int) -> None:
    """A chain of index nodes down to a leaf with many extents, at each depth."""
    blocks: dict[int, bytes] = {}
    extents = [(i * 2, 1, 10_000 + i * 2) for i in range(80)]
    blocks[5000] = leaf(extents)
    child = 5000
    for level in range(1, depth):
        blocks[5000 + level] = index(level, [(0, child)])
        child = 5000 + level
    root = index(depth, [(0, child)], size=60)
    got = runs(ctx(blocks), root, 160)
    mapped = [r for r in got if r.physical is not None]
    assert mapped == [DataRun(i * 2, 10_000 + i * 2, 1) for i in range(80)]
    assert sum(r.length for r in got) == 160


def test_wide_tree_many_leaves() -> None:
    leaves = {
        100 + j: leaf([(j * 1000 + k * 10, 5, 50_000 + j * 1000 + k * 10) for k in range(84)])
        for j in range(4)
    }
    root = index(1, [(j * 1000, 100 + j) for j in range(4)], size=60)
    got = runs(ctx(leaves), root, 4000)
    assert sum(r.length for r in got if r.physical is not None) == 4 * 84 * 5


@pytest.mark.parametrize(
    ("root", "blocks", "message"),
    [
        pytest.param(b"\0" * 60, {}, "bad magic", id="no-magic"),
        pytest.param(
            leaf([(0, 1, 10)], size=60, max_entries=5), {}, "capacity", id="over-capacity"
        ),
        pytest.param(
            EXTENT_HEADER.pack(MAGIC, 3, 2, 0, 0).ljust(60, b"\0"), {}, "entries", id="count"
        ),
        pytest.param(index(6, [(0, 50)], size=60), {}, "depth 6", id="too-deep"),
        pytest.param(leaf([(0, 0, 10)], size=60), {}, "empty", id="zero-length"),
        pytest.param(leaf([(0, 5, 10), (3, 5, 20)], size=60), {}, "out of order", id="overlap"),
        pytest.param(leaf([(5, 1, 10), (2, 1, 20)], size=60), {}, "out of order", id="unsorted"),
        pytest.param(leaf([(0, 5, 0)], size=60), {}, "outside the filesystem", id="block-0"),
        pytest.param(
            leaf([(0, 5, (1 << 20) - 2)], size=60), {}, "outside the filesystem", id="past-end"
        ),
        pytest.param(leaf([((1 << 32) - 2, 5, 10)], size=60), {}, "out of order", id="past-2^32"),
        pytest.param(
            index(1, [(0, 50)], size=60),
            {50: index(1, [(0, 50)])},
            "depth 1, expected 0",
            id="self-loop",
        ),
        pytest.param(
            index(1, [(0, 50), (100, 50)], size=60),
            {50: leaf([(0, 1, 10)])},
            "twice",
            id="shared-leaf",
        ),
        pytest.param(
            index(2, [(0, 50)], size=60),
            {50: index(1, [(0, 51), (10, 51)]), 51: leaf([(0, 1, 10)])},
            "twice",
            id="diamond",
        ),
        pytest.param(
            index(1, [(0, 50), (10, 51)], size=60),
            {50: leaf([(5, 10, 10)]), 51: leaf([(10, 1, 30)])},
            "outside",
            id="leaf-beyond-parent-range",
        ),
        pytest.param(
            index(1, [(10, 50), (5, 51)], size=60), {}, "out of order", id="index-unsorted"
        ),
        pytest.param(index(1, [(0, 0)], size=60), {}, "outside the filesystem", id="child-0"),
    ],
)
def test_hostile_trees(root: bytes, blocks: dict[int, bytes], message: str) -> None:
    with pytest.raises(CorruptImage, match=message) as info:
        runs(ctx(blocks), root, 1 << 20)
    assert "inode 12" in str(info.value) and "/f" in str(info.value)


def test_exponential_fanout_is_refused_not_walked() -> None:
    """340 indexes at every level all naming the same child would be 340^4 leaves."""
    blocks = {50 + d: index(d, [(i * 10, 50 + d - 1) for i in range(84)]) for d in range(1, 4)}
    blocks[50] = leaf([(0, 1, 10)])
    root = index(4, [(0, 53)], size=60)
    with pytest.raises(CorruptImage):
        runs(ctx(blocks), root, 1 << 20)


def test_mapped_blocks_bounded_by_filesystem_size() -> None:
    root = leaf([(0, 100, 10), (100, 100, 10)], size=60)
    with pytest.raises(CorruptImage, match="more blocks than the filesystem"):
        runs(ctx({}, blocks_count=150), root, 300)


# -- ext2/3 block maps -----------------------------------------------------------------------


def i_block(words: list[int]) -> bytes:
    return struct.pack("<15I", *(words + [0] * (15 - len(words))))


def pointers(values: dict[int, int]) -> bytes:
    out = [0] * (BS // 4)
    for k, v in values.items():
        out[k] = v
    return struct.pack(f"<{BS // 4}I", *out)


def test_block_map_direct_indirect_double_triple() -> None:
    per = BS // 4
    blocks = {
        200: pointers({0: 300, 1: 301, 5: 305}),  # single indirect: logical 12, 13, 17
        201: pointers({2: 202}),  # double: second level at logical 12 + per + 2 * per
        202: pointers({0: 400}),
        203: pointers({1: 204}),  # triple
        204: pointers({0: 205}),
        205: pointers({3: 500}),
    }
    words = [10, 11, 0, 13] + [0] * 8 + [200, 201, 203]
    double_base = 12 + per
    triple_base = double_base + per * per
    target = triple_base + per * per + 3
    got = list(blockmap_runs(ctx(blocks), i_block(words), target + 1))
    mapped = [r for r in got if r.physical is not None]
    assert mapped == [
        DataRun(0, 10, 2),
        DataRun(3, 13, 1),
        DataRun(12, 300, 2),
        DataRun(17, 305, 1),
        DataRun(double_base + 2 * per, 400, 1),
        DataRun(target, 500, 1),
    ]
    assert sum(r.length for r in got) == target + 1
    assert blockmap_max_blocks(BS) == 12 + per + per**2 + per**3


def test_block_map_hostile() -> None:
    with pytest.raises(CorruptImage, match="twice"):
        list(blockmap_runs(ctx({200: pointers({0: 200})}), i_block([0] * 13 + [200]), 10_000))
    with pytest.raises(CorruptImage, match="outside"):
        list(blockmap_runs(ctx({}), i_block([1 << 30]), 1))
    with pytest.raises(CorruptImage, match="outside"):
        list(blockmap_runs(ctx({200: pointers({0: 1 << 30})}), i_block([0] * 12 + [200]), 20))
