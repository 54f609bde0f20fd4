"""Tests for lcow.formats.vhd.footer (SPEC §7.1)."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest
import xxhash

from lcow.errors import CorruptImage, InvalidArgument
from lcow.formats.vhd.footer import (
    FIXED_TIMESTAMP,
    FOOTER_SIZE,
    VhdFooter,
    append_fixed_footer,
    build_fixed_footer,
    chs_geometry,
    parse_footer,
    read_footer,
)
from lcow.formats.vhd.identity import unique_id, unique_id_of

UID = bytes(range(16))
MiB = 1 << 20
GiB = 1 << 30


def _reference_checksum(raw: bytes | bytearray) -> int:
    """Ones' complement of the sum of all bytes except those at 64..67."""
    return ~(sum(raw[:64]) + sum(raw[68:])) & 0xFFFFFFFF


def _tar2ext4_footer(size: int, unique_id: bytes = UID) -> bytes:
    """A footer laid out as hcsshim tar2ext4 writes it, built field by field."""
    raw = bytearray(FOOTER_SIZE)
    raw[0:8] = b"conectix"
    struct.pack_into(">I", raw, 8, 2)
    struct.pack_into(">I", raw, 12, 0x00010000)
    struct.pack_into(">Q", raw, 16, 0xFFFFFFFFFFFFFFFF)
    # 24 timestamp, 28 creator app, 36 host OS, 56 geometry: all zero
    struct.pack_into(">I", raw, 32, 0x000A0000)
    struct.pack_into(">Q", raw, 40, size)
    struct.pack_into(">Q", raw, 48, size)
    struct.pack_into(">I", raw, 60, 2)
    raw[68:84] = unique_id
    struct.pack_into(">I", raw, 64, _reference_checksum(raw))
    return bytes(raw)


def test_build_layout_matches_spec_table() -> None:
    raw = build_fixed_footer(64 * MiB, timestamp=0x12345678, unique_id=UID)
    assert len(raw) == FOOTER_SIZE
    assert raw[0:8] == b"conectix"
    assert struct.unpack_from(">I", raw, 8)[0] == 2
    assert struct.unpack_from(">I", raw, 12)[0] == 0x00010000
    assert raw[16:24] == b"\xff" * 8
    assert struct.unpack_from(">I", raw, 24)[0] == 0x12345678
    assert raw[28:32] == b"win "
    assert struct.unpack_from(">I", raw, 32)[0] == 0x000A0000
    assert raw[36:40] == b"Wi2k"
    assert struct.unpack_from(">QQ", raw, 40) == (64 * MiB, 64 * MiB)
    geometry = struct.unpack_from(">I", raw, 56)[0]
    assert (geometry >> 16, (geometry >> 8) & 0xFF, geometry & 0xFF) == (963, 8, 17)
    assert struct.unpack_from(">I", raw, 60)[0] == 2
    assert struct.unpack_from(">I", raw, 64)[0] == _reference_checksum(raw)
    assert raw[68:84] == UID
    assert raw[84:] == bytes(FOOTER_SIZE - 84)


def test_round_trip() -> None:
    size = 123 * MiB
    footer = parse_footer(build_fixed_footer(size, timestamp=777, unique_id=UID))
    assert footer.cookie == b"conectix"
    assert footer.features == 2
    assert footer.version == 0x00010000
    assert footer.data_offset == 0xFFFFFFFFFFFFFFFF
    assert footer.timestamp == 777
    assert footer.creator_app == b"win "
    assert footer.creator_version == 0x000A0000
    assert footer.creator_os == b"Wi2k"
    assert footer.original_size == size
    assert footer.current_size == size
    assert footer.geometry == chs_geometry(size)
    assert footer.disk_type == 2
    assert footer.is_fixed
    assert footer.unique_id == UID
    assert footer.saved_state == 0


def _piece_digest_id(data: bytes) -> bytes:
    """The unique id rule written out independently: XXH3-128 over the XXH3-128 digests of the
    1 MiB pieces of the disk data."""
    pieces = [data[i : i + MiB] for i in range(0, len(data), MiB)]
    return xxhash.xxh3_128(b"".join(xxhash.xxh3_128(p).digest() for p in pieces)).digest()


def _footed(path: Path, data: bytes, *, sparse_tail: int = 0) -> VhdFooter:
    with path.open("wb") as f:
        f.write(data)
        f.truncate(len(data) + sparse_tail)
    fd = os.open(path, os.O_RDWR)
    try:
        append_fixed_footer(fd, len(data) + sparse_tail)
    finally:
        os.close(fd)
    footer = read_footer(path)
    assert footer is not None
    return footer


def test_defaults_are_fixed_time_and_content_id(tmp_path: Path) -> None:
    """Footers lcow appends carry no creation time and no random id: the same disk data
    gives the same footer, other data another id (the rule of lcow.formats.vhd.identity)."""
    data = os.urandom(3 * MiB + 4096)  # several pieces and a short last one
    a = _footed(tmp_path / "a.vhd", data)
    time.sleep(1.1)  # a wall clock in the footer would now differ
    b = _footed(tmp_path / "b.vhd", data)
    assert a.timestamp == b.timestamp == FIXED_TIMESTAMP == 0
    assert a.unique_id == b.unique_id == _piece_digest_id(data)
    assert (tmp_path / "a.vhd").read_bytes() == (tmp_path / "b.vhd").read_bytes()
    other = _footed(tmp_path / "c.vhd", data[:-1] + bytes([data[-1] ^ 1]))
    assert other.unique_id != a.unique_id
    assert (a.creator_app, a.creator_version, a.creator_os) == (b"win ", 0x000A0000, b"Wi2k")


@pytest.mark.parametrize("tail", [4096, 5 * MiB, 5 * MiB + 4096])
def test_content_id_of_a_sparse_image_counts_its_holes(tmp_path: Path, tail: int) -> None:
    """Pieces in holes are not read but hash as the zeros they read as."""
    data = os.urandom(MiB + 8192)
    footer = _footed(tmp_path / "s.vhd", data, sparse_tail=tail)
    assert footer.unique_id == _piece_digest_id(data + bytes(tail))
    dense = _footed(tmp_path / "d.vhd", data + bytes(tail))
    assert dense.unique_id == footer.unique_id


def test_content_id_from_a_file_and_from_memory_agree(tmp_path: Path) -> None:
    path = tmp_path / "w"
    data = os.urandom(4 * MiB + 512)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert unique_id(fd, len(data)) == _piece_digest_id(data)
        assert unique_id_of(data) == _piece_digest_id(data)
        with pytest.raises(InvalidArgument, match="past the end"):
            unique_id(fd, len(data) + 512)
    finally:
        os.close(fd)


@pytest.mark.parametrize("offset", [0, 8, 24, 40, 56, 64, 67, 68, 100, 511])
def test_corruption_detected(offset: int) -> None:
    raw = bytearray(build_fixed_footer(8 * MiB, unique_id=UID))
    raw[offset] ^= 0x01
    with pytest.raises(CorruptImage) as info:
        parse_footer(bytes(raw))
    expected = "cookie" if offset < 8 else "checksum"
    assert expected in str(info.value)


def test_wrong_length_rejected() -> None:
    raw = build_fixed_footer(8 * MiB, unique_id=UID)
    with pytest.raises(CorruptImage, match="512"):
        parse_footer(raw[:-1])
    with pytest.raises(CorruptImage, match="512"):
        parse_footer(raw + b"\0")


def test_tar2ext4_variant_accepted() -> None:
    footer = parse_footer(_tar2ext4_footer(64 * MiB))
    assert footer.timestamp == 0
    assert footer.creator_app == bytes(4)
    assert footer.creator_os == bytes(4)
    assert footer.geometry == (0, 0, 0)
    assert footer.current_size == footer.original_size == 64 * MiB
    assert footer.is_fixed
    assert footer.unique_id == UID


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        # 1 sector: 17 sectors/track, fewer than 4 heads is raised to 4.
        (512, (0, 4, 17)),
        # 131072 sectors: 131072 // 17 = 7710 = C*H; H = ceil(7710 / 1024) = 8; C = 963.
        (64 * MiB, (963, 8, 17)),
        # 2097152 sectors: 17 spt would need 121 heads; 31 spt gives C*H = 67650 >= 16384,
        # so 63 spt, 16 heads, C*H = 33288, C = 2080.
        (1 * GiB, (2080, 16, 63)),
        # 65535*16*63 sectors exactly switches to 255 sectors per track.
        (65535 * 16 * 63 * 512, (16191, 16, 255)),
        # one sector less stays at 63: C*H = 1048559, C = 65534.
        (65535 * 16 * 63 * 512 - 512, (65534, 16, 63)),
        # 40 GiB: 83886080 // 255 = 328965 = C*H, C = 20560.
        (40 * GiB, (20560, 16, 255)),
        # The cap: 65535*16*255 sectors and anything larger.
        (65535 * 16 * 255 * 512, (65535, 16, 255)),
        (2 * 1024 * GiB, (65535, 16, 255)),
        (64 * 1024 * GiB, (65535, 16, 255)),
    ],
)
def test_chs_geometry(size: int, expected: tuple[int, int, int]) -> None:
    assert chs_geometry(size) == expected


@pytest.mark.parametrize("sectors", [1, 7, 4095, 65536, 1 << 21, 3_000_000, 70_000_000, 1 << 40])
def test_chs_geometry_never_exceeds_disk(sectors: int) -> None:
    cylinders, heads, spt = chs_geometry(sectors * 512)
    assert cylinders * heads * spt <= min(sectors, 65535 * 16 * 255)
    assert 0 <= cylinders <= 65535
    assert 4 <= heads <= 16
    assert spt in (17, 31, 63, 255)


@pytest.mark.parametrize("size", [0, -512, 1, 511, 513, 1000])
def test_bad_sizes(size: int) -> None:
    with pytest.raises(InvalidArgument):
        build_fixed_footer(size, unique_id=UID)
    with pytest.raises(ValueError):
        chs_geometry(size)


def test_bad_unique_id_and_timestamp() -> None:
    with pytest.raises(InvalidArgument):
        build_fixed_footer(4096, unique_id=b"short")
    with pytest.raises(InvalidArgument):
        build_fixed_footer(4096, timestamp=1 << 32, unique_id=UID)
    with pytest.raises(InvalidArgument):
        build_fixed_footer(4096, timestamp=-1, unique_id=UID)


def test_append_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "layer.vhd"
    data = os.urandom(8192)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    try:
        os.lseek(fd, 100, os.SEEK_SET)
        append_fixed_footer(fd, len(data), timestamp=5, unique_id=UID)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 100
        footer = read_footer(fd)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 100
    finally:
        os.close(fd)
    assert footer is not None
    assert footer.current_size == len(data)
    assert footer.timestamp == 5
    contents = path.read_bytes()
    assert len(contents) == len(data) + FOOTER_SIZE
    assert contents[: len(data)] == data
    assert read_footer(path) == footer
    assert read_footer(str(path)) == footer


def test_append_cuts_stale_tail(tmp_path: Path) -> None:
    path = tmp_path / "layer.vhd"
    path.write_bytes(bytes(4096) + b"x" * 5000)
    fd = os.open(path, os.O_RDWR)
    try:
        append_fixed_footer(fd, 4096)
    finally:
        os.close(fd)
    assert path.stat().st_size == 4096 + FOOTER_SIZE
    assert read_footer(path) is not None


def test_read_footer_unfooted(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_bytes(b"conectix")
    assert read_footer(short) is None

    plain = tmp_path / "plain"
    plain.write_bytes(bytes(8192))
    assert read_footer(plain) is None

    bad = tmp_path / "bad"
    raw = bytearray(build_fixed_footer(4096, unique_id=UID))
    raw[200] ^= 0xFF
    bad.write_bytes(bytes(4096) + bytes(raw))
    assert read_footer(bad) is None

    hcs = tmp_path / "hcs"
    hcs.write_bytes(bytes(4096) + _tar2ext4_footer(4096))
    found = read_footer(hcs)
    assert found is not None
    assert found.creator_app == bytes(4)
