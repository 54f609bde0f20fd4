"""ext4 reader: what an inode holds — file data, symlink targets, xattrs (SPEC §6.3, §6.5).

Functions over a :class:`~lcow.formats.ext4.read_volume.Volume`; the facade
:class:`~lcow.formats.ext4.reader.Ext4Reader` exposes them as methods and documents them there.
Data and xattrs share a module because each needs the other: inline data continues in the
``system.data`` xattr, and a large xattr value is the data of an EA inode.
"""

from __future__ import annotations

from collections.abc import Iterator

from lcow.errors import CorruptImage, InvalidArgument, LimitExceeded
from lcow.formats.ext4 import read_csum
from lcow.formats.ext4.layout import EXT4_XATTR_MAGIC, InodeFlag
from lcow.formats.ext4.read_file import FileReader, FileSegment
from lcow.formats.ext4.read_inode import Inode
from lcow.formats.ext4.read_types import ByteSpan
from lcow.formats.ext4.read_volume import Volume, corrupt, is_fast_symlink, subject_of, where
from lcow.formats.ext4.read_xattrs import (
    INLINE_DATA_INDEX,
    INLINE_DATA_NAME,
    XATTR_SIZE_MAX,
    RawXattr,
    acl_disk_to_xattr,
    full_name,
    is_acl_index,
    parse_block_xattrs,
    parse_inode_xattrs,
)

__all__ = [
    "inline_data",
    "open_file",
    "read_file",
    "readlink",
    "spans",
    "system_data",
    "xattrs",
]

_FAST_SYMLINK_SIZE = 60  # a target shorter than i_block (EXT4_N_BLOCKS * 4) may live in it
_XATTR_MAGIC_BYTES = EXT4_XATTR_MAGIC.to_bytes(4, "little")
_EA_INODE_FL = int(InodeFlag.EA_INODE)
_PATH_MAX = 4096


# -- data ----------------------------------------------------------------------------------


def system_data(vol: Volume, inode: Inode, path: bytes | None) -> bytes:
    """The ``system.data`` xattr of an inline-data inode: its bytes beyond ``i_block``."""
    at = where(vol, inode.ino, path)
    for item in parse_inode_xattrs(inode.xattr_area, where=at, subject=at):
        if item.name_index == INLINE_DATA_INDEX and item.name == INLINE_DATA_NAME:
            if item.value_inum:
                raise corrupt(vol, inode.ino, path, "system.data lives in an EA inode")
            return item.value
    return b""


def inline_data(vol: Volume, inode: Inode, *, path: bytes | None = None) -> bytes:
    """See :meth:`Ext4Reader.inline_data`."""
    if not inode.has_inline_data:
        raise InvalidArgument(f"{where(vol, inode.ino, path)}: has no inline data")
    data = inode.i_block + system_data(vol, inode, path)
    if inode.size > len(data):
        raise corrupt(
            vol, inode.ino, path, f"inline size {inode.size} exceeds the {len(data)} stored bytes"
        )
    return data[: inode.size]


def _segments(vol: Volume, inode: Inode, path: bytes | None) -> Iterator[FileSegment]:
    if not (inode.is_reg or inode.is_symlink or inode.is_dir):
        return
    if inode.has_inline_data:
        data = inline_data(vol, inode, path=path)
        if data:
            yield FileSegment(0, len(data), None, data)
        return
    if is_fast_symlink(vol, inode):
        target = readlink(vol, inode, path=path)
        yield FileSegment(0, len(target), None, target)
        return
    bs = vol.block_size
    for run in vol.data_runs(inode, path=path):
        offset = run.logical * bs
        length = min(run.length * bs, inode.size - offset)
        image = None if run.physical is None else run.physical * bs
        yield FileSegment(offset, length, image, None)


def spans(vol: Volume, inode: Inode, *, path: bytes | None = None) -> Iterator[ByteSpan]:
    """See :meth:`Ext4Reader.spans`."""
    for seg in _segments(vol, inode, path):
        if seg.image_offset is None:
            yield ByteSpan(seg.offset, seg.length, None, seg.data)
            continue
        offset = seg.offset
        for host, length in vol.source.host_ranges(seg.image_offset, seg.length):
            yield ByteSpan(offset, length, host, None)
            offset += length


def open_file(vol: Volume, inode: Inode, *, path: bytes | None = None) -> FileReader:
    """See :meth:`Ext4Reader.open_file`."""
    return FileReader(vol.source, inode.size, lambda: _segments(vol, inode, path))


def read_file(
    vol: Volume, inode: Inode, *, path: bytes | None = None, max_size: int = 1 << 30
) -> bytes:
    """See :meth:`Ext4Reader.read_file`."""
    if inode.size > max_size:
        raise LimitExceeded(
            f"{where(vol, inode.ino, path)}: {inode.size} bytes exceed the {max_size}-byte "
            "read limit"
        )
    with open_file(vol, inode, path=path) as fh:
        return fh.readall()


def readlink(vol: Volume, inode: Inode, *, path: bytes | None = None) -> bytes:
    """See :meth:`Ext4Reader.readlink`."""
    if not inode.is_symlink:
        raise InvalidArgument(f"{where(vol, inode.ino, path)}: not a symlink")
    if inode.size == 0 or inode.size > max(vol.block_size, _PATH_MAX):
        raise corrupt(vol, inode.ino, path, f"symlink target of {inode.size} bytes")
    if inode.has_inline_data:
        return inline_data(vol, inode, path=path)
    if is_fast_symlink(vol, inode):
        if inode.size >= _FAST_SYMLINK_SIZE:
            raise corrupt(
                vol, inode.ino, path, f"fast symlink of {inode.size} bytes does not fit i_block"
            )
        return inode.i_block[: inode.size]
    return read_file(vol, inode, path=path)


# -- xattrs --------------------------------------------------------------------------------


def _raw_xattrs(vol: Volume, inode: Inode, path: bytes | None) -> list[RawXattr]:
    if not inode.file_acl and inode.xattr_area[:4] != _XATTR_MAGIC_BYTES:
        return []
    at = where(vol, inode.ino, path)
    subject = subject_of(inode.ino, path)
    items = parse_inode_xattrs(inode.xattr_area, where=at, subject=subject)
    if inode.file_acl:
        block = vol.read_block(inode.file_acl)
        bwhere = f"{at}: xattr block {inode.file_acl}"
        if vol.verify_metadata:
            stored = int.from_bytes(block[16:20], "little")
            computed = read_csum.xattr_block_csum(vol.csum_seed, inode.file_acl, block)
            if stored != computed:
                raise CorruptImage(
                    f"{bwhere}: checksum mismatch (stored {stored:#010x}, computed "
                    f"{computed:#010x})",
                    subject=subject,
                )
        items += parse_block_xattrs(block, where=bwhere, subject=subject)
    return items


def xattrs(vol: Volume, inode: Inode, *, path: bytes | None = None) -> dict[bytes, bytes]:
    """See :meth:`Ext4Reader.xattrs`."""
    out: dict[bytes, bytes] = {}
    items = _raw_xattrs(vol, inode, path)
    if not items:
        return out
    total = 0
    at = where(vol, inode.ino, path)
    limit = vol.limits.max_xattr_bytes
    for item in items:
        name = full_name(item.name_index, item.name)
        inline = item.name_index == INLINE_DATA_INDEX and item.name == INLINE_DATA_NAME
        if name is None or inline:
            continue
        total += item.value_size
        if total > limit:
            raise LimitExceeded(f"{at}: xattr values exceed {limit}")
        value = item.value
        if item.value_inum:
            value = _ea_inode_value(vol, inode, item, path)
        if is_acl_index(item.name_index):
            value = acl_disk_to_xattr(value, where=at, subject=at)
        out[name] = value
    return out


def _ea_inode_value(vol: Volume, owner: Inode, item: RawXattr, path: bytes | None) -> bytes:
    ea = vol.inode(item.value_inum, path=path)
    if (
        not ea.flags & _EA_INODE_FL
        or not ea.is_reg
        or ea.size != item.value_size
        or ea.has_inline_data
    ):
        raise corrupt(
            vol, owner.ino, path, f"xattr value inode {item.value_inum} is not a matching EA inode"
        )
    return read_file(vol, ea, path=path, max_size=XATTR_SIZE_MAX)
