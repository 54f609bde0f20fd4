"""Byte sources: the disk containers a layer image comes in (SPEC §7).

An image reader sees a flat, bounded array of bytes — the virtual disk. This module gives it
one for each container the project meets:

* a raw ext4 file;
* a fixed VHD: the raw disk followed by a 512-byte footer (§7.1) that readers ignore — a file
  is footed when its last 512 bytes start with ``conectix`` and the checksum holds;
* a dynamic VHDX (§7.2), parsed by :mod:`lcow.formats.vhd.vhdx`;
* bytes in memory (tests and fuzzing).

Every source refuses reads outside the virtual disk with :class:`~lcow.errors.CorruptImage`
(an image that points there is damaged), never returns short data, and can say where a range of
the virtual disk lives in the host file (:meth:`ByteSource.host_ranges`) so data can be moved
with ``os.copy_file_range``/``sendfile`` later.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterator
from typing import NamedTuple, Protocol, Self, runtime_checkable

from lcow.errors import CorruptImage, NotSupported
from lcow.formats.vhd.footer import FOOTER_SIZE, read_footer
from lcow.formats.vhd.vhdx import VHDX_SIGNATURE, VhdxImage

__all__ = [
    "ByteSource",
    "BytesSource",
    "ContainerKind",
    "FileSource",
    "HostRange",
    "check_range",
    "detect_container",
    "open_source",
]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class HostRange(NamedTuple):
    """Where a piece of the virtual disk lives in the host file.

    Attributes:
        host_offset: byte offset in the host file (``ByteSource.fileno()``), or ``None`` when
            the piece is not stored and reads as zeros.
        length: bytes in this piece.
    """

    host_offset: int | None
    length: int


@runtime_checkable
class ByteSource(Protocol):
    """A bounded, read-only virtual disk."""

    @property
    def name(self) -> str:
        """A label for error messages (usually the file path)."""
        ...

    @property
    def size(self) -> int:
        """Bytes in the virtual disk."""
        ...

    def pread(self, offset: int, length: int) -> bytes:
        """Read exactly ``length`` bytes at ``offset`` of the virtual disk.

        Raises:
            CorruptImage: the range is not inside ``[0, size)`` or the host file is short.
        """
        ...

    def host_ranges(self, offset: int, length: int) -> Iterator[tuple[int | None, int]]:
        """Map ``[offset, offset + length)`` of the virtual disk to host-file ranges, in order.

        Each item is ``(host_offset, length)`` (a :class:`HostRange` or an equivalent tuple);
        ``host_offset`` is ``None`` where the disk reads as zeros.

        Raises:
            CorruptImage: the range is not inside ``[0, size)``.
        """
        ...

    def fileno(self) -> int:
        """The host file descriptor the offsets of :meth:`host_ranges` refer to.

        Raises:
            NotSupported: the source has no host file (memory).
        """
        ...

    def close(self) -> None:
        """Release the host file if the source owns it."""
        ...

    def __enter__(self) -> Self:
        """Use as a context manager that closes the source."""
        ...

    def __exit__(self, *exc: object) -> None:
        """Close the source."""
        ...


def check_range(name: str, offset: int, length: int, size: int) -> None:
    """Refuse a read outside ``[0, size)``.

    Args:
        name: source label for the message.
        offset: first byte.
        length: byte count.
        size: bytes in the source.

    Raises:
        CorruptImage: the range is not inside the source.
    """
    if offset < 0 or length < 0 or offset + length > size:
        raise CorruptImage(
            f"{name}: read of {length} bytes at offset {offset} is outside the image "
            f"({size} bytes)",
            subject=name,
        )


class FileSource:
    """A window ``[base, base + size)`` of a host file, read with ``os.pread``.

    Used for raw images (``base`` 0, whole file) and fixed VHDs (the file less its footer).
    """

    def __init__(self, fd: int, *, size: int, base: int = 0, name: str = "", owns_fd: bool = False):
        """Wrap an open descriptor.

        Args:
            fd: descriptor open for reading; not moved (``pread`` only).
            size: bytes in the window.
            base: host offset of the window's first byte.
            name: label for error messages.
            owns_fd: close ``fd`` in :meth:`close`.
        """
        self._fd = fd
        self._size = size
        self._base = base
        self._name = name or f"fd {fd}"
        self._owns_fd = owns_fd

    @property
    def name(self) -> str:
        """Label for error messages."""
        return self._name

    @property
    def size(self) -> int:
        """Bytes in the window."""
        return self._size

    def pread(self, offset: int, length: int) -> bytes:
        """Read exactly ``length`` bytes at ``offset`` (see :class:`ByteSource`)."""
        check_range(self._name, offset, length, self._size)
        data = os.pread(self._fd, length, self._base + offset)
        if len(data) == length:
            return data
        parts = [data]
        done = len(data)
        while done < length:
            chunk = os.pread(self._fd, length - done, self._base + offset + done)
            if not chunk:
                raise CorruptImage(
                    f"{self._name}: file ends at {self._base + offset + done}, inside a read of "
                    f"{length} bytes at offset {offset}",
                    subject=self._name,
                )
            parts.append(chunk)
            done += len(chunk)
        return b"".join(parts)

    def host_ranges(self, offset: int, length: int) -> Iterator[HostRange]:
        """One host range: the window is stored verbatim (see :class:`ByteSource`)."""
        check_range(self._name, offset, length, self._size)
        if length:
            yield HostRange(self._base + offset, length)

    def fileno(self) -> int:
        """The host descriptor."""
        return self._fd

    def close(self) -> None:
        """Close the descriptor if owned (idempotent)."""
        if self._owns_fd and self._fd >= 0:
            os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BytesSource:
    """An in-memory virtual disk (tests, fuzzing); host offsets index the buffer."""

    def __init__(self, data: bytes | bytearray | memoryview, *, name: str = "<memory>") -> None:
        """Wrap bytes (copied once so later mutation cannot race the reader).

        Args:
            data: the disk.
            name: label for error messages.
        """
        self._data = bytes(data)
        self._name = name

    @property
    def name(self) -> str:
        """Label for error messages."""
        return self._name

    @property
    def size(self) -> int:
        """Bytes in the buffer."""
        return len(self._data)

    def pread(self, offset: int, length: int) -> bytes:
        """Slice the buffer (see :class:`ByteSource`)."""
        check_range(self._name, offset, length, len(self._data))
        return self._data[offset : offset + length]

    def host_ranges(self, offset: int, length: int) -> Iterator[HostRange]:
        """One range: offsets into the buffer (see :class:`ByteSource`)."""
        check_range(self._name, offset, length, len(self._data))
        if length:
            yield HostRange(offset, length)

    def fileno(self) -> int:
        """Memory has no descriptor.

        Raises:
            NotSupported: always.
        """
        raise NotSupported(f"{self._name}: an in-memory source has no file descriptor")

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> BytesSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ContainerKind(enum.Enum):
    """How a disk image file stores its virtual disk."""

    RAW = "raw"
    VHD_FIXED = "vhd"
    VHDX = "vhdx"


def detect_container(fd: int) -> ContainerKind:
    """Tell a VHDX (``vhdxfile`` at 0), a footed fixed VHD and a raw image apart.

    Args:
        fd: descriptor open for reading; not moved.

    Returns:
        The container kind; ``RAW`` when nothing else matches.

    Raises:
        NotSupported: a VHD footer describing a dynamic or differencing disk.
    """
    if os.pread(fd, len(VHDX_SIGNATURE), 0) == VHDX_SIGNATURE:
        return ContainerKind.VHDX
    footer = read_footer(fd)
    if footer is None:
        return ContainerKind.RAW
    if not footer.is_fixed:
        raise NotSupported(f"VHD disk type {footer.disk_type} is not supported (only fixed, 2)")
    return ContainerKind.VHD_FIXED


def open_source(path: str | os.PathLike[str], *, kind: ContainerKind | None = None) -> ByteSource:
    """Open a disk image file as a byte source, detecting its container.

    Args:
        path: the image file.
        kind: skip detection and use this container.

    Returns:
        A source owning its descriptor; close it when done.

    Raises:
        CorruptImage: the container is damaged (VHDX headers, fixed VHD shorter than a footer).
        NotSupported: a container variant lcow cannot read (dynamic VHD, differencing VHDX,
            VHDX log needing replay).
        OSError: the file cannot be opened.
    """
    name = os.fsdecode(path)
    fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    try:
        if kind is None:
            kind = detect_container(fd)
        file_size = os.fstat(fd).st_size
        if kind is ContainerKind.VHDX:
            return VhdxImage(fd, name=name, owns_fd=True)
        if kind is ContainerKind.VHD_FIXED:
            if file_size < FOOTER_SIZE:
                raise CorruptImage(f"{name}: shorter than a VHD footer", subject=name)
            return FileSource(fd, size=file_size - FOOTER_SIZE, name=name, owns_fd=True)
        return FileSource(fd, size=file_size, name=name, owns_fd=True)
    except BaseException:
        os.close(fd)
        raise
