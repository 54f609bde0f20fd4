"""ext4 reader: a file object over a file's data pieces (SPEC §6.3).

:class:`FileReader` turns the ordered pieces of one file — stored ranges of the disk, holes,
inline bytes — into a seekable binary stream. Holes and unwritten extents read as zeros.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from typing import NamedTuple

from lcow.formats.source import ByteSource

__all__ = ["FileReader", "FileSegment"]

_READ_CHUNK = 1 << 20


class FileSegment(NamedTuple):
    """One piece of a file.

    Attributes:
        offset: byte offset in the file.
        length: bytes in the piece.
        image_offset: where the bytes are on the virtual disk, or ``None``.
        data: the bytes themselves (inline data), or ``None``; with neither, zeros.
    """

    offset: int
    length: int
    image_offset: int | None
    data: bytes | None


class FileReader(io.RawIOBase):
    """Seekable binary reader over one file of an :class:`Ext4Reader` (holes read as zeros).

    Made by :meth:`Ext4Reader.open_file`. The file's pieces are produced lazily and followed
    forward, so memory stays bounded however fragmented the file is; a backward seek restarts
    the walk of the mapping from the beginning.
    """

    def __init__(
        self, source: ByteSource, size: int, segments: Callable[[], Iterator[FileSegment]]
    ) -> None:
        """Prepare to read a file; its mapping is read on first use.

        Args:
            source: the disk the filesystem is on.
            size: the file size.
            segments: produces the file's pieces in order, covering ``[0, size)``.
        """
        super().__init__()
        self._source = source
        self._make_segments = segments
        self._size = size
        self._pos = 0
        self._iter: Iterator[FileSegment] | None = None
        self._seg: FileSegment | None = None  # the piece at or after the last position read

    @property
    def size(self) -> int:
        """The file size."""
        return self._size

    def readable(self) -> bool:
        """Always true."""
        return True

    def seekable(self) -> bool:
        """Always true."""
        return True

    def tell(self) -> int:
        """Current position."""
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move the position (``SEEK_SET``, ``SEEK_CUR``, ``SEEK_END``)."""
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"bad whence {whence}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def _segment_at(self, pos: int) -> FileSegment | None:
        """The piece covering ``pos``, or the next one after it (``None``: none left)."""
        if self._iter is None or (self._seg is not None and pos < self._seg.offset):
            self._iter = self._make_segments()
            self._seg = next(self._iter, None)
        while self._seg is not None and pos >= self._seg.offset + self._seg.length:
            self._seg = next(self._iter, None)
        return self._seg

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        """Read up to ``len(buffer)`` bytes at the current position."""
        view = memoryview(buffer).cast("B")
        pos = self._pos
        if pos >= self._size or not len(view):
            return 0
        seg = self._segment_at(pos)
        if seg is None or pos < seg.offset:
            # Not mapped (a short mapping of a damaged file): zeros up to the next piece.
            end = self._size if seg is None else seg.offset
            n = min(len(view), end - pos, _READ_CHUNK)
            view[:n] = bytes(n)
        else:
            within = pos - seg.offset
            n = min(len(view), seg.length - within, _READ_CHUNK)
            if seg.data is not None:
                view[:n] = seg.data[within : within + n]
            elif seg.image_offset is None:
                view[:n] = bytes(n)
            else:
                view[:n] = self._source.pread(seg.image_offset + within, n)
        self._pos = pos + n
        return n

    def readall(self) -> bytes:
        """Read from the position to the end of the file."""
        parts = []
        buf = bytearray(min(_READ_CHUNK, max(self._size - self._pos, 0)))
        while self._pos < self._size:
            n = self.readinto(buf)
            if n == 0:
                break
            parts.append(bytes(buf[:n]))
        return b"".join(parts)
