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
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple, cast

from lcow.errors import InvalidArgument, NotFound

__all__ = ["FileSlice", "TarSource", "open_tar_input"]

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20


def _read_fd(fd: int) -> Callable[[int], bytes]:
    return lambda n: os.read(fd, n)


def _gunzip(read: Callable[[int], bytes], write: Callable[[bytes], None]) -> None:
    """Decompress gzip members, at most ``_CHUNK`` bytes of output at a time (a highly
    compressible bomb must not expand into memory at once)."""
    dec = zlib.decompressobj(zlib.MAX_WBITS | 16)
    fed = False  # the current member has received input
    while chunk := read(_CHUNK):
        while True:
            fed = fed or bool(chunk)
            out = dec.decompress(chunk, _CHUNK)
            if out:
                write(out)
            if dec.eof:  # concatenated gzip members
                chunk = dec.unused_data
                dec = zlib.decompressobj(zlib.MAX_WBITS | 16)
                fed = False
                if not chunk:
                    break
                continue
            chunk = dec.unconsumed_tail
            if not chunk and len(out) < _CHUNK:
                break  # input used up and no output left pending
    if fed and not dec.eof:
        raise InvalidArgument("input: truncated gzip stream")


def _unzstd(read: Callable[[int], bytes], write: Callable[[bytes], None]) -> None:
    import zstandard

    class _Src(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
            data = read(len(b))
            b[: len(data)] = data
            return len(data)

    source = cast(BinaryIO, _Src())
    reader = zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True)
    while True:
        chunk = reader.read(_CHUNK)
        if not chunk:
            break
        write(chunk)


class _Pump:
    """Runs ``work(read, write)`` on a thread, writing into a pipe the converter reads."""

    def __init__(
        self,
        work: Callable[[Callable[[int], bytes], Callable[[bytes], None]], None],
        read: Callable[[int], bytes],
    ) -> None:
        self.read_fd, self._write_fd = os.pipe()
        self.error: BaseException | None = None
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
    archive): read in place, with kernel copies, never past its end."""

    fd: int
    offset: int
    length: int


class TarSource(NamedTuple):
    """Where the converter reads the uncompressed tar.

    Attributes:
        fd: the descriptor.
        initial: bytes already consumed from ``fd`` that come first.
        start: for a file slice, its first byte (reads are positional); else ``None``.
        end: for a file slice, one past its last byte; else ``None``.
        pump: the thread decompressing or copying into ``fd``, if any.
    """

    fd: int
    initial: bytes = b""
    start: int | None = None
    end: int | None = None
    pump: _Pump | None = None

    def check(self) -> None:
        """Raise what went wrong on the pump's side (a read or decompression error), which
        the converter saw only as an early end of the stream. Called before the output is
        committed, so a failed source never leaves an image behind."""
        if self.pump is not None and self.pump.error is not None:
            raise _decompress_error(self.pump.error) from self.pump.error


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


@contextlib.contextmanager
def open_tar_input(
    src: str | os.PathLike[str] | BinaryIO | int | FileSlice,
) -> Iterator[TarSource]:
    """Yield the :class:`TarSource` from which the uncompressed tar can be read."""
    own_fd = -1
    pump: _Pump | None = None
    try:
        if isinstance(src, FileSlice):
            head = os.pread(src.fd, 4, src.offset) if src.length >= 4 else b""
            if head.startswith(_GZIP_MAGIC) or head.startswith(_ZSTD_MAGIC):
                work = _gunzip if head.startswith(_GZIP_MAGIC) else _unzstd
                pump = _Pump(work, _slice_reader(src))
                yield from _yield_checked(pump, b"")
                return
            yield TarSource(src.fd, b"", src.offset, src.offset + src.length)
            return
        if isinstance(src, int):
            fd = src
        elif isinstance(src, (str, os.PathLike)):
            try:
                own_fd = fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError as exc:
                raise NotFound(f"{os.fspath(src)}: no such file", subject=os.fspath(src)) from exc
            except OSError as exc:
                raise InvalidArgument(f"{os.fspath(src)}: cannot open: {exc.strerror}") from exc
        else:
            try:
                fd = src.fileno()
                if src.tell() != os.lseek(fd, 0, os.SEEK_CUR):
                    raise io.UnsupportedOperation  # buffered ahead: read through the object
            except (io.UnsupportedOperation, AttributeError, OSError):
                fileobj = src
                head = _sniff(fileobj.read)
                pump = _Pump(_chain_work(head, fileobj.read), fileobj.read)
                yield from _yield_checked(pump, b"")
                return
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        if regular:
            head = os.pread(fd, 4, os.lseek(fd, 0, os.SEEK_CUR))
            initial = b""
        else:
            head = initial = _sniff(_read_fd(fd))
        if head.startswith(_GZIP_MAGIC) or head.startswith(_ZSTD_MAGIC):
            work = _gunzip if head.startswith(_GZIP_MAGIC) else _unzstd
            pump = _Pump(_prefixed(work, initial), _read_fd(fd))
            yield from _yield_checked(pump, b"")
            return
        yield TarSource(fd, initial)
    finally:
        if pump is not None:
            pump.close()
        if own_fd >= 0:
            os.close(own_fd)


def _yield_checked(pump: _Pump, initial: bytes) -> Iterator[TarSource]:
    try:
        yield TarSource(pump.read_fd, initial, pump=pump)
    except InvalidArgument:
        if pump.error is not None:
            raise _decompress_error(pump.error) from pump.error
        raise
    if pump.error is not None:
        raise _decompress_error(pump.error) from pump.error


def _decompress_error(exc: BaseException) -> InvalidArgument:
    if isinstance(exc, InvalidArgument):
        return exc
    if isinstance(exc, OSError):  # the source itself failed, compressed or not
        return InvalidArgument(f"input: reading failed: {exc}")
    return InvalidArgument(f"input: corrupt compressed stream: {exc}")


def _prefixed(
    work: Callable[[Callable[[int], bytes], Callable[[bytes], None]], None], prefix: bytes
) -> Callable[[Callable[[int], bytes], Callable[[bytes], None]], None]:
    """Run ``work`` over ``prefix`` followed by the rest of the input."""

    def run(read: Callable[[int], bytes], write: Callable[[bytes], None]) -> None:
        pending = [prefix]

        def chained(n: int) -> bytes:
            if pending and pending[0]:
                return pending.pop()
            return read(n)

        work(chained, write)

    return run


def _chain_work(
    head: bytes, read: Callable[[int], bytes]
) -> Callable[[Callable[[int], bytes], Callable[[bytes], None]], None]:
    """For file objects: plain data is copied, compressed data decompressed."""
    if head.startswith(_GZIP_MAGIC):
        return _prefixed(_gunzip, head)
    if head.startswith(_ZSTD_MAGIC):
        return _prefixed(_unzstd, head)

    def copy(rd: Callable[[int], bytes], write: Callable[[bytes], None]) -> None:
        write(head)
        while True:
            chunk = rd(_CHUNK)
            if not chunk:
                return
            write(chunk)

    return copy
