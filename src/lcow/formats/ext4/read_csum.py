"""ext4 metadata checksums the reader verifies on request (SPEC §6; kernel ``fs/ext4``).

With ``metadata_csum`` every checksum is the kernel's ``crc32c_le`` — CRC-32C *without* the usual
pre- and post-inversion — seeded with ``s_checksum_seed`` (``CSUM_SEED``) or the CRC of the
filesystem UUID. Per-inode structures (extent blocks, directory blocks) are seeded again with the
inode number and generation. ``gdt_csum`` descriptors use CRC-16 instead.

Nothing here reads the image; each function takes the bytes and returns the checksum the kernel
would store, so the reader compares.
"""

from __future__ import annotations

import struct

from lcow._util.crc32c import crc32c

__all__ = [
    "crc16",
    "crc32c_raw",
    "crc32c_small",
    "fs_csum_seed",
    "group_desc_csum",
    "inode_csum",
    "inode_csum_seed",
    "superblock_csum",
    "xattr_block_csum",
]

_M32 = 0xFFFFFFFF
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

S_CHECKSUM_OFFSET = 0x3FC  # __le32 s_checksum, the last field of the superblock
BG_CHECKSUM_OFFSET = 0x1E  # __le16 bg_checksum
I_CHECKSUM_LO_OFFSET = 0x7C  # __le16 l_i_checksum_lo (osd2)
I_CHECKSUM_HI_OFFSET = 0x82  # __le16 i_checksum_hi (needs i_extra_isize >= 4)
H_CHECKSUM_OFFSET = 0x10  # __le32 h_checksum in struct ext4_xattr_header


def crc32c_raw(crc: int, data: bytes | bytearray | memoryview) -> int:
    """The kernel's ``crc32c_le(crc, data)``: CRC-32C update without inversion.

    Args:
        crc: running value (the kernel starts with ``~0``).
        data: bytes to fold in.

    Returns:
        The updated 32-bit value.
    """
    return crc32c(data, crc ^ _M32) ^ _M32


def _reflected_table(polynomial: int) -> tuple[int, ...]:
    """The 256-entry table of a reflected CRC with ``polynomial`` (bit-reversed form)."""
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ polynomial if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


def _table_update(table: tuple[int, ...], crc: int, data: bytes | bytearray | memoryview) -> int:
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


_CRC32C_TABLE = _reflected_table(0x82F63B78)  # CRC-32C (Castagnoli)
_CRC16_TABLE = _reflected_table(0xA001)  # CRC-16 (0x8005)


def crc32c_small(crc: int, data: bytes | bytearray | memoryview) -> int:
    """:func:`crc32c_raw` computed here, for a few hundred bytes checked once (a superblock):
    about 0.1 ms per KiB, against importing the package."""
    return _table_update(_CRC32C_TABLE, crc, data)


def crc16(crc: int, data: bytes | bytearray | memoryview) -> int:
    """The kernel's ``crc16`` (polynomial 0x8005, reflected), used by ``gdt_csum``.

    Args:
        crc: running value.
        data: bytes to fold in.

    Returns:
        The updated 16-bit value.
    """
    return _table_update(_CRC16_TABLE, crc, data)


def superblock_csum(raw: bytes) -> int:
    """``ext4_superblock_csum``: CRC over the superblock up to ``s_checksum``.

    Args:
        raw: the 1024-byte superblock.

    Returns:
        The value ``s_checksum`` must hold.
    """
    return crc32c_small(_M32, raw[:S_CHECKSUM_OFFSET])


def fs_csum_seed(uuid: bytes, stored_seed: int | None) -> int:
    """The filesystem checksum seed (``sbi->s_csum_seed``).

    Args:
        uuid: ``s_uuid``.
        stored_seed: ``s_checksum_seed`` when the ``CSUM_SEED`` feature is set, else ``None``.

    Returns:
        The seed every metadata checksum starts from.
    """
    if stored_seed is not None:
        return stored_seed
    return crc32c_raw(_M32, uuid)


def group_desc_csum(*, metadata_csum: bool, seed: int, uuid: bytes, group: int, desc: bytes) -> int:
    """``ext4_group_desc_csum``: the 16-bit ``bg_checksum`` of one descriptor.

    Args:
        metadata_csum: CRC-32C (``metadata_csum``) rather than CRC-16 (``gdt_csum``).
        seed: filesystem seed (only for ``metadata_csum``).
        uuid: ``s_uuid`` (only for ``gdt_csum``).
        group: group number.
        desc: the whole descriptor (``s_desc_size`` bytes).

    Returns:
        The value ``bg_checksum`` must hold.
    """
    le_group = _U32.pack(group)
    head = desc[:BG_CHECKSUM_OFFSET]
    tail = desc[BG_CHECKSUM_OFFSET + 2 :]
    if metadata_csum:
        crc = crc32c_raw(seed, le_group)
        crc = crc32c_raw(crc, head)
        crc = crc32c_raw(crc, b"\0\0")
        crc = crc32c_raw(crc, tail)
        return crc & 0xFFFF
    crc = crc16(0xFFFF, uuid)
    crc = crc16(crc, le_group)
    crc = crc16(crc, head)
    return crc16(crc, tail)


def inode_csum_seed(seed: int, ino: int, generation: int) -> int:
    """Per-inode seed (``ei->i_csum_seed``) for extent, directory and inode checksums.

    Args:
        seed: filesystem seed.
        ino: inode number.
        generation: ``i_generation``.

    Returns:
        The per-inode seed.
    """
    return crc32c_raw(crc32c_raw(seed, _U32.pack(ino)), _U32.pack(generation))


def inode_csum(iseed: int, raw: bytes, *, has_hi: bool) -> int:
    """``ext4_inode_csum``: CRC over the whole on-disk inode with its checksum fields zeroed.

    Args:
        iseed: per-inode seed from :func:`inode_csum_seed`.
        raw: the whole inode (``s_inode_size`` bytes).
        has_hi: the inode is large enough to carry ``i_checksum_hi``.

    Returns:
        The full 32-bit value (callers keep the low 16 bits when ``has_hi`` is false).
    """
    buf = bytearray(raw)
    buf[I_CHECKSUM_LO_OFFSET : I_CHECKSUM_LO_OFFSET + 2] = b"\0\0"
    if has_hi:
        buf[I_CHECKSUM_HI_OFFSET : I_CHECKSUM_HI_OFFSET + 2] = b"\0\0"
    return crc32c_raw(iseed, buf)


def xattr_block_csum(seed: int, block_nr: int, block: bytes) -> int:
    """``ext4_xattr_block_csum``: seeded with the 64-bit block number, ``h_checksum`` zeroed.

    Args:
        seed: filesystem seed.
        block_nr: physical block number of the xattr block.
        block: the whole block.

    Returns:
        The value ``h_checksum`` must hold.
    """
    crc = crc32c_raw(seed, _U64.pack(block_nr))
    crc = crc32c_raw(crc, block[:H_CHECKSUM_OFFSET])
    crc = crc32c_raw(crc, b"\0\0\0\0")
    return crc32c_raw(crc, block[H_CHECKSUM_OFFSET + 4 :])
