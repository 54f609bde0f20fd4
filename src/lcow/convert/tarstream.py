"""A lean, streaming tar reader that hands file data to the kernel (SPEC §6.6, §6.7).

Python's :mod:`tarfile` costs about 30 µs per entry before any data moves; a layer converter must
add little per entry, so this reader parses the 512-byte headers itself from one reused buffer and
moves file data with a background copy (regular-file input) or ``splice`` (pipe input) straight
into the output, touching Python buffers only for small files already in the read buffer.

The common case of header parsing runs in C when ``lcow._tarscan`` is built (see
``src/lcow/_native/tarscan.c``); it declines anything unusual, which is then parsed here.

Understood: ustar, GNU (``L``/``K`` long names, ``S`` old sparse, base-256 numbers) and PAX
(``x`` records incl. ``SCHILY.xattr.*``, sub-second times, GNU sparse 0.0/0.1/1.0). PAX globals
(``g``) are consumed and ignored. Any other type is reported to the caller, which rejects it.
"""

from __future__ import annotations

import os
import re
import stat
import struct
import zlib
from collections.abc import Iterator
from typing import Any, Protocol, cast

from lcow._util import native
from lcow._util.escape import quoted
from lcow._util.outbuf import OutputWriter
from lcow._util.paxrecords import MAX_META_SIZE, MalformedRecord, pax_records
from lcow.errors import InvalidArgument, LimitExceeded

__all__ = ["MAX_META_SIZE", "TarEntry", "TarReader", "TruncatedArchive"]

BLOCK = 512
BUFFER_SIZE = 1 << 20
#: Most data segments a sparse member may list.
MAX_SPARSE_SEGMENTS = 1 << 20
#: Files up to this size are copied through the read buffer; larger ones go kernel to kernel.
KERNEL_COPY_MIN = 256 << 10

_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12s")
_CHKSUM_SPACES = sum(b" " * 8)
_ZERO_BLOCK = bytes(BLOCK)
_META_TYPES = frozenset((b"x", b"g", b"L", b"K"))
_POSIX_MAGIC = b"ustar\x00"
_GNU_MAGIC = b"ustar "
_SPARSE_ENTRY = struct.Struct("12s12s")


class Scanner(Protocol):
    """What the reader calls in the C accelerator ``lcow._tarscan`` (``tarscan.c``)."""

    SLOW: int
    END: int

    def scan_entry(
        self, buf: bytearray, start: int, end: int, max_meta: int, /
    ) -> tuple[Any, ...] | int: ...


#: The C header scanner (``lcow._tarscan``), or None: then every member is parsed in Python.
TARSCAN = cast("Scanner | None", native.load("_tarscan"))
_SCAN_END = -1  # lcow._tarscan's return codes besides a parsed member
_SCAN_SLOW = 0


class TruncatedArchive(InvalidArgument):
    """The archive ended in the middle of an entry."""


class TarEntry:
    """One tar member, names and link targets as raw bytes.

    Attributes:
        name: member name as stored (not normalised).
        type: the type flag byte (``b"0"``, ``b"5"`` …; NUL is reported as ``b"0"``).
        mode: permission and special bits (``0o7777``).
        size: bytes of data that follow the header in the archive.
        realsize: logical file size (differs from ``size`` for sparse files).
        sparse: ``[(offset, length), …]`` data segments of a sparse file, else ``None``.
        mtime_ns, atime_ns, ctime_ns: times in ns; atime/ctime ``None`` when absent.
        xattrs: extended attributes from PAX ``SCHILY.xattr.*`` records, or ``None``.
    """

    __slots__ = (
        "atime_ns",
        "ctime_ns",
        "devmajor",
        "devminor",
        "gid",
        "linkname",
        "mode",
        "mtime_ns",
        "name",
        "offset",
        "realsize",
        "size",
        "sparse",
        "type",
        "uid",
        "xattrs",
    )

    def __init__(self) -> None:
        self.name = b""
        self.type = b"0"
        self.mode = 0
        self.uid = 0
        self.gid = 0
        self.size = 0
        self.realsize = 0
        self.mtime_ns = 0
        self.atime_ns: int | None = None
        self.ctime_ns: int | None = None
        self.linkname = b""
        self.devmajor = 0
        self.devminor = 0
        self.xattrs: dict[bytes, bytes] | None = None
        self.sparse: list[tuple[int, int]] | None = None
        self.offset = 0

    @property
    def display_name(self) -> str:
        """The name for messages: decoded leniently, never failing."""
        return self.name.decode("utf-8", "surrogateescape")


def _num(field: bytes, what: str, name: bytes) -> int:
    """Parse a numeric header field: octal text, or GNU base-256 when the top bit is set."""
    if field and field[0] < 0x80:
        try:  # the common case: digits, then NULs or spaces
            return int(field.rstrip(b"\x00 "), 8)
        except ValueError:
            pass
    if field and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big") | ((field[0] & 0x3F) << (8 * (len(field) - 1)))
        if field[0] & 0x40:  # 0xff prefix: negative, two's complement
            value -= 1 << (8 * len(field) - 2)
        return value
    text = field.split(b"\x00", 1)[0].strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        shown = name.decode("utf-8", "surrogateescape")
        raise InvalidArgument(
            f"{shown}: invalid {what} field {quoted(field)}", subject=shown
        ) from None


def _checksum_ok(raw: bytes | bytearray, field: bytes) -> bool:
    """Whether the header's stored checksum equals the sum of its bytes (field as spaces).

    Exact but cheaper than ``sum(raw)``: both values lie in [0, 512 * 255], and matching them
    modulo 255 (base-256 digits of ``raw``) and modulo 65521 (Adler-32's byte sum) pins them
    down, since 255 * 65521 exceeds that range.
    """
    try:
        stored = int(field.rstrip(b"\x00 "), 8)
    except ValueError:
        return False
    if not 0 <= stored <= BLOCK * 255:
        return False
    delta = _CHKSUM_SPACES - sum(field)
    by255 = (int.from_bytes(raw, "little") + delta - stored) % 255
    by65521 = ((zlib.adler32(raw) & 0xFFFF) - 1 + delta - stored) % 65521
    return by255 == 0 and by65521 == 0


# Octal digits between spaces; a NUL ends the field (what _num reads of it).
_OCTAL_FIELD = re.compile(rb"[ ]*[0-7]*[ ]*(?:\x00.*)?", re.DOTALL)


def _v7_numbers(fields: tuple[bytes, ...]) -> bool:
    """Whether an old-style (pre-POSIX, no magic) header's numeric fields are octal text,
    as a real one's are: mode, uid, gid, size, mtime."""
    return all(_OCTAL_FIELD.fullmatch(fields[i]) for i in (1, 2, 3, 4, 5))


#: Times are clamped to what ext4 can store (seconds -2^31 .. 0x37fffffff).
MIN_TIME_NS = -(1 << 31) * 1_000_000_000
MAX_TIME_NS = 0x37FFFFFFF * 1_000_000_000 + 999_999_999


def _clamp_time(ns: int) -> int:
    return MIN_TIME_NS if ns < MIN_TIME_NS else MAX_TIME_NS if ns > MAX_TIME_NS else ns


def _pax_time(value: bytes, key: str, name: bytes) -> int:
    """Parse a PAX decimal time (``-12.5``, ``1700000000.123456789``) to ns, clamped to the
    range ext4 can store."""
    return _clamp_time(_pax_time_raw(value, key, name))


def _pax_time_raw(value: bytes, key: str, name: bytes) -> int:
    try:
        whole, dot, frac = value.partition(b".")
        if not dot:
            return int(whole) * 1_000_000_000
        negative = whole.startswith(b"-")
        ns = int(whole.lstrip(b"-") or b"0") * 1_000_000_000 + int(frac[:9].ljust(9, b"0"))
    except ValueError:
        shown = name.decode("utf-8", "surrogateescape")
        raise InvalidArgument(
            f"{shown}: invalid PAX {key} {quoted(value)}", subject=shown
        ) from None
    return -ns if negative else ns


#: Most digits a PAX number may have (2^64 has 20): longer ones are not sizes or ids.
_MAX_DIGITS = 32


def _pax_int(value: bytes, key: bytes | str, name: bytes) -> int:
    """Parse a PAX decimal number: ASCII digits only (no sign, space or underscore)."""
    if not value.isdigit() or len(value) > _MAX_DIGITS:
        shown = name.decode("utf-8", "surrogateescape")
        what = key.decode("ascii", "surrogateescape") if isinstance(key, bytes) else key
        raise InvalidArgument(
            f"{shown}: invalid PAX {what} {quoted(value[:40])}: not a decimal number", subject=shown
        )
    return int(value)


class TarReader:
    """Iterate tar members from a file descriptor and copy their data into an image.

    Args:
        fd: readable descriptor: a regular file (data copied on the writer thread) or a pipe
            (``splice``). It is read from its current offset; the reader does not close it.
        initial: bytes already read from ``fd`` that come first (used after sniffing magic).
        start: read a regular file from this offset instead of the current one.
        end: never read a regular file at or past this offset (the tar ends there).
        name: the input, for messages about the archive as a whole.

    The archive must be whole: it ends with the end-of-archive marker (two zero blocks), and
    its first block is a valid tar header.
    """

    def __init__(
        self,
        fd: int,
        initial: bytes = b"",
        *,
        start: int | None = None,
        end: int | None = None,
        name: str = "<stream>",
    ) -> None:
        self._fd = fd
        self.name = name
        st = os.fstat(fd)
        self._regular = stat.S_ISREG(st.st_mode)
        self._pipe = stat.S_ISFIFO(st.st_mode)
        self._buf = bytearray(max(BUFFER_SIZE, len(initial)))
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = len(initial)
        self._buf[: len(initial)] = initial
        # Absolute input offset of _buf[_end] for regular files (explicit-offset reads).
        self._file_pos = 0
        self._limit = -1  # regular files: offset where the input ends (-1: at EOF)
        if self._regular:
            self._file_pos = os.lseek(fd, 0, os.SEEK_CUR) if start is None else start
            if end is not None:
                self._limit = end
        self.consumed = 0  # bytes of archive consumed so far
        self._eof = False
        self._last: TarEntry | None = None  # the latest member, to place a later failure
        #: The header accelerator in use; set to None to parse every member in Python.
        self.native: Scanner | None = TARSCAN

    # -- buffer management -------------------------------------------------------------------

    def _read_some(self) -> int:
        """Read more input after ``_end``; returns bytes read (0 at EOF)."""
        if self._eof:
            return 0
        target = self._view[self._end :]
        if self._regular:
            if self._limit >= 0:
                target = target[: max(0, self._limit - self._file_pos)]
                if not target:
                    self._eof = True
                    return 0
            n = os.preadv(self._fd, [target], self._file_pos)
            self._file_pos += n
        else:
            n = os.readv(self._fd, [target])
        if n == 0:
            self._eof = True
        self._end += n
        return n

    def _fill(self, need: int) -> bool:
        """Make ``need`` bytes available at ``_start``; False if the input ends first."""
        while self._end - self._start < need:
            if self._start and (
                self._start > len(self._buf) // 2 or len(self._buf) - self._start < need
            ):
                left = self._end - self._start
                self._buf[:left] = self._view[self._start : self._end]
                self._start, self._end = 0, left
            if len(self._buf) - self._start < need:
                self._view.release()  # a bytearray cannot grow while a view exports it
                self._buf.extend(bytes(need - (len(self._buf) - self._start)))
                self._view = memoryview(self._buf)
            if not self._read_some():
                return False
        return True

    def _take(self, n: int, entry: TarEntry | None) -> memoryview:
        """Consume exactly ``n`` buffered bytes (read as needed)."""
        if not self._fill(n):
            raise self._truncated(entry)
        start = self._start
        self._start += n
        self.consumed += n
        return self._view[start : start + n]

    def _truncated(self, entry: TarEntry | None) -> TruncatedArchive:
        if entry is None:
            return TruncatedArchive(
                f"{self.name}: unexpected end of input inside a header at offset "
                f"{self.consumed}{self._after()}",
                subject=self.name,
            )
        shown = entry.display_name
        return TruncatedArchive(f"{shown}: unexpected end of archive", subject=shown)

    def _after(self) -> str:
        """Where in the archive, for a message that has no entry of its own to name."""
        return "" if self._last is None else f" (after entry {self._last.display_name})"

    def _end_marker(self) -> None:
        """A zero block was consumed: the second block of the end marker must follow."""
        offset = self.consumed
        if not self._fill(BLOCK):
            raise TruncatedArchive(
                f"{self.name}: truncated archive: the end-of-archive marker is one zero block "
                f"at offset {offset - BLOCK}, not two{self._after()}",
                subject=self.name,
            )
        start = self._start
        if self._buf[start : start + BLOCK] != _ZERO_BLOCK:
            raise InvalidArgument(
                f"{self.name}: invalid tar header at offset {offset}: a zero block "
                f"followed by data{self._after()}",
                subject=self.name,
            )
        self._start = start + BLOCK
        self.consumed = offset + BLOCK

    def _skip(self, n: int, entry: TarEntry | None) -> None:
        """Consume ``n`` bytes without looking at them."""
        buffered = min(n, self._end - self._start)
        self._start += buffered
        self.consumed += buffered
        n -= buffered
        if not n:
            return
        if self._regular:
            if self._file_pos + n > self._input_size():
                raise self._truncated(entry)
            self._file_pos += n
            self.consumed += n
            return
        while n:
            self._start = self._end = 0
            got = self._read_some()
            if not got:
                raise self._truncated(entry)
            use = min(n, got)
            self._start = use
            self.consumed += use
            n -= use

    def _input_size(self) -> int:
        """Where a regular-file input ends."""
        return self._limit if self._limit >= 0 else os.fstat(self._fd).st_size

    def _padding(self, size: int) -> int:
        return -size & (BLOCK - 1)

    # -- data movement -----------------------------------------------------------------------

    def read_data(self, n: int, entry: TarEntry) -> bytes:
        """Return the next ``n`` data bytes of ``entry`` as a bytes object."""
        return bytes(self._take(n, entry))

    def skip_data(self, n: int, entry: TarEntry) -> None:
        """Discard the next ``n`` data bytes of ``entry``."""
        self._skip(n, entry)

    def copy_data(self, n: int, out: OutputWriter, offset: int, entry: TarEntry) -> None:
        """Copy the next ``n`` data bytes of ``entry`` into the output at byte ``offset``."""
        buffered = self._end - self._start
        if n <= buffered or (n < KERNEL_COPY_MIN and n <= len(self._buf)):
            out.write_at(offset, self._take(n, entry))
            return
        # Large: what is already buffered goes through Python, the rest kernel to kernel.
        if buffered:
            out.write_at(offset, self._take(buffered, entry))
            offset += buffered
            n -= buffered
        out.submit()  # pending small writes go on in the background; ranges are disjoint
        self._start = self._end = 0
        if self._regular:
            # Copied on the writer thread while the next headers are parsed here.
            if self._file_pos + n > self._input_size():
                raise self._truncated(entry)
            out.copy_range(self._fd, self._file_pos, offset, n, lambda: self._truncated(entry))
            self._file_pos += n
            self.consumed += n
        elif self._pipe:
            while n:
                done = os.splice(self._fd, out.fd, n, offset_dst=offset)
                if done == 0:
                    raise self._truncated(entry)
                out.wrote_elsewhere(offset, done)
                offset += done
                n -= done
                self.consumed += done
        else:
            while n:
                chunk = self._take(min(n, len(self._buf)), entry)
                out.write_at(offset, chunk)
                offset += len(chunk)
                n -= len(chunk)
                out.flush()
                self._start = self._end = 0

    def finish_data(self, entry: TarEntry) -> None:
        """Skip the block padding after ``entry``'s data."""
        pad = self._padding(entry.size)
        if pad:
            self._skip(pad, entry)

    def drain(self) -> None:
        """Read the input to its very end (tar padding after the end marker included)."""
        if self._regular:
            return
        self.consumed += self._end - self._start  # what is buffered counts too
        self._start = self._end = 0
        while self._read_some():
            self.consumed += self._end
            self._start = self._end = 0

    # -- headers -----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[TarEntry]:
        return self.entries()

    def entries(self) -> Iterator[TarEntry]:
        """Yield members in archive order. The caller must consume each member's data (copy,
        read or skip exactly ``entry.size`` bytes, then :meth:`finish_data`) before the next."""
        scan = None if self.native is None else self.native.scan_entry
        while True:
            if scan is not None:
                result = scan(self._buf, self._start, self._end, MAX_META_SIZE)
                if isinstance(result, tuple):
                    self._last = entry = self._scanned(result)
                    yield entry
                    continue
                if result == _SCAN_END:
                    self._start += BLOCK
                    self.consumed += BLOCK
                    self._end_marker()
                    return
                if result != _SCAN_SLOW and self._fill(result):
                    continue  # now buffered: scan again
                # Unusual or incomplete at the end of input: the Python parser decides.
            member = self._next_member()
            if member is None:
                return
            self._last = member
            yield member

    def _scanned(self, fields: tuple[Any, ...]) -> TarEntry:
        """A member parsed by the accelerator (same fields the Python parser fills)."""
        entry = TarEntry.__new__(TarEntry)
        (
            entry.name,
            entry.type,
            entry.mode,
            entry.uid,
            entry.gid,
            entry.size,
            entry.mtime_ns,
            entry.atime_ns,
            entry.ctime_ns,
            entry.linkname,
            entry.devmajor,
            entry.devminor,
            entry.xattrs,
            header,
            after,
        ) = fields
        entry.realsize = entry.size
        entry.sparse = None
        start = self._start
        entry.offset = self.consumed + header - start
        self.consumed += after - start
        self._start = after
        return entry

    def _no_end_marker(self) -> TruncatedArchive:
        if not self.consumed:
            shown = self.name
            return TruncatedArchive(f"{shown}: empty input, not a tar archive", subject=shown)
        return TruncatedArchive(
            f"{self.name}: truncated archive: no end-of-archive marker at offset "
            f"{self.consumed}{self._after()}",
            subject=self.name,
        )

    def _bad_header(self, offset: int, why: str) -> InvalidArgument:
        if not offset:
            return InvalidArgument(
                f"{self.name}: not a tar archive (the first block is no tar header: {why})",
                subject=self.name,
            )
        return InvalidArgument(
            f"{self.name}: invalid tar header at offset {offset} ({why}){self._after()}",
            subject=self.name,
        )

    def _next_member(self) -> TarEntry | None:  # noqa: PLR0912, PLR0915 - hot loop: per header block; ustar, GNU and PAX parsing inline
        """Parse the next member with its metadata records; ``None`` at the end."""
        pax: dict[bytes, bytes] | None = None
        sparse_pairs: list[int] | None = None
        long_name: bytes | None = None
        long_link: bytes | None = None
        meta_bytes = 0  # metadata records pending for the member
        while True:
            if self._end - self._start < BLOCK and not self._fill(BLOCK):
                if self._end - self._start:
                    raise self._truncated(None)
                raise self._no_end_marker()
            offset = self.consumed
            start = self._start
            raw = self._buf[start : start + BLOCK]
            self._start = start + BLOCK
            self.consumed = offset + BLOCK
            if raw[0] == 0 and raw == _ZERO_BLOCK:
                self._end_marker()
                return None  # what follows the marker is read by drain()
            fields = _HEADER.unpack(raw)
            if not _checksum_ok(raw, fields[6]):
                # Not a header: its bytes are no name to quote.
                raise self._bad_header(offset, "checksum mismatch")
            name = fields[0].split(b"\x00", 1)[0]
            magic = fields[9]
            if not offset and magic not in (_POSIX_MAGIC, _GNU_MAGIC) and not _v7_numbers(fields):
                raise self._bad_header(offset, "no ustar magic and no valid old-style fields")
            if magic == _POSIX_MAGIC and fields[15][0]:
                name = fields[15].split(b"\x00", 1)[0] + b"/" + name
            typeflag = fields[7]
            if typeflag == b"\x00":
                typeflag = b"0"
            size = _num(fields[4], "size", name)
            if size < 0:
                shown = name.decode("utf-8", "surrogateescape")
                raise InvalidArgument(f"{shown}: negative size", subject=shown)

            if typeflag in _META_TYPES:
                meta_bytes += size
                if meta_bytes > MAX_META_SIZE:
                    shown = name.decode("utf-8", "surrogateescape")
                    raise LimitExceeded(
                        f"{shown}: {typeflag.decode()} records of {meta_bytes} bytes exceed "
                        f"the limit of {MAX_META_SIZE}",
                        subject=shown,
                    )
                if self._end - self._start < size + BLOCK and not self._fill(size):
                    holder = TarEntry()
                    holder.name = name
                    raise self._truncated(holder)
                data = bytes(self._view[self._start : self._start + size])
                used = (size + BLOCK - 1) & ~(BLOCK - 1)
                self._skip(used, None)
                if typeflag == b"x":
                    pax, sparse_pairs = self._parse_pax(data, name, pax, sparse_pairs)
                elif typeflag == b"L":
                    long_name = data.split(b"\x00", 1)[0]
                elif typeflag == b"K":
                    long_link = data.split(b"\x00", 1)[0]
                continue  # 'g': global PAX headers are ignored

            entry = TarEntry()
            entry.offset = offset
            entry.name = name
            entry.type = typeflag
            entry.size = size
            entry.mode = _num(fields[1], "mode", name) & 0o7777
            # Fields a PAX record overrides are not parsed (GNU tar repeats mtime in PAX).
            if pax is None or b"uid" not in pax:
                entry.uid = _num(fields[2], "uid", name)
            if pax is None or b"gid" not in pax:
                entry.gid = _num(fields[3], "gid", name)
            if pax is None or b"mtime" not in pax:
                entry.mtime_ns = _clamp_time(_num(fields[5], "mtime", name) * 1_000_000_000)
            entry.linkname = fields[8].split(b"\x00", 1)[0]
            if typeflag in (b"3", b"4"):
                entry.devmajor = _num(fields[13], "devmajor", name)
                entry.devminor = _num(fields[14], "devminor", name)
            entry.realsize = size
            if magic == _GNU_MAGIC and typeflag == b"S":
                self._gnu_sparse(entry, bytes(raw))
            if long_name is not None:
                entry.name = long_name
            if long_link is not None:
                entry.linkname = long_link
            if pax is not None:
                self._apply_pax(entry, pax, sparse_pairs)
            return entry

    def _parse_pax(
        self,
        data: bytes,
        name: bytes,
        into: dict[bytes, bytes] | None,
        sparse_pairs: list[int] | None,
    ) -> tuple[dict[bytes, bytes], list[int] | None]:
        """Parse PAX records (:mod:`lcow._util.paxrecords`); repeated GNU.sparse.offset and
        numbytes are kept in order."""
        records = into if into is not None else {}
        try:
            for key, value in pax_records(data):
                if key in (b"GNU.sparse.offset", b"GNU.sparse.numbytes"):
                    if sparse_pairs is None:
                        sparse_pairs = []
                    sparse_pairs.append(_pax_int(value, key, name))
                else:
                    records[key] = value
        except MalformedRecord as exc:
            shown = name.decode("utf-8", "surrogateescape")
            raise InvalidArgument(f"{shown}: {exc}", subject=shown) from None
        return records, sparse_pairs

    def _apply_pax(  # noqa: PLR0912 - hot loop: per PAX member, one elif per PAX key lcow reads
        self, entry: TarEntry, pax: dict[bytes, bytes], sparse_pairs: list[int] | None
    ) -> None:
        name = entry.name
        xattrs: dict[bytes, bytes] | None = None
        number = _pax_int
        for key, value in pax.items():
            if key == b"path":
                entry.name = value
            elif key == b"linkpath":
                entry.linkname = value
            elif key == b"size":
                entry.size = entry.realsize = number(value, key, name)
            elif key == b"mtime":
                entry.mtime_ns = _pax_time(value, "mtime", name)
            elif key == b"atime":
                entry.atime_ns = _pax_time(value, "atime", name)
            elif key == b"ctime":
                entry.ctime_ns = _pax_time(value, "ctime", name)
            elif key == b"uid":
                entry.uid = number(value, key, name)
            elif key == b"gid":
                entry.gid = number(value, key, name)
            elif key.startswith(b"SCHILY.xattr."):
                if xattrs is None:
                    xattrs = {}
                xattrs[key[13:]] = value
            elif key == b"SCHILY.devmajor":
                entry.devmajor = number(value, key, name)
            elif key == b"SCHILY.devminor":
                entry.devminor = number(value, key, name)
        if xattrs is not None:
            entry.xattrs = xattrs
        if b"GNU.sparse.major" in pax or b"GNU.sparse.map" in pax or sparse_pairs is not None:
            self._pax_sparse(entry, pax, sparse_pairs)

    # -- sparse files ------------------------------------------------------------------------

    def _gnu_sparse(self, entry: TarEntry, raw: bytes) -> None:
        """Old GNU ``S`` member: 4 map entries in the header, more in extension blocks."""
        segments: list[tuple[int, int]] = []
        self._sparse_entries(raw[386:482], segments, entry)
        extended = raw[482]
        entry.realsize = _num(raw[483:495], "realsize", entry.name)
        while extended:
            if len(segments) > MAX_SPARSE_SEGMENTS:
                raise LimitExceeded(
                    f"{entry.display_name}: sparse map too large", subject=entry.display_name
                )
            block = bytes(self._take(BLOCK, entry))
            self._sparse_entries(block[:504], segments, entry)
            extended = block[504]
        entry.sparse = segments
        entry.type = b"0"

    def _sparse_entries(self, area: bytes, out: list[tuple[int, int]], entry: TarEntry) -> None:
        for i in range(0, len(area), 24):
            off_f, len_f = _SPARSE_ENTRY.unpack_from(area, i)
            if not off_f[0] and not len_f[0]:
                break
            out.append(
                (_num(off_f, "sparse offset", entry.name), _num(len_f, "sparse length", entry.name))
            )

    def _pax_sparse(
        self, entry: TarEntry, pax: dict[bytes, bytes], pairs: list[int] | None
    ) -> None:
        shown = entry.display_name
        if b"GNU.sparse.name" in pax:
            entry.name = pax[b"GNU.sparse.name"]
        real = pax.get(b"GNU.sparse.realsize") or pax.get(b"GNU.sparse.size")
        numbers: list[int]
        if pax.get(b"GNU.sparse.major") == b"1":
            numbers = self._sparse_map_v1(entry)
        elif b"GNU.sparse.map" in pax:
            text = pax[b"GNU.sparse.map"]
            numbers = [_pax_int(x, "sparse map", entry.name) for x in text.split(b",")]
        else:
            numbers = pairs or []
        if real is not None:
            entry.realsize = _pax_int(real, "sparse size", entry.name)
        if len(numbers) % 2:
            raise InvalidArgument(f"{shown}: malformed GNU sparse map", subject=shown)
        entry.sparse = [(numbers[i], numbers[i + 1]) for i in range(0, len(numbers), 2)]

    def _sparse_map_v1(self, entry: TarEntry) -> list[int]:
        """GNU sparse 1.0: the map is decimal lines at the start of the data, block padded."""
        shown = entry.display_name
        lines: list[int] = []
        used = 0
        pending = b""
        count = -1
        while count < 0 or len(lines) < 2 * count:
            if used + BLOCK > entry.size:
                raise InvalidArgument(f"{shown}: truncated GNU sparse map", subject=shown)
            block = bytes(self._take(BLOCK, entry))
            used += BLOCK
            parts = (pending + block).split(b"\n")
            pending = parts.pop()
            for part in parts:
                if count >= 0 and len(lines) >= 2 * count:
                    break  # the rest of the block is padding
                value = _pax_int(part, "sparse map", entry.name)
                if count < 0:
                    count = value
                    if count > MAX_SPARSE_SEGMENTS:
                        raise LimitExceeded(f"{shown}: sparse map too large", subject=shown)
                else:
                    lines.append(value)
            if (count < 0 or len(lines) < 2 * count) and len(pending) > 40:
                raise InvalidArgument(f"{shown}: malformed GNU sparse map", subject=shown)
        entry.size -= used
        return lines[: 2 * count]
