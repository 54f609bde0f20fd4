"""Tests for lcow.formats.verity (SPEC §8)."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest

from lcow.errors import CorruptImage, InvalidArgument
from lcow.formats.verity import (
    BLOCK_SIZE,
    SUPERBLOCK_SIZE,
    VerityInfo,
    append_hash_tree,
    build_verity_superblock,
    read_verity_superblock,
)

UUID = bytes(range(100, 116))


def _reference_tree(data: bytes) -> tuple[bytes, list[bytes]]:
    """Re-derive the tree the plain way: returns (root, levels top first)."""
    salt = bytes(32)
    blocks = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    levels: list[bytes] = []
    while True:
        hashes = b"".join(hashlib.sha256(salt + block).digest() for block in blocks)
        if len(hashes) % 4096:
            hashes += bytes(4096 - len(hashes) % 4096)
        levels.append(hashes)
        if len(hashes) == 4096:
            break
        blocks = [hashes[i : i + 4096] for i in range(0, len(hashes), 4096)]
    root = hashlib.sha256(salt + levels[-1]).digest()
    return root, levels[::-1]


def _make(tmp_path: Path, data: bytes, name: str = "img") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _append(
    path: Path, data_size: int, *, uuid: bytes | None = None, workers: int | None = None
) -> VerityInfo:
    fd = os.open(path, os.O_RDWR)
    try:
        return append_hash_tree(fd, data_size, uuid=uuid, workers=workers)
    finally:
        os.close(fd)


def _random_blocks(count: int) -> bytes:
    return os.urandom(count * BLOCK_SIZE)


@pytest.mark.parametrize(
    ("blocks", "levels"),
    [(1, 1), (2, 1), (3, 1), (128, 1), (129, 2), (300, 2), (128 * 128, 2), (128 * 128 + 1, 3)],
)
def test_tree_matches_reference(tmp_path: Path, blocks: int, levels: int) -> None:
    data = _random_blocks(blocks)
    path = _make(tmp_path, data)
    info = _append(path, len(data), uuid=UUID)

    root, expected_levels = _reference_tree(data)
    assert len(expected_levels) == levels
    assert info.root_hash == root
    assert info.root_hash_hex == root.hex()
    assert info.hash_offset == len(data)
    assert info.tree_offset == len(data) + SUPERBLOCK_SIZE
    assert info.data_blocks == blocks
    tree = b"".join(expected_levels)
    assert info.hash_size == SUPERBLOCK_SIZE + len(tree)

    contents = path.read_bytes()
    assert len(contents) == len(data) + info.hash_size
    assert contents[: len(data)] == data
    assert contents[info.tree_offset :] == tree
    # The top level is the block right after the superblock, and the root hashes it.
    top = contents[info.tree_offset : info.tree_offset + BLOCK_SIZE]
    assert hashlib.sha256(bytes(32) + top).digest() == root


def test_known_root_for_zero_blocks(tmp_path: Path) -> None:
    # Two zero blocks: both digests equal sha256(salt || zero block).
    zero_digest = hashlib.sha256(bytes(32 + 4096)).digest()
    top = (zero_digest * 2).ljust(4096, b"\0")
    expected = hashlib.sha256(bytes(32) + top).digest()
    path = _make(tmp_path, bytes(8192))
    assert _append(path, 8192).root_hash == expected


def test_superblock_fields(tmp_path: Path) -> None:
    data = _random_blocks(5)
    path = _make(tmp_path, data)
    info = _append(path, len(data), uuid=UUID)
    sb = path.read_bytes()[info.hash_offset : info.hash_offset + SUPERBLOCK_SIZE]

    # Raw offsets from SPEC §8 (little-endian).
    assert sb[0:8] == b"verity\0\0"
    assert struct.unpack_from("<I", sb, 8)[0] == 1
    assert struct.unpack_from("<I", sb, 12)[0] == 1
    assert sb[16:32] == UUID
    assert sb[32:64] == b"sha256".ljust(32, b"\0")
    assert struct.unpack_from("<II", sb, 64) == (4096, 4096)
    assert struct.unpack_from("<Q", sb, 72)[0] == 5
    assert struct.unpack_from("<H", sb, 80)[0] == 32
    assert sb[82:] == bytes(len(sb) - 82)  # zero salt, zero padding

    parsed = read_verity_superblock(sb)
    assert parsed.version == 1
    assert parsed.hash_type == 1
    assert parsed.uuid == UUID
    assert parsed.algorithm == "sha256"
    assert parsed.data_block_size == parsed.hash_block_size == 4096
    assert parsed.data_blocks == 5
    assert parsed.data_size == len(data)
    assert parsed.salt == bytes(32)


def test_uuid_derived_from_content(tmp_path: Path) -> None:
    """Two conversions of the same data write the same bytes: the UUID is the root hash's
    first 16 bytes, not random; different data gets a different UUID."""
    data = _random_blocks(2)
    a = _make(tmp_path, data, "a")
    b = _make(tmp_path, data, "b")
    info_a = _append(a, len(data))
    info_b = _append(b, len(data))
    assert info_a.root_hash == info_b.root_hash
    assert a.read_bytes() == b.read_bytes()
    uuid_a = read_verity_superblock(a.read_bytes()[len(data) :]).uuid
    assert uuid_a == info_a.root_hash[:16]
    other = _make(tmp_path, data[:-1] + b"x", "c")
    info_c = _append(other, len(data))
    assert read_verity_superblock(other.read_bytes()[len(data) :]).uuid != uuid_a
    assert info_c.root_hash != info_a.root_hash


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_workers_agree(tmp_path: Path, workers: int) -> None:
    data = _random_blocks(700)  # several 1 MiB chunks plus a partial one
    path = _make(tmp_path, data)
    assert _append(path, len(data), workers=workers).root_hash == _reference_tree(data)[0]


def test_sparse_file_same_as_dense(tmp_path: Path) -> None:
    size = 3 * 1024 * 1024 + 5 * BLOCK_SIZE
    pieces = {BLOCK_SIZE * 3: os.urandom(100), 2 * 1024 * 1024 + 17: os.urandom(9000)}
    sparse = tmp_path / "sparse"
    fd = os.open(sparse, os.O_RDWR | os.O_CREAT)
    try:
        os.ftruncate(fd, size)
        for offset, piece in pieces.items():
            os.pwrite(fd, piece, offset)
        dense_data = os.pread(fd, size, 0)
        info = append_hash_tree(fd, size)
    finally:
        os.close(fd)
    dense = _make(tmp_path, dense_data, "dense")
    assert info.root_hash == _append(dense, size).root_hash
    assert info.root_hash == _reference_tree(dense_data)[0]


def test_only_data_area_is_hashed(tmp_path: Path) -> None:
    data = _random_blocks(4)
    path = _make(tmp_path, data + b"old footer and more junk" * 1000)
    info = _append(path, len(data))
    assert info.root_hash == _reference_tree(data)[0]


def test_file_offset_untouched(tmp_path: Path) -> None:
    path = _make(tmp_path, _random_blocks(3))
    fd = os.open(path, os.O_RDWR)
    try:
        os.lseek(fd, 1234, os.SEEK_SET)
        append_hash_tree(fd, 3 * BLOCK_SIZE)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 1234
    finally:
        os.close(fd)


@pytest.mark.parametrize("data_size", [0, -4096, 100, 4097, 4096 * 3 - 1])
def test_bad_data_size(tmp_path: Path, data_size: int) -> None:
    path = _make(tmp_path, _random_blocks(3))
    with pytest.raises(InvalidArgument):
        _append(path, data_size)


def test_data_size_past_end_of_file(tmp_path: Path) -> None:
    path = _make(tmp_path, _random_blocks(3))
    with pytest.raises(InvalidArgument, match="end of the file"):
        _append(path, 4 * BLOCK_SIZE)


def test_bad_uuid(tmp_path: Path) -> None:
    path = _make(tmp_path, _random_blocks(1))
    with pytest.raises(InvalidArgument):
        _append(path, BLOCK_SIZE, uuid=b"too short")


def test_superblock_build_and_parse_errors() -> None:
    sb = build_verity_superblock(10, uuid=UUID)
    assert len(sb) == SUPERBLOCK_SIZE
    assert read_verity_superblock(sb[:512]).data_blocks == 10
    with pytest.raises(InvalidArgument):
        build_verity_superblock(0, uuid=UUID)
    with pytest.raises(CorruptImage, match="512"):
        read_verity_superblock(sb[:511])
    with pytest.raises(CorruptImage, match="signature"):
        read_verity_superblock(b"X" + sb[1:])
    bad_version = bytearray(sb)
    struct.pack_into("<I", bad_version, 8, 2)
    with pytest.raises(CorruptImage, match="version"):
        read_verity_superblock(bad_version)
    bad_salt = bytearray(sb)
    struct.pack_into("<H", bad_salt, 80, 257)
    with pytest.raises(CorruptImage, match="salt"):
        read_verity_superblock(bad_salt)
