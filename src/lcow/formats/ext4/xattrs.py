"""Extended attributes: name splitting, entry hash, in-inode and block packing (SPEC §6.5)."""

from __future__ import annotations

from lcow._util.escape import quoted
from lcow.errors import LimitExceeded
from lcow.formats.ext4.layout import (
    BLOCK_SIZE,
    EXT4_XATTR_MAGIC,
    INODE_XATTR_SPACE,
    XATTR_ENTRY,
    XATTR_HEADER,
    XATTR_PREFIXES,
)

__all__ = [
    "XattrItem",
    "acl_to_disk",
    "block_hash",
    "entry_hash",
    "pack_xattrs",
    "split_name",
    "xattr_items",
]

_M32 = 0xFFFFFFFF
_ENTRY_SIZE = XATTR_ENTRY.size  # 16
_BLOCK_HEADER = XATTR_HEADER.size  # 32

# (index, suffix, value) — one attribute as stored.
XattrItem = tuple[int, bytes, bytes]


def split_name(name: bytes) -> tuple[int, bytes] | None:
    """Map a full attribute name to (e_name_index, suffix); ``None`` for unknown namespaces."""
    for index, prefix in XATTR_PREFIXES:
        if name.startswith(prefix):
            suffix = name[len(prefix) :]
            # The ACL names are whole names, not prefixes.
            if index in (2, 3, 8) and suffix:
                continue
            return index, suffix
    return None


def entry_hash(suffix: bytes, value: bytes) -> int:
    """The kernel's ``ext4_xattr_hash_entry`` over the name suffix and the padded value."""
    h = 0
    for byte in suffix:
        h = ((h << 5) & _M32) ^ (h >> 27) ^ byte
    padded = value + bytes(-len(value) & 3)
    for i in range(0, len(padded), 4):
        word = int.from_bytes(padded[i : i + 4], "little")
        h = ((h << 16) & _M32) ^ (h >> 16) ^ word
    return h


def block_hash(hashes: list[int]) -> int:
    """The kernel's block hash (``ext4_xattr_rehash``) from the entry hashes in order."""
    h = 0
    for eh in hashes:
        if eh == 0:
            return 0
        h = ((h << 16) & _M32) ^ (h >> 16) ^ eh
    return h


def xattr_items(xattrs: dict[bytes, bytes]) -> list[XattrItem]:
    """Attributes as stored, in the kernel's block order (index, name length, name); names in
    unknown namespaces are left out."""
    items = [
        (split[0], split[1], value)
        for name, value in xattrs.items()
        if (split := split_name(name)) is not None
    ]
    items.sort(key=lambda item: (item[0], len(item[1]), item[1]))
    return items


def _entry_size(suffix: bytes) -> int:
    return (_ENTRY_SIZE + len(suffix) + 3) & ~3


def _value_size(value: bytes) -> int:
    return (len(value) + 3) & ~3


def _pack_area(items: list[XattrItem], area: bytearray, entries_at: int, base: int) -> list[int]:
    """Write entries from ``entries_at`` and values from the end of ``area``.

    ``base`` is what ``e_value_offs`` is relative to. Returns the entry hashes.
    """
    pos = entries_at
    value_end = len(area)
    hashes = []
    for index, suffix, value in items:
        if value:
            value_end -= _value_size(value)
            area[value_end : value_end + len(value)] = value
            offs = value_end - base
        else:
            offs = 0
        h = entry_hash(suffix, value)
        hashes.append(h)
        XATTR_ENTRY.pack_into(area, pos, len(suffix), index, offs, 0, len(value), h)
        area[pos + _ENTRY_SIZE : pos + _ENTRY_SIZE + len(suffix)] = suffix
        pos += _entry_size(suffix)
    return hashes


def pack_xattrs(
    items: list[XattrItem], *, inode_space: int = INODE_XATTR_SPACE, owner: str = ""
) -> tuple[bytes | None, bytes | None]:
    """Lay out attributes in the inode's spare area first, the rest in one external block.

    Args:
        items: attributes sorted as the kernel sorts block entries (index, name length, name);
            ``system.data`` (inline data) must come first and always stays in the inode.
        inode_space: bytes after the in-inode magic.
        owner: path used in error messages.

    Returns:
        ``(inode_area, block)``: the in-inode area including its magic (``None`` if unused) and
        a full 4 KiB block (``None`` if unused).
    """
    for _index, suffix, _value in items:
        if len(suffix) > 255:  # e_name_len is one byte
            raise LimitExceeded(
                f"{owner}: xattr name {quoted(suffix[:40])}... is longer than ext4's 255 bytes",
                subject=owner,
            )
    used = 4  # end-of-entries marker
    split = 0
    for _index, suffix, value in items:
        need = _entry_size(suffix) + _value_size(value)
        if used + need > inode_space:
            break
        used += need
        split += 1
    in_inode, in_block = items[:split], items[split:]
    if in_block and in_block[0][0] == 7 and in_block[0][1] == b"data":
        raise LimitExceeded(f"{owner}: inline data does not fit in the inode", subject=owner)

    inode_area: bytes | None = None
    if in_inode:
        area = bytearray(4 + inode_space)
        area[0:4] = EXT4_XATTR_MAGIC.to_bytes(4, "little")
        _pack_area(in_inode, area, 4, 4)
        inode_area = bytes(area)

    block: bytes | None = None
    if in_block:
        need = _BLOCK_HEADER + 4 + sum(_entry_size(s) + _value_size(v) for _, s, v in in_block)
        if need > BLOCK_SIZE:
            # Name the attribute that no longer fits.
            total = _BLOCK_HEADER + 4
            for index, suffix, value in in_block:
                total += _entry_size(suffix) + _value_size(value)
                if total > BLOCK_SIZE:
                    raise LimitExceeded(
                        f"{owner}: could not fit xattr {quoted(suffix)} "
                        f"(namespace {index}): attributes exceed one {BLOCK_SIZE}-byte block",
                        subject=owner,
                    )
        buf = bytearray(BLOCK_SIZE)
        hashes = _pack_area(in_block, buf, _BLOCK_HEADER, 0)
        XATTR_HEADER.pack_into(buf, 0, EXT4_XATTR_MAGIC, 1, 1, block_hash(hashes), 0, b"")
        block = bytes(buf)
    return inode_area, block


_ACL_XATTR_VERSION = 2  # the form getxattr/setxattr use (posix_acl_xattr)
_ACL_DISK_VERSION = 1  # ext4's on-disk form
_ACL_USER, _ACL_GROUP = 0x02, 0x08  # the tags that carry an id
_ACL_TAGS = {0x01, 0x02, 0x04, 0x08, 0x10, 0x20}


def acl_to_disk(value: bytes) -> bytes | None:
    """Convert a POSIX ACL from the xattr form (as tar carries it) to ext4's on-disk form.

    Returns ``None`` when ``value`` is not a well-formed xattr-form ACL.
    """
    if len(value) < 4 or (len(value) - 4) % 8:
        return None
    if int.from_bytes(value[:4], "little") != _ACL_XATTR_VERSION:
        return None
    out = bytearray(_ACL_DISK_VERSION.to_bytes(4, "little"))
    for i in range(4, len(value), 8):
        tag = int.from_bytes(value[i : i + 2], "little")
        if tag not in _ACL_TAGS:
            return None
        out += value[i : i + 4]  # e_tag, e_perm
        if tag in (_ACL_USER, _ACL_GROUP):
            out += value[i + 4 : i + 8]  # e_id
    return bytes(out)
