"""Feed one layer blob to the converter while verifying it (both digests, in the same pass).

A background thread reads the blob as stored, decompresses gzip or zstd (detected by magic, like
``docker load``) and writes the tar into a pipe whose read end the converter consumes; two more
threads hash the blob as stored (the descriptor's digest) and the tar (the config's diff ID) —
one hash when the blob is not compressed, as both are the same bytes. zlib, zstandard, hashlib
and pipe writes release the GIL, so verification overlaps conversion. A plain blob stored in a
file (the usual ``docker save`` case) is moved into the pipe with ``splice(2)``, without copying
it through Python, while the hash thread reads it with ``pread``. The caller compares the digests
once the converter is done, and discards the layer when they differ.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import mmap
import os
import queue
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from lcow._util.decompress import GZIP_MAGIC, ZSTD_MAGIC, decompress, detect
from lcow.convert.input import FileSlice
from lcow.images.errors import ImageError

__all__ = ["FeedResult", "FileRange", "LayerFeed"]

_CHUNK = 1 << 20
_PIPE_SIZE = 1 << 20


@dataclass(frozen=True)
class FeedResult:
    """What was read from a blob.

    Attributes:
        digest: ``sha256:<hex>`` of the blob as stored.
        size: bytes of the blob as stored.
        diff_id: ``sha256:<hex>`` of the uncompressed tar.
        compression: ``gzip``, ``zstd`` or ``none``.
    """

    digest: str
    size: int
    diff_id: str
    compression: str


class _BackgroundHash:
    """sha256 computed on its own thread, fed with immutable chunks in order."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._run, name="lcow-sha256", daemon=True)
        self._thread.start()
        self._closed = False

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._hash.update(chunk)

    def update(self, chunk: bytes) -> None:
        """Hash ``chunk`` after everything given before."""
        self._queue.put(chunk)

    def close(self) -> None:
        """Stop the thread (idempotent)."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()

    def digest(self) -> str:
        """``sha256:<hex>`` of everything given."""
        self.close()
        return f"sha256:{self._hash.hexdigest()}"


class _HashingReader(io.RawIOBase):
    """Reads ``blob``, hashing every byte and reporting counts to ``progress``."""

    def __init__(self, blob: BinaryIO, progress: Callable[[int], None] | None) -> None:
        super().__init__()
        self.blob = blob
        self.hash = _BackgroundHash()
        self.size = 0
        self._progress = progress

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.blob.read(size)
        if data:
            self.hash.update(data)
            self.size += len(data)
            if self._progress is not None:
                self._progress(len(data))
        return data

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read_head(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.read(n - len(out))
            if not chunk:
                break
            out += chunk
        return out


@dataclass(frozen=True)
class FileRange:
    """Where a blob's bytes lie in a file: ``size`` bytes at ``offset`` of descriptor ``fd``."""

    fd: int
    offset: int
    size: int


class _RangeHash:
    """sha256 of a file range, read with ``pread`` on its own thread."""

    def __init__(self, where: FileRange) -> None:
        self._where = where
        self._hash = hashlib.sha256()
        self._stop = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lcow-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Hashing straight from a read-only mapping of the page cache: no copy into Python.
        where = self._where
        try:
            if os.fstat(where.fd).st_size < where.offset + where.size:
                raise ImageError("blob: unexpected end of file", subject="blob")
            if not where.size:
                return
            with mmap.mmap(where.fd, 0, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)
                try:
                    done = 0
                    while done < where.size and not self._stop:
                        want = min(_CHUNK * 8, where.size - done)
                        self._hash.update(view[where.offset + done : where.offset + done + want])
                        done += want
                finally:
                    view.release()
        except BaseException as exc:  # reported by digest()
            self.error = exc

    def close(self) -> None:
        """Stop early and wait."""
        self._stop = True
        self._thread.join()

    def digest(self) -> str:
        """``sha256:<hex>`` of the range."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        return f"sha256:{self._hash.hexdigest()}"


class LayerFeed:
    """Feeds one blob to the converter; :attr:`source` is the converter's input: the blob in
    place (a plain tar inside a file) or the read end of a pipe a thread fills (decompressed).

    Call :meth:`finish` after the converter succeeded (it reads what the converter left, waits
    for the thread and returns the digests), or :meth:`abort` after it failed.

    Args:
        blob: the blob as stored (the caller closes it afterwards).
        name: the blob's name, for messages.
        progress: called on the thread with the number of stored bytes read, chunk by chunk.
        where: the blob's bytes in a file, when known: a plain blob is then spliced.
    """

    def __init__(
        self,
        blob: BinaryIO,
        *,
        name: str,
        progress: Callable[[int], None] | None = None,
        where: FileRange | None = None,
    ) -> None:
        self.name = name
        self._where = where
        self._progress = progress
        self._range_hash: _RangeHash | None = None
        self._raw = _HashingReader(blob, progress)
        self._tar_hash: _BackgroundHash | None = None  # None: the tar is the blob itself
        self._compression = "none"
        self.error: BaseException | None = None
        self.read_fd = -1
        self._thread: threading.Thread | None = None
        if where is not None and not os.pread(where.fd, 4, where.offset).startswith(
            (GZIP_MAGIC, ZSTD_MAGIC)
        ):
            # A plain tar inside a file (the usual docker-save layer): the converter reads it
            # in place with kernel copies while another thread hashes the same range.
            self.source: int | FileSlice = FileSlice(where.fd, where.offset, where.size, name)
            self._range_hash = _RangeHash(where)
            if progress is not None:
                progress(where.size)
            return
        self.read_fd, self._write_fd = os.pipe()
        self.source = self.read_fd
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(self._write_fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        self._thread = threading.Thread(target=self._run, name="lcow-layer-feed", daemon=True)
        self._thread.start()

    # -- the thread --------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if not data:
            return
        if self._tar_hash is not None:
            self._tar_hash.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._write_fd, view) :]

    def _splice(self, where: FileRange) -> None:
        """Move a plain blob into the pipe in the kernel while another thread hashes it."""
        self._range_hash = _RangeHash(where)
        done = 0
        while done < where.size:
            n = os.splice(
                where.fd,
                self._write_fd,
                min(_PIPE_SIZE, where.size - done),
                offset_src=where.offset + done,
            )
            if n == 0:
                raise ImageError(f"{self.name}: unexpected end of the image archive")
            done += n
            if self._progress is not None:
                self._progress(n)

    def _run(self) -> None:
        try:
            where = self._where
            if (
                where is not None
                and hasattr(os, "splice")
                and not os.pread(where.fd, 4, where.offset).startswith((GZIP_MAGIC, ZSTD_MAGIC))
            ):
                self._splice(where)
                return
            head = self._raw.read_head(4)
            kind = detect(head)
            if kind is not None:
                self._compression = kind
                self._tar_hash = _BackgroundHash()
                self._decompress(kind, head)
            else:
                self._write(head)
                while chunk := self._raw.read(_CHUNK):
                    self._write(chunk)
            while self._raw.read(_CHUNK):  # hash whatever follows a compressed stream
                pass
        except BrokenPipeError:
            pass  # the converter stopped reading; its error is the one reported
        except tarfile.TarError as exc:
            self.error = ImageError(f"{self.name}: {exc}", subject=self.name)
        except BaseException as exc:  # handed to finish/abort
            self.error = exc
        finally:
            os.close(self._write_fd)

    def _decompress(self, kind: str, head: bytes) -> None:
        """Decompress the whole blob, which must be one complete stream (a cut one fails)."""
        pending = [head]

        def read(n: int) -> bytes:  # the sniffed head first, then the blob, without a copy
            return pending.pop() if pending else self._raw.read(n)

        for chunk in decompress(kind, read, name=self.name, chunk=_CHUNK, error=ImageError):
            self._write(chunk)

    # -- the caller --------------------------------------------------------------------------

    def finish(self) -> FeedResult:
        """Read what the converter left (e.g. padding), wait for the threads, return the digests.

        Raises:
            ImageError: the blob could not be read or decompressed.
        """
        if self._thread is not None:
            try:
                while os.read(self.read_fd, _CHUNK):
                    pass
            finally:
                os.close(self.read_fd)
                self._thread.join()
        if self._range_hash is not None and self._where is not None:
            self._raw.hash.close()
            raw, size = self._range_hash.digest(), self._where.size
        else:
            raw, size = self._raw.hash.digest(), self._raw.size
        tar = raw if self._tar_hash is None else self._tar_hash.digest()
        if self.error is not None:
            raise self.error
        return FeedResult(digest=raw, size=size, diff_id=tar, compression=self._compression)

    def abort(self) -> BaseException | None:
        """Stop the threads after the converter failed; returns the pump's own error, if any
        (a corrupt compressed stream is the cause worth reporting, not the truncated tar)."""
        if self._thread is not None:
            with contextlib.suppress(OSError):
                os.close(self.read_fd)
            self._thread.join()
        self._raw.hash.close()
        if self._range_hash is not None:
            self._range_hash.close()
        if self._tar_hash is not None:
            self._tar_hash.close()
        return self.error
