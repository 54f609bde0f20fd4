"""The dynamic VHDX writer, checked by structure and by read-back (SPEC §7.2, issue 4 item 4).

Layout (headers, region tables, metadata, BAT sizing at chunk-ratio boundaries) is checked byte
by byte against MS-VHDX; content is read back through :mod:`lcow.formats.vhd.vhdx` (another
engineer's reader) and :func:`lcow.formats.source.open_source`. No tools, no privileges:
``qemu-img`` checks live in ``tests/integration/test_sandbox_tools.py``.
"""

from __future__ import annotations

import errno
import os
import random
import struct
import uuid
from pathlib import Path

import pytest

from lcow.errors import CorruptImage, FailedPrecondition, InvalidArgument
from lcow.formats.source import open_source
from lcow.formats.vhd import vhdx_writer
from lcow.formats.vhd.vhdx import (
    BAT_GUID,
    HEADER_OFFSETS,
    HEADER_SIZE,
    METADATA_GUID,
    MIB,
    REGION_TABLE_OFFSETS,
    REGION_TABLE_SIZE,
    BatState,
    VhdxImage,
    crc32c_of,
)
from lcow.formats.vhd.vhdx_writer import (
    MAX_VIRTUAL_SIZE,
    VhdxBlockWriter,
    VhdxLayout,
    create_dynamic_vhdx,
    raw_to_dynamic_vhdx,
)

GIB = 1 << 30
TIB = 1 << 40
_HEADER = struct.Struct("<4sIQ16s16s16sHHIQ")
_REGION_ENTRY = struct.Struct("<16sQII")
_METADATA_ENTRY = struct.Struct("<16sIII4s")


def _read(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _image(path: Path) -> VhdxImage:
    return VhdxImage(os.open(path, os.O_RDONLY), name=str(path), owns_fd=True)


def _header_fields(path: Path, slot: int) -> tuple[object, ...]:
    return _HEADER.unpack_from(_read(path, HEADER_OFFSETS[slot], HEADER_SIZE))


# -- create_dynamic_vhdx: structure ---------------------------------------------------------


def test_empty_disk_structures(tmp_path: Path) -> None:
    path = tmp_path / "d.vhdx"
    disk_id = uuid.UUID("12345678-9abc-def0-1234-56789abcdef0")
    create_dynamic_vhdx(path, 20 * GIB, disk_id=disk_id)

    ident = _read(path, 0, 64 * 1024)
    assert ident[:8] == b"vhdxfile"
    assert ident[8 : 8 + 8] == "lcow".encode("utf-16-le")
    assert ident[16:] == bytes(len(ident) - 16)

    raws = [_read(path, off, HEADER_SIZE) for off in HEADER_OFFSETS]
    fields = [_HEADER.unpack_from(raw) for raw in raws]
    for raw, (sig, checksum, *_rest) in zip(raws, fields, strict=True):
        assert sig == b"head"
        assert checksum == crc32c_of(raw)
        assert raw[_HEADER.size :] == bytes(HEADER_SIZE - _HEADER.size)
    assert [f[2] for f in fields] == [1, 2]  # sequence numbers: the second is current
    for f in fields:
        _, _, _, fwg, dwg, log, log_version, version, log_len, log_off = f
        assert fwg == fields[0][3] and dwg == fields[0][4]
        assert uuid.UUID(bytes_le=fwg) != uuid.UUID(int=0)
        assert log == bytes(16)  # empty log
        assert (log_version, version) == (0, 1)
        assert (log_off, log_len) == (MIB, MIB)

    tables = [_read(path, off, REGION_TABLE_SIZE) for off in REGION_TABLE_OFFSETS]
    assert tables[0] == tables[1]
    table = tables[0]
    assert table[:4] == b"regi"
    assert struct.unpack_from("<I", table, 4)[0] == crc32c_of(table)
    assert struct.unpack_from("<I", table, 8)[0] == 2
    entries = [_REGION_ENTRY.unpack_from(table, 16 + 32 * i) for i in range(2)]
    assert entries == [
        (BAT_GUID.bytes_le, 3 * MIB, MIB, 1),
        (METADATA_GUID.bytes_le, 2 * MIB, MIB, 1),
    ]
    assert table[16 + 64 :] == bytes(REGION_TABLE_SIZE - 16 - 64)

    assert path.stat().st_size == 4 * MIB
    assert _read(path, 3 * MIB, MIB) == bytes(MIB)  # every BAT entry NOT_PRESENT
    assert _read(path, MIB, MIB) == bytes(MIB)  # log region untouched

    with _image(path) as img:
        md = img.metadata
        assert md.block_size == MIB
        assert not md.leave_blocks_allocated and not md.has_parent
        assert md.virtual_disk_size == 20 * GIB
        assert (md.logical_sector_size, md.physical_sector_size) == (512, 4096)
        assert md.virtual_disk_id == disk_id
        assert img.header.sequence_number == 2
        assert img.chunk_ratio == 4096
        assert img.block_count == 20480
        assert img.block_state(0) == (BatState.NOT_PRESENT, 0)
        assert img.block_state(20479) == (BatState.NOT_PRESENT, 0)
        assert img.pread(20 * GIB - 4096, 4096) == bytes(4096)


def test_metadata_items_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "d.vhdx"
    create_dynamic_vhdx(path, 64 * MIB)
    table = _read(path, 2 * MIB, 64 * 1024)
    assert table[:8] == b"metadata"
    count = struct.unpack_from("<H", table, 10)[0]
    assert count == 5
    items = {}
    for i in range(count):
        guid, offset, length, flags, _ = _METADATA_ENTRY.unpack_from(table, 32 + 32 * i)
        assert offset >= 64 * 1024
        items[uuid.UUID(bytes_le=guid)] = (_read(path, 2 * MIB + offset, length), flags)
    by_name = {
        "file parameters": ("CAA16737-FA36-4D43-B3B6-33F0AA44E76B", struct.pack("<II", MIB, 0), 4),
        "virtual size": ("2FA54224-CD1B-4876-B211-5DBED83BF4B8", struct.pack("<Q", 64 * MIB), 6),
        "logical sector": ("8141BF1D-A96F-4709-BA47-F233A8FAAB5F", struct.pack("<I", 512), 6),
        "physical sector": ("CDA348C7-445D-4471-9CC9-E9885251C556", struct.pack("<I", 4096), 6),
    }
    for label, (guid, value, flags) in by_name.items():
        assert items[uuid.UUID(guid)] == (value, flags), label
    page83, flags = items[uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")]
    assert len(page83) == 16 and flags == 6


@pytest.mark.parametrize(
    ("virtual_size", "block_size", "logical", "blocks", "ratio", "entries"),
    [
        (MIB, MIB, 512, 1, 4096, 1),
        (512, MIB, 512, 1, 4096, 1),  # one sector: a partial block
        (4096 * MIB, MIB, 512, 4096, 4096, 4096),  # exactly one chunk: no bitmap entry
        (4097 * MIB, MIB, 512, 4097, 4096, 4098),  # one past: a bitmap entry in between
        (8193 * MIB, MIB, 512, 8193, 4096, 8195),
        (20 * GIB, MIB, 512, 20480, 4096, 20484),
        (5 * GIB + 512, MIB, 512, 5121, 4096, 5122),
        (20 * GIB, 32 * MIB, 512, 640, 128, 644),
        (20 * GIB, 256 * MIB, 512, 80, 16, 84),
        (20 * GIB, MIB, 4096, 20480, 32768, 20480),
        (MAX_VIRTUAL_SIZE, MIB, 512, 64 * MIB, 4096, 64 * MIB + 16383),
    ],
)
def test_bat_sizing(
    tmp_path: Path,
    virtual_size: int,
    block_size: int,
    logical: int,
    blocks: int,
    ratio: int,
    entries: int,
) -> None:
    layout = VhdxLayout(virtual_size, block_size, logical)
    assert (layout.block_count, layout.chunk_ratio, layout.bat_entries) == (blocks, ratio, entries)
    bat_length = -(-entries * 8 // MIB) * MIB
    assert layout.bat_length == bat_length
    assert layout.payload_offset == 3 * MIB + bat_length
    # Every sector-bitmap slot is skipped by the payload index mapping.
    assert layout.bat_index(blocks - 1) == entries - 1

    path = tmp_path / "d.vhdx"
    create_dynamic_vhdx(path, virtual_size, block_size=block_size, logical_sector=logical)
    assert path.stat().st_size == layout.payload_offset
    assert path.stat().st_blocks * 512 <= 256 * 1024  # sparse, whatever the BAT length
    with _image(path) as img:
        assert (img.block_count, img.chunk_ratio) == (blocks, ratio)
        assert img.size == virtual_size
        assert img.metadata.logical_sector_size == logical
        bat = next(r for r in img.regions if r.guid == BAT_GUID)
        assert (bat.file_offset, bat.length) == (3 * MIB, bat_length)
        assert img.block_state(blocks - 1) == (BatState.NOT_PRESENT, 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"virtual_size": 0},
        {"virtual_size": -512},
        {"virtual_size": 513},  # not a sector multiple
        {"virtual_size": 4096 + 512, "logical_sector": 4096},
        {"virtual_size": MAX_VIRTUAL_SIZE + 512},
        {"virtual_size": GIB, "block_size": 3 * MIB},
        {"virtual_size": GIB, "block_size": MIB // 2},
        {"virtual_size": GIB, "block_size": 512 * MIB},
        {"virtual_size": GIB, "logical_sector": 1024},
        {"virtual_size": GIB, "physical_sector": 2048},
    ],
)
def test_invalid_parameters(tmp_path: Path, kwargs: dict[str, int]) -> None:
    path = tmp_path / "d.vhdx"
    with pytest.raises(InvalidArgument) as info:
        create_dynamic_vhdx(
            path,
            kwargs["virtual_size"],
            block_size=kwargs.get("block_size", MIB),
            logical_sector=kwargs.get("logical_sector", 512),
            physical_sector=kwargs.get("physical_sector", 4096),
        )
    assert isinstance(info.value, ValueError)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary left behind


def test_descriptor_output_is_truncated_first(tmp_path: Path) -> None:
    path = tmp_path / "d.vhdx"
    path.write_bytes(b"\xff" * (6 * MIB))
    fd = os.open(path, os.O_RDWR)
    try:
        create_dynamic_vhdx(fd, 8 * MIB)
    finally:
        os.close(fd)
    assert path.stat().st_size == 4 * MIB
    with open_source(path) as src:
        assert src.size == 8 * MIB
        assert src.pread(0, 8 * MIB) == bytes(8 * MIB)


# -- raw_to_dynamic_vhdx --------------------------------------------------------------------


def _sparse_raw(path: Path, size: int, writes: list[tuple[int, bytes]]) -> bytes:
    model = bytearray(size)
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in writes:
            f.seek(offset)
            f.write(data)
            model[offset : offset + len(data)] = data
    return bytes(model)


def test_raw_conversion_reads_back(tmp_path: Path) -> None:
    size = 16 * MIB + 3 * 512  # partial last block
    rng = random.Random(4)
    writes = [
        (0, b"\x01"),  # first byte
        (MIB - 3, b"abcdef"),  # straddles blocks 0 and 1
        (3 * MIB, bytes(MIB)),  # explicit zeros: data to SEEK_DATA, never stored
        (5 * MIB + 4096 * 7, rng.randbytes(100)),  # one page of a block
        (9 * MIB, rng.randbytes(2 * MIB + 17)),  # whole blocks
        (size - 1, b"\xff"),  # last byte, in the partial block
    ]
    raw = tmp_path / "in.raw"
    model = _sparse_raw(raw, size, writes)
    out = tmp_path / "out.vhdx"
    fd = os.open(raw, os.O_RDONLY)
    try:
        stored = raw_to_dynamic_vhdx(fd, out, size)
    finally:
        os.close(fd)
    present = [0, 1, 5, 9, 10, 11, 16]
    assert stored == len(present)
    layout = VhdxLayout(size)
    assert out.stat().st_size == layout.payload_offset + stored * MIB
    with _image(out) as img:
        assert img.pread(0, size) == model
        offsets = []
        for block in range(img.block_count):
            state, host = img.block_state(block)
            if block in present:
                assert state is BatState.FULLY_PRESENT
                offsets.append(host)
            else:
                assert state is BatState.NOT_PRESENT
        # appended in disk order right after the BAT, 1 MiB apart
        assert offsets == [layout.payload_offset + i * MIB for i in range(stored)]
    with open_source(out) as src:
        assert src.pread(MIB - 3, 6) == b"abcdef"
    # Zero pages inside stored blocks stay holes: block 5 holds one page of data.
    assert out.stat().st_blocks * 512 < (stored - 1) * MIB


def test_raw_shorter_than_disk_and_bigger_refused(tmp_path: Path) -> None:
    raw = tmp_path / "in.raw"
    model = _sparse_raw(raw, 3 * MIB + 5, [(3 * MIB, b"tail!")])
    fd = os.open(raw, os.O_RDONLY)
    try:
        out = tmp_path / "out.vhdx"
        assert raw_to_dynamic_vhdx(fd, out, 8 * MIB) == 1
        with open_source(out) as src:
            assert src.size == 8 * MIB
            assert src.pread(0, 8 * MIB) == model + bytes(8 * MIB - len(model))
        refused = tmp_path / "refused.vhdx"
        with pytest.raises(InvalidArgument, match="does not fit"):
            raw_to_dynamic_vhdx(fd, refused, 3 * MIB)
        assert not refused.exists()
    finally:
        os.close(fd)


def test_raw_all_holes_gives_empty_disk(tmp_path: Path) -> None:
    raw = tmp_path / "in.raw"
    with open(raw, "wb") as f:
        f.truncate(20 * GIB)
    fd = os.open(raw, os.O_RDONLY)
    try:
        assert raw_to_dynamic_vhdx(fd, tmp_path / "out.vhdx", 20 * GIB) == 0
    finally:
        os.close(fd)
    assert (tmp_path / "out.vhdx").stat().st_size == 4 * MIB


@pytest.mark.parametrize(("block_size", "logical"), [(2 * MIB, 4096), (32 * MIB, 512)])
def test_raw_conversion_other_geometries(tmp_path: Path, block_size: int, logical: int) -> None:
    size = 96 * MIB
    rng = random.Random(block_size)
    writes = [(rng.randrange(size - 5000), rng.randbytes(5000)) for _ in range(10)]
    raw = tmp_path / "in.raw"
    model = _sparse_raw(raw, size, writes)
    fd = os.open(raw, os.O_RDONLY)
    try:
        raw_to_dynamic_vhdx(
            fd, tmp_path / "out.vhdx", size, block_size=block_size, logical_sector=logical
        )
    finally:
        os.close(fd)
    with _image(tmp_path / "out.vhdx") as img:
        assert img.metadata.block_size == block_size
        assert img.pread(0, size) == model


# -- VhdxBlockWriter ------------------------------------------------------------------------


def _state(path: Path, block: int) -> tuple[BatState, int]:
    with _image(path) as img:
        return img.block_state(block)


def test_block_writer_allocates_on_write(tmp_path: Path) -> None:
    path = tmp_path / "d.vhdx"
    create_dynamic_vhdx(path, 64 * MIB)
    payload = 4 * MIB
    with VhdxBlockWriter.open(path) as w:
        assert (w.size, w.block_size) == (64 * MIB, MIB)
        w.pwrite(3 * MIB + 10, b"hello")
        assert w.pread(3 * MIB + 8, 9) == b"\0\0hello\0\0"
        assert path.stat().st_size == payload + MIB
        # Pending: the BAT on disk does not point at the block before a flush.
        assert _state(path, 3) == (BatState.NOT_PRESENT, 0)
        w.flush()
        assert _state(path, 3) == (BatState.FULLY_PRESENT, payload)

        w.pwrite(3 * MIB + 12, b"LL")  # inside the stored block: no allocation
        assert path.stat().st_size == payload + MIB

        w.pwrite(8 * MIB - 2, b"span")  # across blocks 7 and 8: two blocks, in write order
        assert path.stat().st_size == payload + 3 * MIB
    with _image(path) as img:
        assert img.pread(3 * MIB + 10, 5) == b"heLLo"
        assert img.pread(8 * MIB - 2, 4) == b"span"
        assert img.block_state(7) == (BatState.FULLY_PRESENT, payload + MIB)
        assert img.block_state(8) == (BatState.FULLY_PRESENT, payload + 2 * MIB)
        assert img.block_state(0) == (BatState.NOT_PRESENT, 0)


def test_block_writer_zero_writes_store_nothing(tmp_path: Path) -> None:
    path = tmp_path / "d.vhdx"
    create_dynamic_vhdx(path, 64 * MIB)
    before = path.read_bytes()
    with VhdxBlockWriter.open(path) as w:
        w.pwrite(0, bytes(5 * MIB + 3))
    assert path.read_bytes() == before  # no block, not even a header update

    with VhdxBlockWriter.open(path) as w:
        w.pwrite(2 * MIB, b"x" * 4096)
        w.pwrite(2 * MIB, bytes(4096))  # zeros into a stored block overwrite
    with open_source(path) as src:
        assert src.pread(0, 64 * MIB) == bytes(64 * MIB)
    assert _state(path, 2)[0] is BatState.FULLY_PRESENT


def test_block_writer_renews_header_once(tmp_path: Path) -> None:
    path = tmp_path / "d.vhdx"
    create_dynamic_vhdx(path, 64 * MIB)
    old = [_header_fields(path, slot) for slot in (0, 1)]
    with VhdxBlockWriter.open(path) as w:
        w.pwrite(0, b"a")
        w.pwrite(10 * MIB, b"b")
    new = [_header_fields(path, slot) for slot in (0, 1)]
    assert new[1] == old[1]  # the current header (sequence 2) is left alone
    assert new[0][2] == 3  # the other slot now holds sequence 3
    assert new[0][3] not in (old[0][3], old[1][3])  # new FileWriteGuid
    assert new[0][4] not in (old[0][4], old[1][4])  # new DataWriteGuid
    assert new[0][5:] == old[0][5:]  # log fields unchanged
    raw = _read(path, HEADER_OFFSETS[0], HEADER_SIZE)
    assert new[0][1] == crc32c_of(raw)
    with _image(path) as img:
        assert img.header.sequence_number == 3

    with VhdxBlockWriter.open(path) as w:  # next session: slot 1 gets sequence 4
        w.pwrite(1, b"c")
    assert _header_fields(path, 1)[2] == 4
    with open_source(path) as src:
        assert src.pread(0, 2) == b"ac"
        assert src.pread(10 * MIB, 1) == b"b"


def test_block_writer_random_writes_match_model(tmp_path: Path) -> None:
    size = 40 * MIB + 1024
    path = tmp_path / "d.vhdx"
    create_dynamic_vhdx(path, size)
    model = bytearray(size)
    rng = random.Random(7)
    with VhdxBlockWriter.open(path) as w:
        for i in range(300):
            offset = rng.randrange(size)
            length = min(size - offset, rng.choice([1, 511, 4096, 70000, 3 * MIB]))
            data = bytes(length) if i % 5 == 0 else rng.randbytes(length)
            w.pwrite(offset, data)
            model[offset : offset + length] = data
            if i % 50 == 0:
                w.flush()
                start = rng.randrange(size - 4096)
                assert w.pread(start, 4096) == model[start : start + 4096]
        assert w.pread(0, size) == model
    with open_source(path) as src:
        assert src.pread(0, size) == model


def test_block_writer_flushes_by_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vhdx_writer, "_MAX_PENDING_ENTRIES", 3)
    path = tmp_path / "d.vhdx"
    create_dynamic_vhdx(path, 64 * MIB)
    w = VhdxBlockWriter.open(path)
    try:
        for block in range(3):
            w.pwrite(block * MIB, b"z")
        assert _state(path, 2)[0] is BatState.FULLY_PRESENT  # written without flush()
        w.pwrite(20 * MIB, b"z")
        assert _state(path, 20)[0] is BatState.NOT_PRESENT  # still pending
    finally:
        w.close()
    assert _state(path, 20)[0] is BatState.FULLY_PRESENT


def test_block_writer_4k_sectors(tmp_path: Path) -> None:
    path = tmp_path / "d.vhdx"
    create_dynamic_vhdx(path, 300 * MIB, logical_sector=4096, block_size=2 * MIB)
    with VhdxBlockWriter.open(path) as w:
        w.pwrite(299 * MIB, b"q" * MIB)
    with open_source(path) as src:
        assert src.pread(299 * MIB, MIB) == b"q" * MIB
        assert src.pread(0, MIB) == bytes(MIB)


def test_block_writer_refuses_bad_ranges_and_closed(tmp_path: Path) -> None:
    path = tmp_path / "d.vhdx"
    create_dynamic_vhdx(path, 8 * MIB)
    w = VhdxBlockWriter.open(path)
    with pytest.raises(InvalidArgument):
        w.pwrite(8 * MIB - 1, b"ab")
    with pytest.raises(InvalidArgument):
        w.pread(-1, 1)
    w.pwrite(0, b"ok")  # argument errors are not sticky
    w.close()
    w.close()
    with pytest.raises(FailedPrecondition):
        w.pwrite(0, b"x")


def test_block_writer_failure_is_sticky(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "d.vhdx"
    create_dynamic_vhdx(path, 8 * MIB)
    w = VhdxBlockWriter.open(path)
    w.pwrite(0, b"first")
    real = os.pwrite

    def full_disk(fd: int, data: object, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full_disk)
    with pytest.raises(OSError, match="No space"):
        w.pwrite(3 * MIB, b"second")
    monkeypatch.setattr(os, "pwrite", real)
    with pytest.raises(OSError, match="No space"):
        w.pwrite(5 * MIB, b"third")
    with pytest.raises(OSError, match="No space"):
        w.flush()
    w.close()  # releases the descriptor without flushing
    # Neither the pending block 0 nor anything later reached the BAT.
    assert _state(path, 0)[0] is BatState.NOT_PRESENT
    assert _state(path, 5)[0] is BatState.NOT_PRESENT


def test_block_writer_rejects_partially_present(tmp_path: Path) -> None:
    path = tmp_path / "d.vhdx"
    create_dynamic_vhdx(path, 8 * MIB)
    with open(path, "r+b") as f:
        f.seek(3 * MIB + 8)  # BAT entry of block 1
        f.write(struct.pack("<Q", (4 << 20) | 7))
    with VhdxBlockWriter.open(path) as w, pytest.raises(CorruptImage, match="state 7"):
        w.pread(MIB, 1)


def test_block_writer_refuses_non_vhdx(tmp_path: Path) -> None:
    path = tmp_path / "d.raw"
    path.write_bytes(bytes(MIB))
    with pytest.raises(CorruptImage):
        VhdxBlockWriter.open(path)
