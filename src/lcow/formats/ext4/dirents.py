"""Linear directory blocks (SPEC §6.4)."""

from __future__ import annotations

from lcow.formats.ext4.layout import BLOCK_SIZE, DIRENT_HEADER

__all__ = ["pack_directory"]

_pack_into = DIRENT_HEADER.pack_into


def pack_directory(entries: list[tuple[int, int, bytes]]) -> bytearray:
    """Pack ``(inode, file_type, name)`` entries (``.`` and ``..`` first) into whole blocks.

    An entry never crosses a block; the last entry of each block stretches to the block's end.
    """
    out = bytearray(BLOCK_SIZE)
    block_start = 0
    pos = 0
    last = -1  # offset of the previous entry in the current block
    for ino, ftype, name in entries:
        rec_len = (8 + len(name) + 3) & ~3
        if pos + rec_len > block_start + BLOCK_SIZE:
            _stretch(out, last, block_start + BLOCK_SIZE)
            block_start += BLOCK_SIZE
            out += bytes(BLOCK_SIZE)
            pos = block_start
        _pack_into(out, pos, ino, rec_len, len(name), ftype)
        out[pos + 8 : pos + 8 + len(name)] = name
        last = pos
        pos += rec_len
    _stretch(out, last, block_start + BLOCK_SIZE)
    return out


def _stretch(out: bytearray, entry: int, block_end: int) -> None:
    """Make the entry at ``entry`` cover the rest of its block."""
    out[entry + 4 : entry + 6] = (block_end - entry).to_bytes(2, "little")
