"""Types of the optional C module built from ``src/lcow/_native/ext4pack.c``."""

from array import array

def pack_inodes(
    table: bytearray,
    first: int,
    last: int,
    ipg: int,
    # (mode 'H', uid, gid, links 'I', size, mtime, atime, ctime, start, nblocks 'Q',
    #  xattr_block, extra_blocks 'I'), each indexed by inode number
    columns: tuple[array[int], ...],
    special: bytes | bytearray,
    dirs: array[int],
    free_inodes: array[int],
    bitmaps: bytearray,
    /,
) -> list[int]:
    """Pack the plain inodes of ``[first, last)`` into ``table`` and account every inode of the
    range in the per-group ``dirs``, ``free_inodes`` and inode ``bitmaps``; returns the live
    inodes left for the Python packer."""

def pack_dir(ino: int, parent: int, children: dict[bytes, int], mode: array[int], /) -> bytearray:
    """The directory blocks of ``ino``, as ``pack_directory`` packs them."""
