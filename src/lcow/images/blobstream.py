"""Feed one layer blob to the converter while verifying it (both digests, in the same pass).

Getting the tar out of the blob is :mod:`lcow.convert.input`'s: its
:class:`~lcow.convert.input.Pump` reads the blob as stored on a thread, decompresses gzip or
zstd (detected by magic, like ``docker load``) and writes the tar into a pipe whose read end the
converter consumes. What this module adds is the verification: the blob as stored is hashed as
the pump reads it (the descriptor's digest) and the tar as the pump writes it (the config's diff
ID), each hash on its own thread — one hash when the blob is not compressed, as both are the
same bytes. zlib, zstandard, hashlib and pipe writes release the GIL, so verification overlaps
conversion. A plain blob stored in a file (the usual ``docker save`` case) needs no pump: the
converter reads it in place (a :class:`~lcow.convert.input.FileSlice`, with kernel copies) while
a thread hashes the same range from a read-only mapping. The caller compares the digests once
the converter is done, and discards the layer when they differ.
"""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from lcow._util.bghash import BackgroundHash
from lcow._util.decompress import detect
from lcow.convert.input import FileSlice, Pump, tar_work
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


class _HashingReader(io.RawIOBase):
    """Reads ``blob``, hashing every byte and reporting counts to ``progress``."""

    def __init__(self, blob: BinaryIO, progress: Callable[[int], None] | None) -> None:
        super().__init__()
        self.blob = blob
        self.hash = BackgroundHash()
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
    place (a plain tar inside a file) or the read end of a pump's pipe (anything else).

    Call :meth:`finish` after the converter succeeded (it reads what the converter left, waits
    for the threads and returns the digests), or :meth:`abort` after it failed.

    Args:
        blob: the blob as stored (the caller closes it afterwards).
        name: the blob's name, for messages.
        progress: called on a thread with the number of stored bytes read, chunk by chunk.
        where: the blob's bytes in a file, when known: a plain blob is then read in place.
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
        self._range_hash: _RangeHash | None = None
        self._raw = _HashingReader(blob, progress)
        self._tar_hash: BackgroundHash | None = None  # None: the tar is the blob itself
        self._compression = "none"
        self._pump: Pump | None = None
        if where is not None and detect(os.pread(where.fd, 4, where.offset)) is None:
            # A plain tar inside a file (the usual docker-save layer): the converter reads it
            # in place with kernel copies while another thread hashes the same range.
            self.source: int | FileSlice = FileSlice(where.fd, where.offset, where.size, name)
            self._range_hash = _RangeHash(where)
            if progress is not None:
                progress(where.size)
            return
        work = tar_work(name, error=ImageError, on_kind=self._found)
        self._pump = Pump(work, self._read, name, pipe_size=_PIPE_SIZE)
        self.source = self._pump.read_fd

    def _read(self, n: int) -> bytes:
        """The blob as stored, hashed on the way (on the pump's thread)."""
        try:
            return self._raw.read(n)
        except tarfile.TarError as exc:  # the image archive around the blob is damaged
            raise ImageError(f"{self.name}: {exc}", subject=self.name) from exc

    def _found(self, kind: str | None) -> Callable[[bytes], None] | None:
        """The pump found the blob's compression: a compressed blob's tar gets its own hash."""
        if kind is None:
            return None
        self._compression = kind
        self._tar_hash = BackgroundHash()
        return self._tar_hash.update

    # -- the caller --------------------------------------------------------------------------

    def _pump_error(self) -> BaseException | None:
        return None if self._pump is None else self._pump.error

    def finish(self) -> FeedResult:
        """Read what the converter left (e.g. padding), wait for the threads, return the digests.

        Raises:
            ImageError: the blob could not be read or decompressed.
        """
        if self._pump is not None:
            try:
                self._pump.drain()
            finally:
                self._pump.close()
            if self._pump.error is None:
                while self._read(_CHUNK):  # hash whatever follows a compressed stream
                    pass
        if self._range_hash is not None and self._where is not None:
            self._raw.hash.close()
            raw, size = self._range_hash.digest(), self._where.size
        else:
            raw, size = self._raw.hash.digest(), self._raw.size
        tar = raw if self._tar_hash is None else self._tar_hash.digest()
        error = self._pump_error()
        if error is not None:
            raise error
        return FeedResult(digest=raw, size=size, diff_id=tar, compression=self._compression)

    def abort(self) -> BaseException | None:
        """Stop the threads after the converter failed; returns the pump's own error, if any
        (a corrupt compressed stream is the cause worth reporting, not the truncated tar)."""
        if self._pump is not None:
            self._pump.close()
        self._raw.hash.close()
        if self._range_hash is not None:
            self._range_hash.close()
        if self._tar_hash is not None:
            self._tar_hash.close()
        return self._pump_error()
