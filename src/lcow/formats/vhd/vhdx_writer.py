"""Dynamic VHDX, the writing side (SPEC §7.2 "Project decision: write exactly this shape", MS-VHDX).

Every file this module makes has one fixed shape::

    0          file type identifier: "vhdxfile" + UTF-16LE creator          (64 KiB)
    64 KiB     header 1 (sequence 1)       \\ identical apart from the sequence number;
    128 KiB    header 2 (sequence 2)       /  CRC-32C over 4 KiB, log GUID zero (empty log)
    192 KiB    region table 1              \\ identical: BAT and metadata regions, both required,
    256 KiB    region table 2              /  CRC-32C over 64 KiB
    1 MiB      log region, 1 MiB, never written (a hole; nothing to replay)
    2 MiB      metadata region, 1 MiB: table + file parameters, virtual size, page 83 id,
               logical and physical sector sizes (items from 64 KiB into the region)
    3 MiB      BAT region, ⌈entries·8 / 1 MiB⌉ MiB
    ...        payload blocks, 1 MiB aligned, appended in allocation order

The BAT has ``blocks + ⌊(blocks - 1) / chunk_ratio⌋`` entries (a sector-bitmap entry after every
``chunk_ratio = 2^23 · logical_sector / block_size`` payload entries, always ``NOT_PRESENT`` as
the disk has no parent). A payload entry is ``NOT_PRESENT`` (reads as zeros) until a block holding
a non-zero byte is stored, then ``FULLY_PRESENT`` with the file offset in MiB in bits 20-63.
All-zero data is never stored, and inside a stored block zero 4 KiB pages stay holes of the host
file, so an empty 20 GB sandbox takes a few hundred KiB on disk.

Three entry points:

* :func:`create_dynamic_vhdx` — an empty disk;
* :func:`raw_to_dynamic_vhdx` — a disk whose content equals a raw (sparse) image, streamed with
  ``SEEK_DATA``/``SEEK_HOLE`` in bounded memory;
* :class:`VhdxBlockWriter` — byte-range writes into an existing dynamic VHDX with
  allocate-on-write. No log is written; instead new payload is written and made durable before
  the BAT entry that points at it (a crash loses unflushed writes, never points the BAT at
  garbage), and the header's write GUIDs are renewed once, in the non-current header slot,
  before the first modification (MS-VHDX 2.2.2).
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from lcow._util.atomic import output_to
from lcow.errors import CorruptImage, FailedPrecondition, InvalidArgument
from lcow.formats.vhd.vhdx import (
    BAT_GUID,
    FILE_PARAMETERS_GUID,
    HEADER_OFFSETS,
    HEADER_SIZE,
    LOGICAL_SECTOR_SIZE_GUID,
    METADATA_GUID,
    MIB,
    PAGE83_GUID,
    PHYSICAL_SECTOR_SIZE_GUID,
    REGION_TABLE_OFFSETS,
    REGION_TABLE_SIZE,
    VHDX_SIGNATURE,
    VIRTUAL_DISK_SIZE_GUID,
    BatState,
    VhdxImage,
    crc32c_of,
)

__all__ = [
    "CREATOR",
    "MAX_VIRTUAL_SIZE",
    "VhdxBlockWriter",
    "VhdxLayout",
    "create_dynamic_vhdx",
    "raw_to_dynamic_vhdx",
]

KIB = 1024
MAX_VIRTUAL_SIZE = 64 * 1024**4  # MS-VHDX: 64 TiB
CREATOR = "lcow"

# -- layout constants (one block, derived sizes as expressions) ---------------------------------
_FILE_ID_SIZE = 64 * KIB
_CREATOR_SIZE = 512  # bytes of UTF-16LE after the 8-byte signature
_LOG_OFFSET = 1 * MIB
_LOG_LENGTH = 1 * MIB  # header LogOffset/LogLength must be 1 MiB multiples; log stays empty
_METADATA_OFFSET = _LOG_OFFSET + _LOG_LENGTH  # 2 MiB
_METADATA_LENGTH = 1 * MIB
_BAT_OFFSET = _METADATA_OFFSET + _METADATA_LENGTH  # 3 MiB
_METADATA_TABLE_SIZE = 64 * KIB  # items start here, relative to the metadata region
_PAGE = 4 * KIB  # zero-detection granule and BAT page
_BAT_PAGE_ENTRIES = _PAGE // 8
_BAT_OFFSET_SHIFT = 20
_BAT_STATE_MASK = 7
_MIN_BLOCK = 1 * MIB
_MAX_BLOCK = 256 * MIB
_SECTOR_SIZES = (512, 4096)
_MAX_DIRTY_BAT_PAGES = 256  # 1 MiB of BAT pages buffered during a conversion
_MAX_PENDING_ENTRIES = 4096  # BAT updates a block writer holds before flushing by itself
_BAT_CACHE_PAGES = 256

# Header: Signature, Checksum, SequenceNumber, FileWriteGuid, DataWriteGuid, LogGuid,
# LogVersion, Version, LogLength, LogOffset (4016 reserved bytes follow).
_HEADER = struct.Struct("<4sIQ16s16s16sHHIQ")
_HEADER_SIGNATURE = b"head"
_REGION_HEADER = struct.Struct("<4sIII")  # Signature, Checksum, EntryCount, Reserved
_REGION_ENTRY = struct.Struct("<16sQII")  # Guid, FileOffset, Length, Required (bit 0)
_METADATA_HEADER = struct.Struct("<8sHH20s")  # Signature, Reserved, EntryCount, Reserved2
_METADATA_ENTRY = struct.Struct("<16sIII4s")  # ItemId, Offset, Length, flags, Reserved2
_META_IS_VIRTUAL_DISK = 2
_META_IS_REQUIRED = 4
_ZERO_GUID = uuid.UUID(int=0)
_ZERO_PAGE = bytes(_PAGE)


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


@dataclass(frozen=True)
class VhdxLayout:
    """Where everything goes in a dynamic VHDX of the fixed shape this module writes.

    Attributes:
        virtual_size: bytes of the virtual disk.
        block_size: payload block size.
        logical_sector: logical sector size (512 or 4096).
        physical_sector: physical sector size (512 or 4096).
    """

    virtual_size: int
    block_size: int = 1 * MIB
    logical_sector: int = 512
    physical_sector: int = 4096

    def __post_init__(self) -> None:
        """Check the parameters against MS-VHDX's limits.

        Raises:
            InvalidArgument: a size or sector size MS-VHDX does not allow.
        """
        bs = self.block_size
        if not _MIN_BLOCK <= bs <= _MAX_BLOCK or bs & (bs - 1):
            raise InvalidArgument(f"VHDX block size {bs} is not a power of two in 1..256 MiB")
        for label, value in (("logical", self.logical_sector), ("physical", self.physical_sector)):
            if value not in _SECTOR_SIZES:
                raise InvalidArgument(f"VHDX {label} sector size {value} is not 512 or 4096")
        vs = self.virtual_size
        if vs <= 0 or vs > MAX_VIRTUAL_SIZE or vs % self.logical_sector:
            raise InvalidArgument(
                f"VHDX virtual size {vs} must be a positive multiple of the logical sector size "
                f"({self.logical_sector}) of at most {MAX_VIRTUAL_SIZE} bytes (64 TiB)"
            )

    @property
    def block_count(self) -> int:
        """Payload blocks covering the virtual disk (the last one may be partial)."""
        return -(-self.virtual_size // self.block_size)

    @property
    def chunk_ratio(self) -> int:
        """Payload blocks per sector-bitmap block: 2^23 · logical sector / block size."""
        return (1 << 23) * self.logical_sector // self.block_size

    @property
    def bat_entries(self) -> int:
        """BAT entries: payload entries plus one sector-bitmap entry per full chunk."""
        blocks = self.block_count
        return blocks + (blocks - 1) // self.chunk_ratio

    @property
    def bat_offset(self) -> int:
        """File offset of the BAT region."""
        return _BAT_OFFSET

    @property
    def bat_length(self) -> int:
        """Length of the BAT region (1 MiB multiple)."""
        return _round_up(self.bat_entries * 8, MIB)

    @property
    def metadata_offset(self) -> int:
        """File offset of the metadata region."""
        return _METADATA_OFFSET

    @property
    def metadata_length(self) -> int:
        """Length of the metadata region."""
        return _METADATA_LENGTH

    @property
    def log_offset(self) -> int:
        """File offset of the (empty) log region."""
        return _LOG_OFFSET

    @property
    def log_length(self) -> int:
        """Length of the log region."""
        return _LOG_LENGTH

    @property
    def payload_offset(self) -> int:
        """File offset of the first payload block (the file size of an empty disk)."""
        return self.bat_offset + self.bat_length

    def bat_index(self, block: int) -> int:
        """BAT entry index of payload block ``block``."""
        return block + block // self.chunk_ratio


# -- structures -------------------------------------------------------------------------------


def _file_identifier(creator: str) -> bytes:
    raw = creator.encode("utf-16-le")[:_CREATOR_SIZE]
    return VHDX_SIGNATURE + raw


def _header(  # noqa: PLR0913 - one parameter per variable field of the MS-VHDX header
    sequence: int,
    file_write_guid: uuid.UUID,
    data_write_guid: uuid.UUID,
    *,
    log_guid: uuid.UUID = _ZERO_GUID,
    log_length: int = _LOG_LENGTH,
    log_offset: int = _LOG_OFFSET,
) -> bytes:
    buf = bytearray(HEADER_SIZE)
    _HEADER.pack_into(
        buf,
        0,
        _HEADER_SIGNATURE,
        0,
        sequence,
        file_write_guid.bytes_le,
        data_write_guid.bytes_le,
        log_guid.bytes_le,
        0,  # LogVersion
        1,  # Version
        log_length,
        log_offset,
    )
    struct.pack_into("<I", buf, 4, crc32c_of(buf))
    return bytes(buf)


def _region_table(layout: VhdxLayout) -> bytes:
    buf = bytearray(REGION_TABLE_SIZE)
    entries = (
        (BAT_GUID, layout.bat_offset, layout.bat_length),
        (METADATA_GUID, layout.metadata_offset, layout.metadata_length),
    )
    _REGION_HEADER.pack_into(buf, 0, b"regi", 0, len(entries), 0)
    for i, (guid, offset, length) in enumerate(entries):
        _REGION_ENTRY.pack_into(
            buf, _REGION_HEADER.size + i * _REGION_ENTRY.size, guid.bytes_le, offset, length, 1
        )
    struct.pack_into("<I", buf, 4, crc32c_of(buf))
    return bytes(buf)


def _metadata_region(layout: VhdxLayout, disk_id: uuid.UUID) -> bytes:
    """The used head of the metadata region: table and items (the rest stays zero)."""
    vd_req = _META_IS_VIRTUAL_DISK | _META_IS_REQUIRED
    items = (
        # block size, flags (leave blocks allocated 0, has parent 0)
        (FILE_PARAMETERS_GUID, struct.pack("<II", layout.block_size, 0), _META_IS_REQUIRED),
        (VIRTUAL_DISK_SIZE_GUID, struct.pack("<Q", layout.virtual_size), vd_req),
        (PAGE83_GUID, disk_id.bytes_le, vd_req),
        (LOGICAL_SECTOR_SIZE_GUID, struct.pack("<I", layout.logical_sector), vd_req),
        (PHYSICAL_SECTOR_SIZE_GUID, struct.pack("<I", layout.physical_sector), vd_req),
    )
    data = bytearray(_METADATA_TABLE_SIZE)
    _METADATA_HEADER.pack_into(data, 0, b"metadata", 0, len(items), bytes(20))
    for i, (guid, value, flags) in enumerate(items):
        offset = len(data)
        _METADATA_ENTRY.pack_into(
            data,
            _METADATA_HEADER.size + i * _METADATA_ENTRY.size,
            guid.bytes_le,
            offset,
            len(value),
            flags,
            bytes(4),
        )
        data += value
    return bytes(data)


# -- low-level I/O ----------------------------------------------------------------------------


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    """Read ``length`` bytes; bytes past the end of the file read as zeros."""
    parts: list[bytes] = []
    got = 0
    while got < length:
        chunk = os.pread(fd, length - got, offset + got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    data = b"".join(parts)
    return data + bytes(length - got) if got < length else data


def _present_entry(host_offset: int) -> int:
    """A ``FULLY_PRESENT`` BAT entry for a block at ``host_offset`` (a 1 MiB multiple)."""
    return (host_offset >> _BAT_OFFSET_SHIFT) << _BAT_OFFSET_SHIFT | BatState.FULLY_PRESENT


def _is_zero(data: bytes | memoryview) -> bool:
    n = len(data)
    if n <= _PAGE:
        return data == _ZERO_PAGE[:n]
    return data == bytes(n)


def _nonzero_runs(data: bytes | memoryview, base: int = 0) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of the runs of ``data`` that hold a non-zero byte, in pages.

    Pages are aligned to ``base + start ≡ 0 (mod 4 KiB)`` so holes left between runs are whole
    pages of the host file.
    """
    view = memoryview(data)
    n = len(view)
    run_start = -1
    pos = 0
    while pos < n:
        end = min(n, pos + _PAGE - (base + pos) % _PAGE)
        if _is_zero(view[pos:end]):
            if run_start >= 0:
                yield run_start, pos
                run_start = -1
        elif run_start < 0:
            run_start = pos
        pos = end
    if run_start >= 0:
        yield run_start, n


def _write_sparse(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write only the non-zero pages of ``data`` at ``offset`` of a region that reads as zeros."""
    view = memoryview(data)
    for start, end in _nonzero_runs(view, offset):
        _pwrite_all(fd, view[start:end], offset + start)


def _write_empty(fd: int, layout: VhdxLayout, disk_id: uuid.UUID) -> None:
    """Write the fixed structures of an empty disk into ``fd`` (truncated first)."""
    os.ftruncate(fd, 0)
    file_write, data_write = uuid.uuid4(), uuid.uuid4()
    os.ftruncate(fd, layout.payload_offset)
    # Only non-zero pages are written: the zero tails of the tables, the log region and the
    # BAT (all entries NOT_PRESENT = 0) stay holes.
    _write_sparse(fd, _file_identifier(CREATOR), 0)
    for seq, offset in enumerate(HEADER_OFFSETS, start=1):
        _write_sparse(fd, _header(seq, file_write, data_write), offset)
    table = _region_table(layout)
    for offset in REGION_TABLE_OFFSETS:
        _write_sparse(fd, table, offset)
    _write_sparse(fd, _metadata_region(layout, disk_id), layout.metadata_offset)


# -- public entry points ----------------------------------------------------------------------


def create_dynamic_vhdx(  # noqa: PLR0913 - public API: keyword-only options are the VhdxLayout geometry and the disk id
    path_or_fd: str | os.PathLike[str] | int,
    virtual_size: int,
    *,
    block_size: int = 1 * MIB,
    logical_sector: int = 512,
    physical_sector: int = 4096,
    disk_id: uuid.UUID | None = None,
) -> None:
    """Write an empty dynamic VHDX (every block not present).

    Args:
        path_or_fd: a path, written atomically (temporary name, fsync, rename), or a descriptor
            open for writing whose file is truncated and rewritten (not synced, not closed).
        virtual_size: bytes of the virtual disk; a multiple of ``logical_sector``, ≤ 64 TiB.
        block_size: payload block size, a power of two in 1..256 MiB.
        logical_sector: 512 or 4096.
        physical_sector: 512 or 4096.
        disk_id: the page 83 virtual disk id; random by default.

    Raises:
        InvalidArgument: a size MS-VHDX does not allow.
        OSError: the output cannot be written.
    """
    layout = VhdxLayout(virtual_size, block_size, logical_sector, physical_sector)
    with output_to(path_or_fd, fsync=True) as fd:
        _write_empty(fd, layout, disk_id or uuid.uuid4())


class _BatPages:
    """Dirty BAT pages of a disk being filled front to back, written out in bounded batches."""

    def __init__(self, fd: int, offset: int) -> None:
        self._fd = fd
        self._offset = offset
        self._pages: dict[int, bytearray] = {}

    def set(self, index: int, entry: int) -> None:
        page, slot = divmod(index, _BAT_PAGE_ENTRIES)
        buf = self._pages.get(page)
        if buf is None:
            if len(self._pages) >= _MAX_DIRTY_BAT_PAGES:
                self.flush()
            buf = self._pages[page] = bytearray(_PAGE)
        struct.pack_into("<Q", buf, slot * 8, entry)

    def flush(self) -> None:
        for page, buf in sorted(self._pages.items()):
            _pwrite_all(self._fd, buf, self._offset + page * _PAGE)
        self._pages.clear()


def _data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of the ranges of ``fd`` that may hold data (``SEEK_DATA``/``SEEK_HOLE``)."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # no hole support: all data
                yield pos, size
                return
            raise
        if start >= size:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        pos = end


def raw_to_dynamic_vhdx(  # noqa: PLR0913 - public API: keyword-only options are the VhdxLayout geometry and the disk id
    raw_fd: int,
    out_path_or_fd: str | os.PathLike[str] | int,
    virtual_size: int,
    *,
    block_size: int = 1 * MIB,
    logical_sector: int = 512,
    physical_sector: int = 4096,
    disk_id: uuid.UUID | None = None,
) -> int:
    """Write a dynamic VHDX whose virtual disk equals a raw image.

    Only blocks holding a non-zero byte are stored, at 1 MiB-aligned offsets after the BAT, in
    disk order; inside them zero pages stay holes. The raw file is read with ``pread`` (its
    offset is not used) and only where ``SEEK_DATA`` finds data; memory stays bounded (one block
    plus at most 1 MiB of BAT pages).

    Args:
        raw_fd: descriptor of the raw image, open for reading; bytes past its end read as zeros.
        out_path_or_fd: a path, written atomically (temporary name, fsync, rename), or a
            descriptor open for writing whose file is truncated and rewritten (not synced).
        virtual_size: bytes of the virtual disk (at least the raw file's size).
        block_size: payload block size, a power of two in 1..256 MiB.
        logical_sector: 512 or 4096.
        physical_sector: 512 or 4096.
        disk_id: the page 83 virtual disk id; random by default.

    Returns:
        The number of payload blocks stored.

    Raises:
        InvalidArgument: a size MS-VHDX does not allow, or a raw image larger than
            ``virtual_size``.
        OSError: reading the raw image or writing the output failed.
    """
    layout = VhdxLayout(virtual_size, block_size, logical_sector, physical_sector)
    raw_size = os.fstat(raw_fd).st_size
    if raw_size > virtual_size:
        raise InvalidArgument(
            f"raw image of {raw_size} bytes does not fit a virtual disk of {virtual_size} bytes"
        )
    bs = layout.block_size
    with output_to(out_path_or_fd, fsync=True) as fd:
        _write_empty(fd, layout, disk_id or uuid.uuid4())
        bat = _BatPages(fd, layout.bat_offset)
        next_free = layout.payload_offset
        stored = 0
        last_block = -1
        for start, end in _data_extents(raw_fd, raw_size):
            for block in range(max(start // bs, last_block + 1), (end - 1) // bs + 1):
                last_block = block
                data = _pread_all(raw_fd, min(bs, virtual_size - block * bs), block * bs)
                if _is_zero(data):
                    continue
                _write_sparse(fd, data, next_free)
                bat.set(layout.bat_index(block), _present_entry(next_free))
                next_free += bs
                stored += 1
        bat.flush()
        os.ftruncate(fd, next_free)
    return stored


# -- block writer -----------------------------------------------------------------------------


def _header_slots(fd: int) -> list[int | None]:
    """Sequence number of the valid header in each slot (``None`` when the slot is invalid)."""
    seqs: list[int | None] = []
    for offset in HEADER_OFFSETS:
        raw = _pread_all(fd, HEADER_SIZE, offset)
        sig, checksum, seq = _HEADER.unpack_from(raw)[:3]
        seqs.append(seq if sig == _HEADER_SIGNATURE and checksum == crc32c_of(raw) else None)
    return seqs


class VhdxBlockWriter:
    """Byte-range writes into an existing dynamic VHDX, allocating blocks on write.

    * A write into a stored block goes to its place in the file.
    * A write into a block that reads as zeros (not present, zero, unmapped) is dropped when the
      data is all zeros; otherwise a block is appended at the next 1 MiB boundary after the end
      of the file, only the non-zero pages are written (the rest is a hole) and the BAT update is
      kept pending.
    * :meth:`flush` makes the payload durable (``fdatasync``), then writes the pending BAT
      entries in place and syncs again — the BAT never points at data that is not on disk.
      More than 4096 pending entries flush by themselves; :meth:`close` flushes.
    * Before the first modification the header is rewritten once, in the non-current slot,
      with a higher sequence number and new file-write and data-write GUIDs.

    Reads (:meth:`pread`) see pending writes. Calls are serialised by a lock. The first
    ``OSError`` is sticky: every later call raises it again and nothing more is written.
    """

    def __init__(self, fd: int, *, name: str = "", owns_fd: bool = False) -> None:
        """Parse and check an open VHDX.

        Args:
            fd: descriptor open for reading and writing; not moved (``pread``/``pwrite`` only).
            name: label for error messages.
            owns_fd: close ``fd`` in :meth:`close`.

        Raises:
            CorruptImage: the file is damaged.
            NotSupported: the log needs replaying, a differencing disk, unknown required items.
        """
        self._fd = fd
        self._name = name or f"fd {fd}"
        self._owns_fd = owns_fd
        image = VhdxImage(fd, name=self._name)
        self._header = image.header
        md = image.metadata
        self._size = md.virtual_disk_size
        self._block_size = md.block_size
        self._chunk_ratio = image.chunk_ratio
        self._block_count = image.block_count
        bat = next(r for r in image.regions if r.guid == BAT_GUID)
        self._bat_offset = bat.file_offset
        ends = [os.fstat(fd).st_size, self._header.log_offset + self._header.log_length]
        ends += [r.file_offset + r.length for r in image.regions]
        self._next_free = _round_up(max(ends), MIB)
        self._pending: dict[int, int] = {}  # payload block -> host offset, BAT not yet written
        self._bat_cache: dict[int, bytes] = {}
        self._header_renewed = False
        self._failure: OSError | None = None
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> VhdxBlockWriter:
        """Open the VHDX at ``path`` for writing (the writer owns the descriptor).

        Raises:
            CorruptImage: see :meth:`__init__`.
            NotSupported: see :meth:`__init__`.
            OSError: the file cannot be opened.
        """
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            return cls(fd, name=os.fsdecode(path), owns_fd=True)
        except BaseException:
            os.close(fd)
            raise

    # -- properties -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        """Label for error messages."""
        return self._name

    @property
    def size(self) -> int:
        """Bytes of the virtual disk."""
        return self._size

    @property
    def block_size(self) -> int:
        """Payload block size."""
        return self._block_size

    def fileno(self) -> int:
        """The host descriptor."""
        return self._fd

    def __enter__(self) -> VhdxBlockWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- I/O ------------------------------------------------------------------------------

    def pread(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes of the virtual disk at ``offset`` (pending writes included).

        Raises:
            InvalidArgument: the range is outside the virtual disk.
            CorruptImage: a BAT entry is invalid.
        """
        with self._lock:
            self._check_usable()
            self._check_range(offset, length)
            parts: list[bytes] = []
            for block, within, n in self._pieces(offset, length):
                host = self._host_offset(block)
                parts.append(bytes(n) if host is None else _pread_all(self._fd, n, host + within))
            return b"".join(parts)

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` at ``offset`` of the virtual disk, allocating blocks as needed.

        Returns:
            ``len(data)``.

        Raises:
            InvalidArgument: the range is outside the virtual disk.
            CorruptImage: a BAT entry is invalid.
            OSError: the write failed (sticky).
        """
        view = memoryview(data).cast("B")
        with self._lock:
            self._check_usable()
            self._check_range(offset, len(view))
            try:
                pos = 0
                for block, within, n in self._pieces(offset, len(view)):
                    self._write_piece(block, within, view[pos : pos + n])
                    pos += n
                if len(self._pending) >= _MAX_PENDING_ENTRIES:
                    self._flush_locked()
            except OSError as exc:
                self._failure = exc
                raise
            return len(view)

    def flush(self) -> None:
        """Make every write durable: payload first, then the BAT entries pointing at it.

        Raises:
            OSError: syncing or writing failed (sticky).
        """
        with self._lock:
            self._check_usable()
            try:
                self._flush_locked()
            except OSError as exc:
                self._failure = exc
                raise

    def close(self) -> None:
        """Flush (unless a write failed) and release the descriptor if owned (idempotent).

        Raises:
            OSError: the final flush failed; the descriptor is released anyway.
        """
        if self._fd < 0:
            return
        try:
            if self._failure is None:
                self.flush()
        finally:
            if self._owns_fd:
                os.close(self._fd)
            self._fd = -1

    # -- internals ------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._fd < 0:
            raise FailedPrecondition(f"{self._name}: VHDX writer is closed", subject=self._name)

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise InvalidArgument(
                f"{self._name}: {length} bytes at offset {offset} are outside the virtual disk "
                f"({self._size} bytes)",
                subject=self._name,
            )

    def _pieces(self, offset: int, length: int) -> Iterator[tuple[int, int, int]]:
        bs = self._block_size
        end = offset + length
        while offset < end:
            block, within = divmod(offset, bs)
            n = min(bs - within, end - offset)
            yield block, within, n
            offset += n

    def _corrupt(self, what: str) -> CorruptImage:
        return CorruptImage(f"{self._name}: VHDX {what}", subject=self._name)

    def _bat_entry(self, index: int) -> int:
        page, slot = divmod(index, _BAT_PAGE_ENTRIES)
        raw = self._bat_cache.get(page)
        if raw is None:
            raw = _pread_all(self._fd, _PAGE, self._bat_offset + page * _PAGE)
            if len(self._bat_cache) >= _BAT_CACHE_PAGES:
                self._bat_cache.clear()
            self._bat_cache[page] = raw
        entry: int = struct.unpack_from("<Q", raw, slot * 8)[0]
        return entry

    def _host_offset(self, block: int) -> int | None:
        pending = self._pending.get(block)
        if pending is not None:
            return pending
        entry = self._bat_entry(block + block // self._chunk_ratio)
        state = entry & _BAT_STATE_MASK
        if state in (BatState.NOT_PRESENT, BatState.UNDEFINED, BatState.ZERO, BatState.UNMAPPED):
            return None
        if state != BatState.FULLY_PRESENT:
            raise self._corrupt(f"block {block} has BAT state {state} (no parent to read from)")
        host = (entry >> _BAT_OFFSET_SHIFT) << _BAT_OFFSET_SHIFT
        if host < MIB or host + self._block_size > self._next_free:
            raise self._corrupt(f"block {block} is stored at impossible offset {host}")
        return host

    def _write_piece(self, block: int, within: int, data: memoryview) -> None:
        host = self._host_offset(block)
        if host is None and _is_zero(data):
            return  # reads as zeros already; zero blocks are never stored
        self._renew_header()
        if host is not None:
            _pwrite_all(self._fd, data, host + within)
            return
        host = self._next_free
        self._next_free += self._block_size
        os.ftruncate(self._fd, self._next_free)  # the new block is a hole: zeros
        _write_sparse(self._fd, data, host + within)
        self._pending[block] = host

    def _renew_header(self) -> None:
        """MS-VHDX 2.2.2: new FileWriteGuid/DataWriteGuid before the first modification."""
        if self._header_renewed:
            return
        seqs = _header_slots(self._fd)
        current = max((i for i, s in enumerate(seqs) if s is not None), key=lambda i: seqs[i] or 0)
        target = 1 - current
        h = self._header
        raw = _header(
            h.sequence_number + 1,
            uuid.uuid4(),
            uuid.uuid4(),
            log_guid=h.log_guid,
            log_length=h.log_length,
            log_offset=h.log_offset,
        )
        _pwrite_all(self._fd, raw, HEADER_OFFSETS[target])
        os.fsync(self._fd)
        self._header_renewed = True

    def _flush_locked(self) -> None:
        if self._pending:
            os.fdatasync(self._fd)  # payload before the BAT entries that point at it
            for block, host in sorted(self._pending.items()):
                index = block + block // self._chunk_ratio
                entry = struct.pack("<Q", _present_entry(host))
                _pwrite_all(self._fd, entry, self._bat_offset + index * 8)
                self._bat_cache.pop(index // _BAT_PAGE_ENTRIES, None)
            self._pending.clear()
        if self._header_renewed:
            os.fdatasync(self._fd)
