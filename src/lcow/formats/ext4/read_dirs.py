"""ext4 reader: directory entries (SPEC §6.4; kernel ``fs/ext4/dir.c``, ``namei.c``, ``inline.c``).

Linear directories are blocks of ``ext4_dir_entry_2`` records chained by ``rec_len``. Hashed
(htree) directories are read the same way: their index blocks look like one empty record (the
root holds ``.`` and a ``..`` spanning the block, inner nodes one inode-0 record spanning it), so
a linear read of every block yields exactly the leaf entries. Inline directories keep the parent
inode in the first four bytes of ``i_block``, entries in the other 56 and in the ``system.data``
xattr value.

Every record is checked the way ``ext4_check_dir_entry`` does (length, alignment, name inside
the record, inode number in range) and names with ``/`` or NUL are refused, so a walk can never
be steered outside its tree. ``metadata_csum`` leaf tails and htree ``dx_tail`` checksums are
verified on request.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from lcow._util.escape import quoted
from lcow.errors import CorruptImage
from lcow.formats.ext4.layout import DIRENT_HEADER, FileType
from lcow.formats.ext4.read_csum import crc32c_raw

__all__ = [
    "DIR_TAIL_FILE_TYPE",
    "DirEntry",
    "collect_dir_inodes",
    "collect_dir_names",
    "decode_rec_len",
    "parse_dir_region",
    "parse_inline_dir",
    "verify_dir_block",
]

DIR_TAIL_FILE_TYPE = 0xDE  # EXT4_FT_DIR_CSUM
_DIR_TAIL = struct.Struct("<IHBBI")  # det_reserved_zero1, det_rec_len, zero2, det_reserved_ft, csum
_MIN_REC_LEN = 12  # EXT4_DIR_REC_LEN(1)
_INLINE_DOTDOT_SIZE = 4
_DX_ROOT_INFO_OFFSET = 24  # after "." (12) and the start of ".." (12)
_DX_NODE_COUNT_OFFSET = 8  # after the fake inode-0 record header
_DX_ENTRY = 8
_DX_TAIL = 8  # dt_reserved, dt_checksum
_U16X2 = struct.Struct("<HH")
_DOTS = frozenset({b".", b".."})
_DIRENT_UNPACK = DIRENT_HEADER.unpack_from
_FT_DIR = FileType.DIR


class DirEntry(NamedTuple):
    """One live directory entry.

    Attributes:
        name: entry name bytes (never empty, no ``/`` or NUL).
        ino: inode number it points at.
        file_type: ``FileType`` value from the entry (0 without the ``filetype`` feature).
    """

    name: bytes
    ino: int
    file_type: int


def decode_rec_len(raw: int, block_size: int) -> int:
    """``ext4_rec_len_from_disk``: 64 KiB blocks encode lengths above 65535 in the low bits."""
    if block_size < 65536:
        return raw
    if raw in (65535, 0):
        return block_size
    return (raw & 65532) | ((raw & 3) << 16)


def parse_dir_region(  # noqa: PLR0913 - keyword-only: the three superblock facts that decide record validity plus two message labels
    buf: bytes,
    *,
    where: str,
    subject: str,
    block_size: int,
    inodes_count: int,
    has_filetype: bool,
) -> Iterator[DirEntry]:
    """Parse records that must tile ``buf`` exactly (a block, or an inline region).

    Args:
        buf: the region.
        where: message prefix naming the image, directory and block.
        subject: error subject (``"inode N"``).
        block_size: filesystem block size (``rec_len`` decoding).
        inodes_count: highest valid inode number.
        has_filetype: entries carry a file type byte (otherwise ``name_len`` is 16-bit).

    Yields:
        Live entries (inode non-zero) in on-disk order, ``.`` and ``..`` included.

    Raises:
        CorruptImage: a record that breaks the rules above.
    """
    end = len(buf)
    off = 0
    while off < end:
        if end - off < DIRENT_HEADER.size:
            raise CorruptImage(f"{where}: record at offset {off} is truncated", subject=subject)
        ino, raw_len, name_len, ftype = DIRENT_HEADER.unpack_from(buf, off)
        if not has_filetype:
            name_len |= ftype << 8
            ftype = FileType.UNKNOWN
        rec_len = decode_rec_len(raw_len, block_size)
        if (
            rec_len < _MIN_REC_LEN
            or rec_len % 4
            or off + rec_len > end
            or DIRENT_HEADER.size + name_len > rec_len
        ):
            raise CorruptImage(
                f"{where}: bad record at offset {off} (rec_len {rec_len}, name_len {name_len})",
                subject=subject,
            )
        if ino:
            if ino > inodes_count:
                raise CorruptImage(
                    f"{where}: record at offset {off} points at inode {ino} beyond {inodes_count}",
                    subject=subject,
                )
            name = buf[off + DIRENT_HEADER.size : off + DIRENT_HEADER.size + name_len]
            if not name or b"/" in name or b"\0" in name:
                raise CorruptImage(
                    f"{where}: record at offset {off} has invalid name {quoted(name)}",
                    subject=subject,
                )
            yield DirEntry(name, ino, ftype)
        off += rec_len


def collect_dir_names(  # noqa: PLR0911, PLR0912, PLR0913 - hot loop: checks every record of every directory block in a walk; both layouts inline, failure is a plain False
    buf: bytes,
    start: int,
    stop: int,
    out: list[tuple[bytes, int]],
    *,
    block_size: int,
    inodes_count: int,
    has_filetype: bool,
) -> bool:
    """Append ``(name, ino)`` of the live records in ``buf[start:stop]``, without ``.``/``..``.

    The fast twin of :func:`parse_dir_region` for walks: same checks, but it reports a bad
    record by returning ``False`` (the caller then re-parses the region with
    :func:`parse_dir_region` to raise the precise error).

    Args:
        buf: bytes holding the region.
        start: first byte of the region (records must tile ``[start, stop)`` exactly).
        stop: end of the region.
        out: receives the entries, in on-disk order.
        block_size: filesystem block size (``rec_len`` decoding).
        inodes_count: highest valid inode number.
        has_filetype: entries carry a file type byte.

    Returns:
        ``True`` when every record was valid.
    """
    first = len(out)
    append = out.append
    off = start
    if has_filetype and block_size < 65536:  # the usual layout, without per-record decoding
        unpack = _DIRENT_UNPACK
        try:
            while off < stop:
                ino, rec_len, name_len, _ = unpack(buf, off)
                end = off + rec_len
                if rec_len < _MIN_REC_LEN or rec_len & 3 or end > stop or name_len + 8 > rec_len:
                    return False
                if ino:
                    if ino > inodes_count or not name_len:
                        return False
                    name = buf[off + 8 : off + 8 + name_len]
                    if name_len > 2 or name not in _DOTS:
                        append((name, ino))
                off = end
        except struct.error:  # a record header past the end of buf
            return False
    else:
        while off < stop:
            if stop - off < DIRENT_HEADER.size:
                return False
            ino, rec_len, name_len, ftype = DIRENT_HEADER.unpack_from(buf, off)
            if not has_filetype:
                name_len |= ftype << 8
            rec_len = decode_rec_len(rec_len, block_size)
            if (
                rec_len < _MIN_REC_LEN
                or rec_len & 3
                or off + rec_len > stop
                or name_len + 8 > rec_len
            ):
                return False
            if ino:
                if ino > inodes_count or not name_len:
                    return False
                name = buf[off + 8 : off + 8 + name_len]
                if name_len > 2 or name not in _DOTS:
                    append((name, ino))
            off += rec_len
    # "/" and NUL checked once over all names: a joined string has one iff a name has one.
    names = b"".join([name for name, _ in out[first:]])
    return b"/" not in names and b"\0" not in names


def collect_dir_inodes(  # noqa: PLR0913 - collect_dir_names' arguments plus dir_names, so read_listing._collect drives both alike
    buf: bytes,
    start: int,
    stop: int,
    out: list[int],
    dir_names: dict[int, bytes],
    *,
    block_size: int,
    inodes_count: int,
    has_filetype: bool,
) -> bool:
    """Append the inode numbers of the live records in ``buf[start:stop]``, without ``.``/``..``.

    :func:`collect_dir_names` for callers that need few names (summing sizes): records are
    checked the same way, names only for being non-empty; the names of entries whose type says
    directory (all names, without the ``filetype`` feature) go to ``dir_names``.

    Returns:
        ``True`` when every record was valid.
    """
    if not has_filetype or block_size >= 65536:
        named: list[tuple[bytes, int]] = []
        ok = collect_dir_names(
            buf,
            start,
            stop,
            named,
            block_size=block_size,
            inodes_count=inodes_count,
            has_filetype=has_filetype,
        )
        for name, ino in named:
            out.append(ino)
            dir_names[ino] = name
        return ok
    unpack = _DIRENT_UNPACK
    append = out.append
    off = start
    try:
        while off < stop:
            ino, rec_len, name_len, ftype = unpack(buf, off)
            end = off + rec_len
            if rec_len < _MIN_REC_LEN or rec_len & 3 or end > stop or name_len + 8 > rec_len:
                return False
            if ino:
                if ino > inodes_count or not name_len:
                    return False
                if ftype == _FT_DIR:
                    name = buf[off + 8 : off + 8 + name_len]
                    if name not in _DOTS:
                        append(ino)
                        dir_names[ino] = name
                elif name_len > 2 or buf[off + 8 : off + 8 + name_len] not in _DOTS:
                    append(ino)
            off = end
    except struct.error:  # a record header past the end of buf
        return False
    return True


def parse_inline_dir(  # noqa: PLR0913 - parse_dir_region's keyword-only arguments plus the inline i_block and system.data
    i_block: bytes,
    data: bytes,
    *,
    where: str,
    subject: str,
    block_size: int,
    inodes_count: int,
    has_filetype: bool,
) -> Iterator[DirEntry]:
    """Entries of an inline directory (``..`` first; inline directories store no ``.``).

    Args:
        i_block: the inode's 60-byte ``i_block``.
        data: the ``system.data`` xattr value (may be empty).
        where: message prefix naming the image and directory.
        subject: error subject.
        block_size: filesystem block size.
        inodes_count: highest valid inode number.
        has_filetype: entries carry a file type byte.

    Yields:
        Live entries, starting with ``..``.

    Raises:
        CorruptImage: see :func:`parse_dir_region`.
    """
    parent = struct.unpack_from("<I", i_block)[0]
    if not 0 < parent <= inodes_count:
        raise CorruptImage(f"{where}: inline parent inode {parent} is invalid", subject=subject)
    yield DirEntry(b"..", parent, FileType.DIR)
    for region in (i_block[_INLINE_DOTDOT_SIZE:], data):
        if region:
            yield from parse_dir_region(
                region,
                where=where,
                subject=subject,
                block_size=block_size,
                inodes_count=inodes_count,
                has_filetype=has_filetype,
            )


def verify_dir_block(block: bytes, iseed: int, *, indexed: bool, where: str, subject: str) -> None:
    """Check a directory block's ``metadata_csum`` checksum.

    Leaf blocks end with a 12-byte tail record holding ``crc32c(iseed, block[:-12])``. In an
    htree directory the root (block 0) and inner nodes carry a ``dx_tail`` after their ``limit``
    entries instead (``ext4_dx_csum``); they are recognised by their shape first, because a
    root converted from a leaf block keeps stale leaf-tail bytes.

    Args:
        block: the whole block.
        iseed: the directory's per-inode seed.
        indexed: the directory has ``INDEX_FL`` (index blocks may appear).
        where: message prefix.
        subject: error subject.

    Raises:
        CorruptImage: no checksum where one is required, or a mismatch.
    """
    bs = len(block)
    count_offset = _dx_count_offset(block) if indexed else None
    if count_offset is not None:
        limit, count = _U16X2.unpack_from(block, count_offset)
        tail = count_offset + limit * _DX_ENTRY
        if count > limit or tail + _DX_TAIL > bs:
            raise CorruptImage(
                f"{where}: htree node limit {limit}/count {count} leaves no room for its checksum",
                subject=subject,
            )
        crc = crc32c_raw(iseed, block[: count_offset + count * _DX_ENTRY])
        crc = crc32c_raw(crc, block[tail : tail + 4])
        crc = crc32c_raw(crc, b"\0\0\0\0")
        stored = struct.unpack_from("<I", block, tail + 4)[0]
        if crc != stored:
            raise CorruptImage(
                f"{where}: htree node checksum mismatch (stored {stored:#010x}, computed "
                f"{crc:#010x})",
                subject=subject,
            )
        return
    tail_off = bs - _DIR_TAIL.size
    t_ino, t_len, t_nl, t_ft, t_csum = _DIR_TAIL.unpack_from(block, tail_off)
    if not (t_ino == 0 and t_len == _DIR_TAIL.size and t_nl == 0 and t_ft == DIR_TAIL_FILE_TYPE):
        raise CorruptImage(f"{where}: directory block has no checksum tail", subject=subject)
    computed = crc32c_raw(iseed, block[:tail_off])
    if computed != t_csum:
        raise CorruptImage(
            f"{where}: checksum mismatch (stored {t_csum:#010x}, computed {computed:#010x})",
            subject=subject,
        )


def _dx_count_offset(block: bytes) -> int | None:
    """Offset of ``limit``/``count`` if ``block`` looks like an htree root or inner node."""
    bs = len(block)
    ino, raw_len, name_len, _ = DIRENT_HEADER.unpack_from(block, 0)
    if ino == 0 and name_len == 0 and decode_rec_len(raw_len, bs) == bs:
        return _DX_NODE_COUNT_OFFSET
    if name_len == 1 and block[8:9] == b"." and decode_rec_len(raw_len, bs) == _MIN_REC_LEN:
        _, dd_len, dd_nl, _ = DIRENT_HEADER.unpack_from(block, _MIN_REC_LEN)
        if dd_nl == 2 and decode_rec_len(dd_len, bs) == bs - _MIN_REC_LEN:
            info_length = block[_DX_ROOT_INFO_OFFSET + 5]
            return _DX_ROOT_INFO_OFFSET + info_length
    return None
