"""Open a possibly compressed tar source as a descriptor (SPEC §6.6): the one input module.

The converter reads descriptors only: a regular file lets file data move with
``copy_file_range``, a pipe with ``splice``. Compressed input (gzip or zstd, detected by magic)
and Python file objects without a descriptor are pumped into a pipe by a background thread
(:class:`Pump`; zlib and zstandard release the GIL, so decompression overlaps conversion on a
second core). The image importer (:mod:`lcow.images.blobstream`) feeds its blobs through the
same pump, observing the bytes on the way to hash them.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

from lcow._util.decompress import decompress, detect
from lcow.errors import InvalidArgument, NotFound

__all__ = [
    "FileSlice",
    "Pump",
    "TarInput",
    "TarSource",
    "input_name",
    "open_tar_input",
    "sniff",
    "tar_work",
]

_CHUNK = 1 << 20

Read = Callable[[int], bytes]
Write = Callable[[bytes], object]
#: What a pump runs: reads the input with the first callable, writes the tar with the second.
Work = Callable[[Read, Write], None]
#: Told the compression found (``None``: a plain tar); returns a callable that sees every tar
#: byte written, in order (or ``None``).
KindObserver = Callable[[str | None], Callable[[bytes], object] | None]


def _read_fd(fd: int) -> Read:
    return lambda n: os.read(fd, n)


def tar_work(
    name: str,
    *,
    head: bytes | None = None,
    error: type[InvalidArgument] = InvalidArgument,
    on_kind: KindObserver | None = None,
) -> Work:
    """Work moving a possibly compressed tar from ``read`` to ``write`` (what a :class:`Pump`
    runs; also run directly): its first bytes tell gzip and zstd, decompressed as one complete
    stream (a cut one fails, naming ``name``), from a plain tar, copied.

    Args:
        name: the input, for messages.
        head: the input's first bytes, read already (sniffed); ``None``: read them on the pump.
        error: the category decompression raises (the image importer raises its own).
        on_kind: called on the pump with the compression found; what it returns is called with
            every chunk of the tar before it is written.
    """

    def run(read: Read, write: Write) -> None:
        first = sniff(read) if head is None else head
        kind = detect(first)
        observe = on_kind(kind) if on_kind is not None else None
        out = write if observe is None else _observed(write, observe)
        if kind is None:
            if first:
                out(first)
            while chunk := read(_CHUNK):
                out(chunk)
            return
        pending = [first]

        def chained(n: int) -> bytes:  # the sniffed head first, then the rest, without a copy
            if pending and pending[0]:
                return pending.pop()
            return read(n)

        for chunk in decompress(kind, chained, name=name, chunk=_CHUNK, error=error):
            out(chunk)

    return run


def _observed(write: Write, observe: Write) -> Write:
    def both(data: bytes) -> None:
        observe(data)
        write(data)

    return both


class Pump:
    """Runs ``work(read, write)`` on a thread, writing into a pipe whose read end,
    :attr:`read_fd`, the converter reads.

    A failure on the thread is kept in :attr:`error` (the reader sees only an early end of
    the stream); the reader stopping early (a broken pipe) is not one.

    Args:
        work: what to run (e.g. :func:`tar_work`).
        read: returns up to ``n`` more input bytes, ``b""`` at the end.
        name: the input, for messages.
        pipe_size: ask for a pipe this large (bytes), so the reader drains more per wakeup.
    """

    def __init__(self, work: Work, read: Read, name: str, *, pipe_size: int | None = None) -> None:
        self.read_fd, self._write_fd = os.pipe()
        self.error: BaseException | None = None
        self.name = name
        if pipe_size is not None:
            with contextlib.suppress(OSError):
                fcntl.fcntl(self._write_fd, fcntl.F_SETPIPE_SZ, pipe_size)
        self._work = work
        self._read = read
        self._closed = False
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

    def drain(self) -> None:
        """Read and drop what the reader left (e.g. padding after the end marker), so the
        pump's input is read to its end."""
        while os.read(self.read_fd, _CHUNK):
            pass

    def close(self) -> None:
        """Close the read end (a pump still writing stops) and wait for the thread; again: no-op."""
        if self._closed:
            return
        self._closed = True
        os.close(self.read_fd)
        self._thread.join()


def sniff(read: Read, n: int = 4) -> bytes:
    """The first ``n`` bytes of the input (fewer only at its end): enough to detect a
    compression by magic."""
    data = b""
    while len(data) < n:
        chunk = read(n - len(data))
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


#: Where a tar can be read from: a path, a descriptor, a binary file object (buffered or raw,
#: e.g. :meth:`~lcow.graphdriver.driver.Driver.diff`'s stream), or a :class:`FileSlice`.
TarInput = str | os.PathLike[str] | BinaryIO | io.RawIOBase | int | FileSlice


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
    pump: Pump | None = None
    name: str = "<stream>"

    def known_size(self) -> int | None:
        """How many bytes of tar are left to read, when that is known up front: an
        uncompressed regular file or slice (``None`` for pipes and decompressed streams)."""
        if self.pump is not None:
            return None
        if self.start is not None and self.end is not None:
            return self.end - self.start
        try:
            st = os.fstat(self.fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            return len(self.initial) + max(0, st.st_size - os.lseek(self.fd, 0, os.SEEK_CUR))
        except OSError:
            return None

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


def input_name(src: TarInput) -> str:
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
def open_tar_input(src: TarInput, *, name: str | None = None) -> Iterator[TarSource]:
    """Yield the :class:`TarSource` from which the uncompressed tar can be read.

    Args:
        src: a path, a descriptor, a binary file object, or a :class:`FileSlice`.
        name: what messages call the input (default: see :func:`input_name`).
    """
    name = name or input_name(src)
    own_fd = -1
    pump: Pump | None = None
    try:
        if isinstance(src, FileSlice):
            kind = detect(os.pread(src.fd, 4, src.offset) if src.length >= 4 else b"")
            if kind is not None:
                pump = Pump(tar_work(name), _slice_reader(src), name)
                yield from _yield_checked(pump)
                return
            yield TarSource(src.fd, b"", src.offset, src.offset + src.length, name=name)
            return
        if isinstance(src, int):
            fd = src
        elif isinstance(src, (str, os.PathLike)):
            own_fd = fd = _open_path(src, name)
        else:
            direct = _direct_fd(src)
            if direct is None:
                read = _blocking_read(src, name)
                head = sniff(read)
                pump = Pump(tar_work(name, head=head), read, name)
                yield from _yield_checked(pump)
                return
            fd = direct
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        if regular:
            head = os.pread(fd, 4, os.lseek(fd, 0, os.SEEK_CUR))
            initial = b""
        else:
            head = initial = sniff(_read_fd(fd))
        kind = detect(head)
        if kind is not None:
            work = tar_work(name, head=None if regular else initial)  # a file is read from here
            pump = Pump(work, _read_fd(fd), name)
            yield from _yield_checked(pump)
            return
        yield TarSource(fd, initial, name=name)
    finally:
        if pump is not None:
            pump.close()
        if own_fd >= 0:
            os.close(own_fd)


def _open_path(path: str | os.PathLike[str], name: str) -> int:
    """A read-only descriptor of ``path``; errors name the input as ``name``."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise NotFound(f"{name}: no such file", subject=name) from exc
    except OSError as exc:
        raise InvalidArgument(f"{name}: cannot open: {exc.strerror}", subject=name) from exc


def _blocking_read(stream: BinaryIO | io.RawIOBase, name: str) -> Read:
    """``stream.read``; a non-blocking raw stream's "nothing yet" (``None``) is an error naming
    the input, not the end of the tar it would otherwise look like."""

    def read(n: int) -> bytes:
        data = stream.read(n)
        if data is None:
            raise InvalidArgument(
                f"{name}: the stream is non-blocking and had no data ready; pass a blocking one",
                subject=name,
            )
        return data

    return read


def _direct_fd(fileobj: BinaryIO | io.RawIOBase) -> int | None:
    """The descriptor to read ``fileobj`` through, or ``None`` when it must be read through
    the object (it has no descriptor, or has buffered ahead of it)."""
    try:
        fd = fileobj.fileno()
        if fileobj.tell() != os.lseek(fd, 0, os.SEEK_CUR):
            return None
    except (io.UnsupportedOperation, AttributeError, OSError):
        return None
    return fd


def _yield_checked(pump: Pump) -> Iterator[TarSource]:
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
