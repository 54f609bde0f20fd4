"""Open a tar source as a descriptor, decompressing gzip or zstd (detected by magic) on a thread.

The converter reads descriptors only: a regular file lets file data move with
``copy_file_range``, a pipe with ``splice``. Compressed input and Python file objects without a
descriptor are pumped into a pipe by a background thread (zlib and zstandard release the GIL, so
decompression overlaps conversion on a second core).
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

from lcow._util.decompress import decompress, detect
from lcow.errors import InvalidArgument, NotFound

__all__ = ["FileSlice", "TarSource", "input_name", "open_tar_input"]

_CHUNK = 1 << 20

Work = Callable[[Callable[[int], bytes], Callable[[bytes], None]], None]


def _read_fd(fd: int) -> Callable[[int], bytes]:
    return lambda n: os.read(fd, n)


def _decompressing(kind: str, name: str) -> Work:
    """Pump work: decompress a complete ``kind`` stream (a cut one fails, naming ``name``)."""

    def run(read: Callable[[int], bytes], write: Callable[[bytes], None]) -> None:
        for chunk in decompress(kind, read, name=name, chunk=_CHUNK):
            write(chunk)

    return run


class _Pump:
    """Runs ``work(read, write)`` on a thread, writing into a pipe the converter reads."""

    def __init__(self, work: Work, read: Callable[[int], bytes], name: str) -> None:
        self.read_fd, self._write_fd = os.pipe()
        self.error: BaseException | None = None
        self.name = name
        self._work = work
        self._read = read
        self._thread = threading.Thread(target=self._run, name="lcow-decompress", daemon=True)
        self._thread.start()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._write_fd, view)
            view = view[n:]

    def _run(self) -> None:
        try:
            self._work(self._read, self._write)
        except BrokenPipeError:
            pass  # the reader stopped early (an error there is reported instead)
        except BaseException as exc:  # reported to the reader after EOF
            self.error = exc
        finally:
            os.close(self._write_fd)

    def close(self) -> None:
        os.close(self.read_fd)
        self._thread.join()


def _sniff(read: Callable[[int], bytes]) -> bytes:
    data = b""
    while len(data) < 4:
        chunk = read(4 - len(data))
        if not chunk:
            break
        data += chunk
    return data


@dataclass(frozen=True)
class FileSlice:
    """A tar stored as ``length`` bytes at ``offset`` of a regular file (a member of an image
    archive): read in place, with kernel copies, never past its end.

    Attributes:
        name: what messages call it (default ``<slice>``).
    """

    fd: int
    offset: int
    length: int
    name: str | None = None


class TarSource(NamedTuple):
    """Where the converter reads the uncompressed tar.

    Attributes:
        fd: the descriptor.
        initial: bytes already consumed from ``fd`` that come first.
        start: for a file slice, its first byte (reads are positional); else ``None``.
        end: for a file slice, one past its last byte; else ``None``.
        pump: the thread decompressing or copying into ``fd``, if any.
        name: the input, for messages (its path, ``<stdin>``, ``<stream>``).
    """

    fd: int
    initial: bytes = b""
    start: int | None = None
    end: int | None = None
    pump: _Pump | None = None
    name: str = "<stream>"

    def check(self) -> None:
        """Raise what went wrong on the pump's side (a read or decompression error), which
        the converter saw only as an early end of the stream. Called before the output is
        committed, so a failed source never leaves an image behind."""
        if self.pump is not None and self.pump.error is not None:
            raise _decompress_error(self.pump.error, self.name) from self.pump.error


def _slice_reader(where: FileSlice) -> Callable[[int], bytes]:
    pos = [where.offset]
    end = where.offset + where.length

    def read(n: int) -> bytes:
        n = min(n, end - pos[0])
        if n <= 0:
            return b""
        data = os.pread(where.fd, n, pos[0])
        pos[0] += len(data)
        return data

    return read


def input_name(src: str | os.PathLike[str] | BinaryIO | int | FileSlice) -> str:
    """What messages call an input: its path, ``<stdin>``, a file object's ``name``, or
    ``<stream>`` when nothing better is known."""
    if isinstance(src, FileSlice):
        return src.name or "<slice>"
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    if isinstance(src, int):
        return "<stdin>" if src == 0 else "<stream>"
    given = getattr(src, "name", None)
    return given if isinstance(given, str) else "<stream>"


@contextlib.contextmanager
def open_tar_input(
    src: str | os.PathLike[str] | BinaryIO | int | FileSlice, *, name: str | None = None
) -> Iterator[TarSource]:
    """Yield the :class:`TarSource` from which the uncompressed tar can be read.

    Args:
        src: a path, a descriptor, a binary file object, or a :class:`FileSlice`.
        name: what messages call the input (default: see :func:`input_name`).
    """
    name = name or input_name(src)
    own_fd = -1
    pump: _Pump | None = None
    try:
        if isinstance(src, FileSlice):
            kind = detect(os.pread(src.fd, 4, src.offset) if src.length >= 4 else b"")
            if kind is not None:
                pump = _Pump(_decompressing(kind, name), _slice_reader(src), name)
                yield from _yield_checked(pump)
                return
            yield TarSource(src.fd, b"", src.offset, src.offset + src.length, name=name)
            return
        if isinstance(src, int):
            fd = src
        elif isinstance(src, (str, os.PathLike)):
            try:
                own_fd = fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError as exc:
                raise NotFound(f"{name}: no such file", subject=name) from exc
            except OSError as exc:
                raise InvalidArgument(f"{name}: cannot open: {exc.strerror}", subject=name) from exc
        else:
            try:
                fd = src.fileno()
                if src.tell() != os.lseek(fd, 0, os.SEEK_CUR):
                    raise io.UnsupportedOperation  # buffered ahead: read through the object
            except (io.UnsupportedOperation, AttributeError, OSError):
                fileobj = src
                head = _sniff(fileobj.read)
                pump = _Pump(_chain_work(head, name), fileobj.read, name)
                yield from _yield_checked(pump)
                return
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        if regular:
            head = os.pread(fd, 4, os.lseek(fd, 0, os.SEEK_CUR))
            initial = b""
        else:
            head = initial = _sniff(_read_fd(fd))
        kind = detect(head)
        if kind is not None:
            pump = _Pump(_prefixed(_decompressing(kind, name), initial), _read_fd(fd), name)
            yield from _yield_checked(pump)
            return
        yield TarSource(fd, initial, name=name)
    finally:
        if pump is not None:
            pump.close()
        if own_fd >= 0:
            os.close(own_fd)


def _yield_checked(pump: _Pump) -> Iterator[TarSource]:
    try:
        yield TarSource(pump.read_fd, pump=pump, name=pump.name)
    except InvalidArgument:
        if pump.error is not None:  # the cause, not the truncated tar it left
            raise _decompress_error(pump.error, pump.name) from pump.error
        raise
    if pump.error is not None:
        raise _decompress_error(pump.error, pump.name) from pump.error


def _decompress_error(exc: BaseException, name: str) -> InvalidArgument:
    if isinstance(exc, InvalidArgument):
        return exc
    if isinstance(exc, OSError):  # the source itself failed, compressed or not
        return InvalidArgument(f"{name}: reading failed: {exc}", subject=name)
    return InvalidArgument(f"{name}: corrupt compressed stream: {exc}", subject=name)


def _prefixed(work: Work, prefix: bytes) -> Work:
    """Run ``work`` over ``prefix`` followed by the rest of the input."""

    def run(read: Callable[[int], bytes], write: Callable[[bytes], None]) -> None:
        pending = [prefix]

        def chained(n: int) -> bytes:
            if pending and pending[0]:
                return pending.pop()
            return read(n)

        work(chained, write)

    return run


def _chain_work(head: bytes, name: str) -> Work:
    """For file objects: plain data is copied, compressed data decompressed."""
    kind = detect(head)
    if kind is not None:
        return _prefixed(_decompressing(kind, name), head)

    def copy(rd: Callable[[int], bytes], write: Callable[[bytes], None]) -> None:
        write(head)
        while True:
            chunk = rd(_CHUNK)
            if not chunk:
                return
            write(chunk)

    return copy
