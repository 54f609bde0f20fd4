"""ext4 reader: the value objects a read or walk returns, and its limits (SPEC §6).

Kept apart from :mod:`lcow.formats.ext4.reader` so the modules that consume a walk (layer export,
Changes, DiffSize) can import the types without the reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from lcow.formats.ext4.read_inode import Inode

__all__ = ["ByteSpan", "Entry", "ReadLimits", "ScanEntry"]


@dataclass(frozen=True)
class ReadLimits:
    """Bounds on what one read or walk may consume (memory and time on hostile images).

    A walk holds the sorted names of each directory on its current path, so its memory is
    bounded by ``max_depth`` and ``max_dir_entries`` (and, since no directory block may be read
    twice, by the image size); the defaults keep one directory listing near 150 MB at worst.

    Attributes:
        max_depth: deepest directory nesting a walk enters.
        max_dir_size: largest directory (``i_size`` bytes) that is read.
        max_dir_entries: most entries one directory may hold.
        max_xattr_bytes: most attribute value bytes one inode may carry.
    """

    max_depth: int = 2048
    max_dir_size: int = 1 << 28
    max_dir_entries: int = 1 << 20
    max_xattr_bytes: int = 1 << 20


class ByteSpan(NamedTuple):
    """A piece of a file's contents and where it lives.

    Attributes:
        offset: byte offset in the file.
        length: bytes in the piece.
        host_offset: offset of those bytes in the host file (``Ext4Reader.source.fileno()``),
            or ``None`` when they are not stored there.
        data: the bytes themselves for inline data, else ``None``. A span with neither
            ``host_offset`` nor ``data`` reads as zeros (hole, unwritten extent, absent VHDX
            block).
    """

    offset: int
    length: int
    host_offset: int | None
    data: bytes | None


class ScanEntry(NamedTuple):
    """One entry of a metadata scan (:meth:`Ext4Reader.scan`): what Changes and DiffSize compare.

    Attributes:
        path: absolute path bytes inside the image.
        ino: inode number (shared by hard links).
        mode: ``st_mode``.
        uid: owner.
        gid: group.
        size: size in bytes.
        mtime_ns: modification time in nanoseconds.
        rdev: device number of character and block devices, else 0.
        nlink: link count.
        opaque: a directory whose ``trusted.overlay.opaque`` xattr is ``y``.
        capability: the ``security.capability`` xattr when the scan was asked for it and the
            entry has one, else ``None``.
    """

    path: bytes
    ino: int
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    rdev: int
    nlink: int
    opaque: bool
    capability: bytes | None


@dataclass(frozen=True, slots=True)
class Entry:
    """One walked entry: its path and the metadata an export or comparison needs.

    Attributes:
        path: absolute path bytes inside the image (``b"/"`` for the root, ``b"/a/b"``).
        ino: inode number (shared by hard links).
        mode: ``st_mode``.
        uid: owner.
        gid: group.
        size: size in bytes.
        nlink: link count.
        blocks: allocated 512-byte units.
        atime_ns: access time in nanoseconds.
        mtime_ns: modification time.
        ctime_ns: change time.
        crtime_ns: creation time, or ``None``.
        rdev: device number of character and block devices, else 0.
        link_target: symlink target, else ``None``.
        xattrs: extended attributes by full name (empty when the walk skips them).
        inode: the decoded inode, for :meth:`Ext4Reader.open_file` and friends.
    """

    path: bytes
    ino: int
    mode: int
    uid: int
    gid: int
    size: int
    nlink: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    crtime_ns: int | None
    rdev: int
    link_target: bytes | None
    xattrs: dict[bytes, bytes] = field(repr=False)
    inode: Inode = field(repr=False)

    @property
    def name(self) -> bytes:
        """Last path component (``b"/"`` for the root)."""
        return self.path.rsplit(b"/", 1)[-1] or b"/"
