"""A ``newc`` cpio writer for the initramfs (no ``cpio`` binary, no root needed for the
device node ``/dev/console`` the kernel wants before init runs)."""

from __future__ import annotations

import stat
from typing import BinaryIO

__all__ = ["CpioWriter"]

_MAGIC = b"070701"


class CpioWriter:
    """Appends entries to ``out``; :meth:`close` writes the trailer. Times are 0, owners 0:0,
    so an archive depends only on its content."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._ino = 1
        self._offset = 0

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self._offset += len(data)

    def _pad(self) -> None:
        self._write(b"\0" * (-self._offset % 4))

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        encoded = name.encode() + b"\0"
        fields = [
            self._ino,
            mode,
            0,
            0,
            2 if stat.S_ISDIR(mode) else 1,
            0,
            len(data),
            0,
            0,
            rdev[0],
            rdev[1],
            len(encoded),
            0,
        ]
        self._ino += 1
        self._write(_MAGIC + b"".join(b"%08X" % f for f in fields) + encoded)
        self._pad()
        self._write(data)
        self._pad()

    def directory(self, name: str, mode: int = 0o755) -> None:
        """A directory (parents must come first)."""
        self._entry(name, stat.S_IFDIR | mode)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """A regular file."""
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        """A symbolic link."""
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        """A character device node."""
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def close(self) -> None:
        """Write the trailer."""
        self._entry("TRAILER!!!", 0)
