"""ext4 reader: extended attributes (SPEC §6.5; kernel ``fs/ext4/xattr.c``, ``acl.c``).

Attributes live in the inode after ``i_extra_isize`` (magic, then entries whose values are
offsets from the first entry) and in one external block (32-byte header, entries, values as
offsets from the block start). With ``ea_inode`` a large value lives in its own inode. Entries
are checked like ``ext4_xattr_check_entries``: they end with a zero word inside the area, names
and values stay inside it and values lie after the entry list.

Names are rebuilt from the namespace index; unknown indices are skipped (the kernel does not
list them) and so is ``system.data`` (inline data, not an attribute). POSIX ACLs stored in the
ext4 on-disk form (version 1) are converted to the ``system.posix_acl_*`` xattr form (version 2)
that ``getxattr`` returns; values already in xattr form are passed through.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from lcow.errors import CorruptImage
from lcow.formats.ext4.layout import (
    EXT4_XATTR_MAGIC,
    XATTR_ENTRY,
    XATTR_HEADER,
    XATTR_INDEX_PREFIX,
)

__all__ = [
    "INLINE_DATA_INDEX",
    "INLINE_DATA_NAME",
    "XATTR_SIZE_MAX",
    "RawXattr",
    "acl_disk_to_xattr",
    "full_name",
    "is_acl_index",
    "parse_block_xattrs",
    "parse_inode_xattrs",
]

XATTR_SIZE_MAX = 65536  # largest value getxattr can return
INLINE_DATA_INDEX = 7  # EXT4_XATTR_INDEX_SYSTEM
INLINE_DATA_NAME = b"data"  # "system.data"
_ACL_INDICES = (2, 3)  # system.posix_acl_access, system.posix_acl_default
_EXT4_ACL_VERSION = 1
_POSIX_ACL_XATTR_VERSION = 2
_ACL_USER = 0x02
_ACL_GROUP = 0x08
_ACL_UNDEFINED_ID = 0xFFFFFFFF
_U32 = struct.Struct("<I")
_ACL_SHORT = struct.Struct("<HH")
_ACL_LONG = struct.Struct("<HHI")


class RawXattr(NamedTuple):
    """One stored attribute.

    Attributes:
        name_index: ``e_name_index`` (namespace).
        name: name suffix after the namespace prefix.
        value: the value, or ``b""`` when it lives in an EA inode.
        value_inum: EA inode holding the value (0 when stored inline).
        value_size: ``e_value_size``.
    """

    name_index: int
    name: bytes
    value: bytes
    value_inum: int
    value_size: int


def full_name(index: int, suffix: bytes) -> bytes | None:
    """The visible attribute name, or ``None`` for namespaces the kernel does not list."""
    prefix = XATTR_INDEX_PREFIX.get(index)
    if prefix is None or index == 0:
        return None
    return prefix + suffix


def parse_inode_xattrs(area: bytes, *, where: str, subject: str) -> list[RawXattr]:
    """Attributes in the in-inode area (after ``i_extra_isize``).

    Args:
        area: the inode bytes after ``128 + i_extra_isize``.
        where: message prefix.
        subject: error subject.

    Returns:
        Stored attributes in on-disk order; empty when the area has no xattr magic.

    Raises:
        CorruptImage: malformed entries.
    """
    if len(area) < 4 or _U32.unpack_from(area)[0] != EXT4_XATTR_MAGIC:
        return []
    body = area[4:]
    return list(_entries(body, 0, 0, where=f"{where}: in-inode xattrs", subject=subject))


def parse_block_xattrs(block: bytes, *, where: str, subject: str) -> list[RawXattr]:
    """Attributes in an external xattr block.

    Args:
        block: the whole block.
        where: message prefix (should name the block).
        subject: error subject.

    Returns:
        Stored attributes in on-disk order.

    Raises:
        CorruptImage: bad magic, ``h_blocks`` other than 1, malformed entries.
    """
    magic, _refcount, blocks, _hash, _csum, _ = XATTR_HEADER.unpack_from(block)
    if magic != EXT4_XATTR_MAGIC:
        raise CorruptImage(f"{where}: bad xattr block magic {magic:#010x}", subject=subject)
    if blocks != 1:
        raise CorruptImage(f"{where}: xattr block claims {blocks} blocks", subject=subject)
    return list(_entries(block, XATTR_HEADER.size, 0, where=where, subject=subject))


def _entries(
    buf: bytes, first: int, value_base: int, *, where: str, subject: str
) -> Iterator[RawXattr]:
    end = len(buf)
    found: list[tuple[int, int, int, int, int, bytes]] = []
    off = first
    while True:
        if off + 4 > end:
            raise CorruptImage(f"{where}: entry list runs off the end", subject=subject)
        if _U32.unpack_from(buf, off)[0] == 0:
            break
        if off + XATTR_ENTRY.size > end:
            raise CorruptImage(f"{where}: entry at {off} is truncated", subject=subject)
        name_len, index, value_offs, value_inum, value_size, _ = XATTR_ENTRY.unpack_from(buf, off)
        name_end = off + XATTR_ENTRY.size + name_len
        if name_end > end:
            raise CorruptImage(f"{where}: entry at {off} has its name outside", subject=subject)
        name = buf[off + XATTR_ENTRY.size : name_end]
        found.append((off, index, value_offs, value_inum, value_size, name))
        off += (XATTR_ENTRY.size + name_len + 3) & ~3
    entries_end = off + 4
    for off, index, value_offs, value_inum, value_size, name in found:
        if value_inum:
            if value_size > XATTR_SIZE_MAX:
                raise CorruptImage(
                    f"{where}: entry at {off} has a {value_size}-byte EA-inode value",
                    subject=subject,
                )
            yield RawXattr(index, name, b"", value_inum, value_size)
            continue
        start = value_base + value_offs
        if value_size and (start < entries_end or start + value_size > end):
            raise CorruptImage(
                f"{where}: value of entry at {off} ({value_size} bytes at {value_offs}) lies "
                "outside the value area",
                subject=subject,
            )
        yield RawXattr(index, name, buf[start : start + value_size], 0, value_size)


def acl_disk_to_xattr(value: bytes, *, where: str, subject: str) -> bytes:
    """Convert an ext4 on-disk ACL (version 1) to the ``posix_acl_xattr`` form (version 2).

    Args:
        value: the stored value.
        where: message prefix.
        subject: error subject.

    Returns:
        The xattr form; ``value`` unchanged when it is not in the ext4 on-disk form.

    Raises:
        CorruptImage: a version-1 ACL with a truncated entry.
    """
    if len(value) < 4 or _U32.unpack_from(value)[0] != _EXT4_ACL_VERSION:
        return value
    out = bytearray(_U32.pack(_POSIX_ACL_XATTR_VERSION))
    off = 4
    while off < len(value):
        if off + _ACL_SHORT.size > len(value):
            raise CorruptImage(f"{where}: truncated ACL entry at {off}", subject=subject)
        tag, perm = _ACL_SHORT.unpack_from(value, off)
        if tag in (_ACL_USER, _ACL_GROUP):
            if off + _ACL_LONG.size > len(value):
                raise CorruptImage(f"{where}: truncated ACL entry at {off}", subject=subject)
            ident = _ACL_LONG.unpack_from(value, off)[2]
            off += _ACL_LONG.size
        else:
            ident = _ACL_UNDEFINED_ID
            off += _ACL_SHORT.size
        out += _ACL_LONG.pack(tag, perm, ident)
    return bytes(out)


def is_acl_index(index: int) -> bool:
    """Whether ``index`` is one of the POSIX ACL namespaces."""
    return index in _ACL_INDICES
