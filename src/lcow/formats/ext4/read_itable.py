"""ext4 reader: the inode table, read in bulk chunks (SPEC §6.3).

A walk reads every inode it reaches; reading one block per inode costs a system call each and
rereads blocks. :class:`InodeTable` reads the table :data:`CHUNK` bytes at a time and keeps a
bounded number of chunks (oldest dropped first), so a whole layer's inodes cost one read per
chunk. The chunk key is ``(group, offset in the group's table // CHUNK)``; inode sizes are
powers of two no larger than a block, so an inode never straddles two chunks.
"""

from __future__ import annotations

from collections.abc import Callable

from lcow.errors import CorruptImage
from lcow.formats.ext4.read_super import GroupDesc, Superblock
from lcow.formats.source import ByteSource

__all__ = ["CHUNK", "InodeTable"]

CHUNK = 1 << 16  # bytes of inode table read at once
_CACHE = 512  # chunks kept (32 MiB)


class InodeTable:
    """Chunked, bounded cache of a filesystem's inode tables.

    Attributes:
        chunks: cached chunks by ``(group, chunk index)``; read it directly on hot paths and
            call :meth:`slot` on a miss.
    """

    def __init__(
        self,
        source: ByteSource,
        superblock: Superblock,
        group_desc: Callable[[int], GroupDesc],
        error: Callable[[int, bytes | None, str], CorruptImage],
    ) -> None:
        """Prepare to read the inode tables of a filesystem.

        Args:
            source: the disk.
            superblock: its parsed superblock.
            group_desc: returns (and checks) the descriptor of a group.
            error: builds the error naming an inode and path.
        """
        self._source = source
        self._sb = superblock
        self._group_desc = group_desc
        self._error = error
        self._uninit_flags = superblock.has_metadata_csum or superblock.has_gdt_csum
        self.chunks: dict[tuple[int, int], bytes] = {}

    def slot(self, ino: int, path: bytes | None) -> tuple[bytes, int]:
        """The bytes holding inode ``ino`` and the inode's offset in them.

        Args:
            ino: inode number.
            path: a path naming it, for error messages.

        Raises:
            CorruptImage: number out of range, an uninitialised inode table.
        """
        sb = self._sb
        if not 1 <= ino <= sb.s_inodes_count:
            raise self._error(ino, path, f"inode number out of range 1..{sb.s_inodes_count}")
        group, index = divmod(ino - 1, sb.s_inodes_per_group)
        desc = self._group_desc(group)
        if self._uninit_flags and desc.inode_uninit:
            raise self._error(ino, path, f"lies in group {group}'s uninitialised inode table")
        chunk, offset = divmod(index * sb.s_inode_size, CHUNK)
        key = (group, chunk)
        data = self.chunks.get(key)
        if data is None:
            table_bytes = sb.s_inodes_per_group * sb.s_inode_size
            start = chunk * CHUNK
            # parse_group_desc checked that the whole table lies inside the filesystem.
            data = self._source.pread(
                desc.bg_inode_table * sb.block_size + start, min(CHUNK, table_bytes - start)
            )
            if len(self.chunks) >= _CACHE:
                del self.chunks[next(iter(self.chunks))]
            self.chunks[key] = data
        return data, offset
