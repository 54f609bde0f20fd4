"""Dynamic VHDX, the reading side (SPEC §7.2, MS-VHDX).

A VHDX file holds, at fixed offsets: the file type identifier (``vhdxfile``, 0), two 4 KiB
headers (64 KiB, 128 KiB) of which the valid one with the higher sequence number is current, and
two copies of a 64 KiB region table (192 KiB, 256 KiB) locating the block allocation table (BAT)
and the metadata region. Metadata items give the block size, the virtual size and the sector
sizes. The virtual disk is cut into blocks (1 MiB in sandbox.vhdx); BAT entry ``i + i // ratio``
says where payload block ``i`` lives (a sector-bitmap entry follows every ``ratio`` payload
entries). Blocks that are not present, zero, unmapped or undefined read as zeros.

Refused: a non-empty log (the log GUID is set: the file needs a replay first,
:class:`VhdxLogNotEmpty`), differencing disks (``HasParent``), and unknown *required* regions or
metadata items (:class:`~lcow.errors.NotSupported`). Damage is :class:`~lcow.errors.CorruptImage`.
Every read is checked against the file size before it is made.
"""

from __future__ import annotations

import enum
import itertools
import os
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from lcow._util.crc32c import crc32c
from lcow.errors import CorruptImage, NotSupported

__all__ = [
    "BAT_GUID",
    "FILE_PARAMETERS_GUID",
    "HEADER_OFFSETS",
    "HEADER_SIZE",
    "LOGICAL_SECTOR_SIZE_GUID",
    "METADATA_GUID",
    "MIB",
    "PAGE83_GUID",
    "PARENT_LOCATOR_GUID",
    "PHYSICAL_SECTOR_SIZE_GUID",
    "REGION_TABLE_OFFSETS",
    "REGION_TABLE_SIZE",
    "VHDX_SIGNATURE",
    "VIRTUAL_DISK_SIZE_GUID",
    "BatState",
    "HostSpan",
    "RegionEntry",
    "VhdxHeader",
    "VhdxImage",
    "VhdxLogNotEmpty",
    "VhdxMetadata",
    "crc32c_of",
]

KIB = 1024
MIB = 1024 * KIB
VHDX_SIGNATURE = b"vhdxfile"
HEADER_SIGNATURE = b"head"
REGION_SIGNATURE = b"regi"
METADATA_SIGNATURE = b"metadata"
HEADER_OFFSETS = (64 * KIB, 128 * KIB)
HEADER_SIZE = 4 * KIB
REGION_TABLE_OFFSETS = (192 * KIB, 256 * KIB)
REGION_TABLE_SIZE = 64 * KIB
MAX_TABLE_ENTRIES = 2047  # region table and metadata table
MAX_VIRTUAL_SIZE = 64 * 1024**4  # 64 TiB
MIN_BLOCK_SIZE = 1 * MIB
MAX_BLOCK_SIZE = 256 * MIB

BAT_GUID = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_GUID = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
FILE_PARAMETERS_GUID = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE_GUID = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
PAGE83_GUID = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_SIZE_GUID = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_SIZE_GUID = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR_GUID = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
_ZERO_GUID = uuid.UUID(int=0)

# Header: Signature, Checksum, SequenceNumber, FileWriteGuid, DataWriteGuid, LogGuid, LogVersion,
# Version, LogLength, LogOffset (then 4016 reserved bytes).
_HEADER = struct.Struct("<4sIQ16s16s16sHHIQ")
# Region table header: Signature, Checksum, EntryCount, Reserved; entry: Guid, FileOffset,
# Length, Required.
_REGION_HEADER = struct.Struct("<4sIII")
_REGION_ENTRY = struct.Struct("<16sQII")
# Metadata table header: Signature, Reserved, EntryCount, Reserved2[20]; entry: ItemId, Offset,
# Length, flags (IsUser 1, IsVirtualDisk 2, IsRequired 4), Reserved2.
_METADATA_HEADER = struct.Struct("<8sHH20s")
_METADATA_ENTRY = struct.Struct("<16sIII4s")
_CHECKSUM_OFFSET = 4
_META_IS_REQUIRED = 4
_FP_LEAVE_BLOCKS_ALLOCATED = 1
_FP_HAS_PARENT = 2
_BAT_PAGE_ENTRIES = 512  # one 4 KiB read
_BAT_CACHE_PAGES = 1024
_BAT_STATE_MASK = 7
_BAT_OFFSET_SHIFT = 20


class VhdxLogNotEmpty(NotSupported):
    """The VHDX log must be replayed before the file can be read (non-zero log GUID)."""


class BatState(enum.IntEnum):
    """Payload block states (BAT entry bits 0-2)."""

    NOT_PRESENT = 0
    UNDEFINED = 1
    ZERO = 2
    UNMAPPED = 3
    FULLY_PRESENT = 6
    PARTIALLY_PRESENT = 7


@dataclass(frozen=True)
class VhdxHeader:
    """One VHDX header (MS-VHDX 2.2.2), field names per the specification."""

    sequence_number: int
    file_write_guid: uuid.UUID
    data_write_guid: uuid.UUID
    log_guid: uuid.UUID
    log_version: int
    version: int
    log_length: int
    log_offset: int


@dataclass(frozen=True)
class RegionEntry:
    """One region table entry (MS-VHDX 2.2.3.2)."""

    guid: uuid.UUID
    file_offset: int
    length: int
    required: bool


@dataclass(frozen=True)
class VhdxMetadata:
    """The system metadata items lcow needs (MS-VHDX 2.6.2)."""

    block_size: int
    leave_blocks_allocated: bool
    has_parent: bool
    virtual_disk_size: int
    logical_sector_size: int
    physical_sector_size: int
    virtual_disk_id: uuid.UUID | None


class HostSpan(NamedTuple):
    """Where a piece of the virtual disk lives: ``host_offset`` (``None`` = zeros), ``length``."""

    host_offset: int | None
    length: int


def crc32c_of(data: bytes | bytearray, checksum_offset: int = _CHECKSUM_OFFSET) -> int:
    """CRC-32C (Castagnoli, as MS-VHDX uses it) of a structure with its checksum field zeroed.

    Args:
        data: the whole structure (4 KiB header or 64 KiB region table).
        checksum_offset: offset of the 4-byte checksum field.

    Returns:
        The checksum the field must hold.
    """
    buf = bytearray(data)
    buf[checksum_offset : checksum_offset + 4] = b"\0\0\0\0"
    return crc32c(buf)


class VhdxImage:
    """A dynamic VHDX opened for reading; a byte source over its virtual disk.

    Implements :class:`lcow.formats.source.ByteSource` structurally (``name``, ``size``,
    ``pread``, ``host_ranges``, ``fileno``, ``close``).
    """

    def __init__(self, fd: int, *, name: str = "", owns_fd: bool = False) -> None:
        """Parse the headers, region table and metadata of an open VHDX.

        Args:
            fd: descriptor open for reading; not moved (``pread`` only).
            name: label for error messages.
            owns_fd: close ``fd`` in :meth:`close`.

        Raises:
            CorruptImage: missing signature, no valid header or region table, bad metadata,
                BAT outside the file.
            VhdxLogNotEmpty: the log needs replaying.
            NotSupported: differencing disk, unknown required region or metadata item.
        """
        self._fd = fd
        self._name = name or f"fd {fd}"
        self._owns_fd = owns_fd
        self._file_size = os.fstat(fd).st_size
        self._bat_cache: dict[int, tuple[int, ...]] = {}
        if self._read(0, len(VHDX_SIGNATURE)) != VHDX_SIGNATURE:
            raise self._corrupt("no 'vhdxfile' signature at offset 0")
        self.header = self._current_header()
        if self.header.log_guid != _ZERO_GUID:
            raise VhdxLogNotEmpty(
                f"{self._name}: VHDX log {self.header.log_guid} needs replaying before the disk "
                "can be read (open it once with Hyper-V or qemu-img check -r all)",
                subject=self._name,
            )
        self.regions = self._region_table()
        bat = self._region(BAT_GUID, "BAT")
        meta = self._region(METADATA_GUID, "metadata")
        self.metadata = self._parse_metadata(meta)
        md = self.metadata
        if md.has_parent:
            raise NotSupported(
                f"{self._name}: differencing VHDX (has a parent) is not supported",
                subject=self._name,
            )
        self.chunk_ratio = (1 << 23) * md.logical_sector_size // md.block_size
        self.block_count = -(-md.virtual_disk_size // md.block_size)
        entries = (
            self.block_count + (self.block_count - 1) // self.chunk_ratio if self.block_count else 0
        )
        if entries * 8 > bat.length:
            raise self._corrupt(f"BAT region holds {bat.length // 8} entries, {entries} needed")
        self._bat_offset = bat.file_offset
        self._bat_entries = entries

    # -- ByteSource -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        """Label for error messages."""
        return self._name

    @property
    def size(self) -> int:
        """The virtual disk size in bytes."""
        return self.metadata.virtual_disk_size

    def fileno(self) -> int:
        """The host descriptor."""
        return self._fd

    def close(self) -> None:
        """Close the descriptor if owned (idempotent)."""
        if self._owns_fd and self._fd >= 0:
            os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> VhdxImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def host_ranges(self, offset: int, length: int) -> Iterator[HostSpan]:
        """Map a virtual range to host ranges (``None`` for blocks that read as zeros).

        Adjacent pieces are merged.

        Raises:
            CorruptImage: the range is outside the virtual disk, or a present block lies
                (partly) outside the file.
        """
        size = self.size
        if offset < 0 or length < 0 or offset + length > size:
            raise self._corrupt(
                f"read of {length} bytes at offset {offset} is outside the virtual disk "
                f"({size} bytes)"
            )
        bs = self.metadata.block_size
        pending: HostSpan | None = None
        end = offset + length
        pos = offset
        while pos < end:
            block, within = divmod(pos, bs)
            n = min(bs - within, end - pos)
            base = self.block_host_offset(block)
            host = None if base is None else base + within
            if host is not None and host + n > self._file_size:
                raise self._corrupt(
                    f"block {block} at host offset {base} runs past the end of the file "
                    f"({self._file_size} bytes)"
                )
            if pending is not None and (
                (host is None and pending.host_offset is None)
                or (
                    host is not None
                    and pending.host_offset is not None
                    and pending.host_offset + pending.length == host
                )
            ):
                pending = HostSpan(pending.host_offset, pending.length + n)
            else:
                if pending is not None:
                    yield pending
                pending = HostSpan(host, n)
            pos += n
        if pending is not None:
            yield pending

    def pread(self, offset: int, length: int) -> bytes:
        """Read exactly ``length`` bytes of the virtual disk at ``offset``.

        Raises:
            CorruptImage: see :meth:`host_ranges`; the file is shorter than it was at open.
        """
        parts: list[bytes] = []
        for span in self.host_ranges(offset, length):
            if span.host_offset is None:
                parts.append(bytes(span.length))
            else:
                parts.append(self._read(span.host_offset, span.length))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # -- BAT ------------------------------------------------------------------------------

    def bat_entry(self, index: int) -> int:
        """The raw 64-bit BAT entry ``index`` (payload and sector-bitmap entries interleaved)."""
        page, slot = divmod(index, _BAT_PAGE_ENTRIES)
        entries = self._bat_cache.get(page)
        if entries is None:
            first = page * _BAT_PAGE_ENTRIES
            count = min(_BAT_PAGE_ENTRIES, self._bat_entries - first)
            raw = self._read(self._bat_offset + first * 8, count * 8)
            entries = struct.unpack(f"<{count}Q", raw)
            if len(self._bat_cache) >= _BAT_CACHE_PAGES:
                self._bat_cache.clear()
            self._bat_cache[page] = entries
        return entries[slot]

    def block_state(self, block: int) -> tuple[BatState, int]:
        """State and host offset (bytes, 0 when not stored) of payload block ``block``.

        Raises:
            CorruptImage: reserved state bits, a fully-present block at an impossible offset,
                or a partially-present block in a disk without a parent.
        """
        if not 0 <= block < self.block_count:
            raise self._corrupt(f"payload block {block} out of range ({self.block_count} blocks)")
        entry = self.bat_entry(block + block // self.chunk_ratio)
        state = entry & _BAT_STATE_MASK
        try:
            bstate = BatState(state)
        except ValueError:
            raise self._corrupt(f"BAT entry of block {block} has reserved state {state}") from None
        host = (entry >> _BAT_OFFSET_SHIFT) * MIB
        if bstate is BatState.PARTIALLY_PRESENT:
            raise self._corrupt(f"block {block} is partially present in a disk without a parent")
        if bstate is BatState.FULLY_PRESENT and host < MIB:
            raise self._corrupt(f"block {block} is stored at impossible offset {host}")
        return bstate, host

    def block_host_offset(self, block: int) -> int | None:
        """Host offset of payload block ``block``, or ``None`` when it reads as zeros."""
        state, host = self.block_state(block)
        return host if state is BatState.FULLY_PRESENT else None

    # -- parsing --------------------------------------------------------------------------

    def _corrupt(self, what: str) -> CorruptImage:
        return CorruptImage(f"{self._name}: VHDX {what}", subject=self._name)

    def _read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self._file_size:
            raise self._corrupt(
                f"read of {length} bytes at offset {offset} is outside the file "
                f"({self._file_size} bytes)"
            )
        data = os.pread(self._fd, length, offset)
        while len(data) < length:
            more = os.pread(self._fd, length - len(data), offset + len(data))
            if not more:
                raise self._corrupt(f"file ends inside a read at offset {offset}")
            data += more
        return data

    def _parse_header(self, raw: bytes) -> VhdxHeader | None:
        (sig, checksum, seq, fwg, dwg, log, log_version, version, log_len, log_off) = (
            _HEADER.unpack_from(raw)
        )
        if sig != HEADER_SIGNATURE or checksum != crc32c_of(raw):
            return None
        if version != 1 or log_version != 0:
            return None
        return VhdxHeader(
            sequence_number=seq,
            file_write_guid=uuid.UUID(bytes_le=fwg),
            data_write_guid=uuid.UUID(bytes_le=dwg),
            log_guid=uuid.UUID(bytes_le=log),
            log_version=log_version,
            version=version,
            log_length=log_len,
            log_offset=log_off,
        )

    def _current_header(self) -> VhdxHeader:
        raws = [self._read(off, HEADER_SIZE) for off in HEADER_OFFSETS]
        h1, h2 = (self._parse_header(raw) for raw in raws)
        if h1 is None and h2 is None:
            raise self._corrupt("has no valid header (signature, CRC-32C or version)")
        if h1 is None or h2 is None:
            header = h1 or h2
            assert header is not None
            return header
        if h1.sequence_number == h2.sequence_number and raws[0][:80] != raws[1][:80]:
            raise self._corrupt("has two different headers with the same sequence number")
        return h1 if h1.sequence_number >= h2.sequence_number else h2

    def _region_table(self) -> tuple[RegionEntry, ...]:
        problems = []
        for off in REGION_TABLE_OFFSETS:
            raw = self._read(off, REGION_TABLE_SIZE)
            sig, checksum, count, _ = _REGION_HEADER.unpack_from(raw)
            if sig != REGION_SIGNATURE:
                problems.append(f"bad signature at {off}")
                continue
            if checksum != crc32c_of(raw):
                problems.append(f"CRC-32C mismatch at {off}")
                continue
            if count > MAX_TABLE_ENTRIES:
                problems.append(f"{count} entries at {off}")
                continue
            return self._region_entries(raw, count)
        raise self._corrupt("has no valid region table: " + "; ".join(problems))

    def _region_entries(self, raw: bytes, count: int) -> tuple[RegionEntry, ...]:
        regions = []
        for i in range(count):
            guid, offset, length, required = _REGION_ENTRY.unpack_from(
                raw, _REGION_HEADER.size + i * _REGION_ENTRY.size
            )
            entry = RegionEntry(uuid.UUID(bytes_le=guid), offset, length, bool(required & 1))
            if entry.guid not in (BAT_GUID, METADATA_GUID) and entry.required:
                raise NotSupported(
                    f"{self._name}: VHDX has unknown required region {entry.guid}",
                    subject=self._name,
                )
            if offset < MIB or offset % MIB or length % MIB or length == 0:
                raise self._corrupt(
                    f"region {entry.guid} at {offset} of length {length} is not 1 MiB aligned"
                )
            if offset + length > self._file_size:
                raise self._corrupt(f"region {entry.guid} runs past the end of the file")
            regions.append(entry)
        ordered = sorted(regions, key=lambda r: r.file_offset)
        for a, b in itertools.pairwise(ordered):
            if a.file_offset + a.length > b.file_offset:
                raise self._corrupt(f"regions {a.guid} and {b.guid} overlap")
        return tuple(regions)

    def _region(self, guid: uuid.UUID, label: str) -> RegionEntry:
        for region in self.regions:
            if region.guid == guid:
                return region
        raise self._corrupt(f"has no {label} region")

    def _parse_metadata(self, region: RegionEntry) -> VhdxMetadata:
        table = self._read(region.file_offset, 64 * KIB)
        sig, _, count, _ = _METADATA_HEADER.unpack_from(table)
        if sig != METADATA_SIGNATURE:
            raise self._corrupt("metadata table has a bad signature")
        if count > MAX_TABLE_ENTRIES:
            raise self._corrupt(f"metadata table has {count} entries")
        items: dict[uuid.UUID, bytes] = {}
        for i in range(count):
            item_id, offset, length, flags, _ = _METADATA_ENTRY.unpack_from(
                table, _METADATA_HEADER.size + i * _METADATA_ENTRY.size
            )
            guid = uuid.UUID(bytes_le=item_id)
            if length and (offset < 64 * KIB or offset + length > region.length):
                raise self._corrupt(f"metadata item {guid} lies outside the metadata region")
            known = guid in (
                FILE_PARAMETERS_GUID,
                VIRTUAL_DISK_SIZE_GUID,
                PAGE83_GUID,
                LOGICAL_SECTOR_SIZE_GUID,
                PHYSICAL_SECTOR_SIZE_GUID,
                PARENT_LOCATOR_GUID,
            )
            if not known and flags & _META_IS_REQUIRED:
                raise NotSupported(
                    f"{self._name}: VHDX has unknown required metadata item {guid}",
                    subject=self._name,
                )
            if guid in items:
                raise self._corrupt(f"metadata item {guid} appears twice")
            if known and guid != PARENT_LOCATOR_GUID:
                items[guid] = self._read(region.file_offset + offset, min(length, 64))
        return self._metadata_values(items)

    def _item(self, items: dict[uuid.UUID, bytes], guid: uuid.UUID, fmt: str, label: str) -> int:
        raw = items.get(guid)
        size = struct.calcsize(fmt)
        if raw is None or len(raw) < size:
            raise self._corrupt(f"metadata has no valid {label} item")
        value: int = struct.unpack_from(fmt, raw)[0]
        return value

    def _metadata_values(self, items: dict[uuid.UUID, bytes]) -> VhdxMetadata:
        block_size = self._item(items, FILE_PARAMETERS_GUID, "<I", "file parameters")
        fp_raw = items[FILE_PARAMETERS_GUID]
        fp_flags = struct.unpack_from("<I", fp_raw, 4)[0] if len(fp_raw) >= 8 else 0
        vsize = self._item(items, VIRTUAL_DISK_SIZE_GUID, "<Q", "virtual disk size")
        lss = self._item(items, LOGICAL_SECTOR_SIZE_GUID, "<I", "logical sector size")
        pss = self._item(items, PHYSICAL_SECTOR_SIZE_GUID, "<I", "physical sector size")
        page83 = items.get(PAGE83_GUID)
        if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE or block_size & (block_size - 1):
            raise self._corrupt(f"block size {block_size} is not a power of two in 1..256 MiB")
        if lss not in (512, 4096):
            raise self._corrupt(f"logical sector size {lss} is not 512 or 4096")
        if pss not in (512, 4096):
            raise self._corrupt(f"physical sector size {pss} is not 512 or 4096")
        if vsize == 0 or vsize % lss or vsize > MAX_VIRTUAL_SIZE:
            raise self._corrupt(f"virtual disk size {vsize} is invalid")
        return VhdxMetadata(
            block_size=block_size,
            leave_blocks_allocated=bool(fp_flags & _FP_LEAVE_BLOCKS_ALLOCATED),
            has_parent=bool(fp_flags & _FP_HAS_PARENT),
            virtual_disk_size=vsize,
            logical_sector_size=lss,
            physical_sector_size=pss,
            virtual_disk_id=(
                uuid.UUID(bytes_le=page83[:16]) if page83 and len(page83) >= 16 else None
            ),
        )
