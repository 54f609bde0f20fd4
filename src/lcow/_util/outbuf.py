"""Coalescing positional writer: many small block-aligned writes become few large ``pwrite``s.

Full buffers are written by a background thread (``pwrite`` releases the GIL) while the caller
fills the other of two buffers, so parsing and writing overlap on two cores. Large file bodies
are queued to the same thread as copy jobs (read and write through one reused buffer), so
moving one file's data overlaps the parsing of the next headers.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

__all__ = ["OutputWriter"]

_CAPACITY = 4 << 20
_MAX_GAP = 64 << 10  # a forward gap this small is zero-filled instead of flushing
_ZEROS = bytes(_MAX_GAP)
_MAX_COPIES = 2  # queued copies before copy_range waits for the oldest
_WRITE_BEHIND = 64 << 20


_COPY_CHUNK = 1 << 20
_copy_buffers = threading.local()


def _copy_all(
    src_fd: int, src_offset: int, fd: int, offset: int, n: int, short: Callable[[], Exception]
) -> None:
    """Copy through a reused user buffer: measured faster here than ``copy_file_range``
    (4.3 against 2.6 GB/s), which moves tar members, 512-byte aligned, a page piece at a time."""
    buf = getattr(_copy_buffers, "buf", None)
    if buf is None:
        buf = _copy_buffers.buf = memoryview(bytearray(_COPY_CHUNK))
    while n:
        done = os.preadv(src_fd, [buf[: min(n, _COPY_CHUNK)]], src_offset)
        if done == 0:
            raise short()
        _pwrite_all(fd, buf[:done], offset)
        src_offset += done
        offset += done
        n -= done


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


class OutputWriter:
    """Writes at explicit offsets into ``fd``, buffering runs of adjacent writes.

    With ``write_behind`` the output's written pages are handed to writeback and dropped
    from the page cache as the file grows (for outputs not read back soon).

    A write that continues the pending run (or follows it after a small gap, filled with zeros)
    is copied into the current buffer; anything else hands the buffer to the writer thread
    first. Call :meth:`flush` (which waits for every write) before handing ``fd`` to other
    writers (``copy_file_range``, ``splice``), before truncating and before closing; call
    :meth:`close` to stop the thread.
    """

    def __init__(self, fd: int, *, write_behind: bool = False) -> None:
        self.fd = fd
        self._write_behind = write_behind
        self._unsettled = 0  # bytes written by the thread since the last write-behind
        self._bufs = [bytearray(_CAPACITY), bytearray(_CAPACITY)]
        self._pending: list[Future[None] | None] = [None, None]
        self._cur = 0
        self._view = memoryview(self._bufs[0])
        self._len = 0  # bytes pending in the current buffer
        self._start = 0  # file offset of the pending run
        self._pool: ThreadPoolExecutor | None = None
        self._copies: deque[Future[None]] = deque()  # queued copy_range jobs, oldest first

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``offset`` (possibly later, on flush)."""
        n = len(data)
        pos = self._len
        gap = offset - self._start - pos
        if gap:
            if pos and 0 < gap <= _MAX_GAP and pos + gap + n <= _CAPACITY:
                self._view[pos : pos + gap] = _ZEROS[:gap]
                pos += gap
            else:
                self.submit()
                self._start = offset
                pos = 0
        if pos + n > _CAPACITY:
            self._len = pos
            self.submit()
            self._start = offset
            pos = 0
            if n > _CAPACITY:
                self._wait_all()
                _pwrite_all(self.fd, data, offset)
                self._start = offset + n
                return
        self._view[pos : pos + n] = data
        self._len = pos + n

    def copy_range(
        self, src_fd: int, src_offset: int, offset: int, n: int, short: Callable[[], Exception]
    ) -> None:
        """Queue a copy of ``n`` bytes of ``src_fd`` (a regular file, read at
        ``src_offset``) to ``offset``.

        The copy runs on the writer thread; an error (ENOSPC, EIO, or ``short()`` should the
        source end early) surfaces at a later call, as any write error does.
        """
        self.submit()  # also ends the pending run: no later zero-filled gap covers this range
        if len(self._copies) >= _MAX_COPIES:
            self._copies.popleft().result()
        self._copies.append(
            self._executor().submit(
                self._settling, n, _copy_all, src_fd, src_offset, self.fd, offset, n, short
            )
        )

    def _settling(self, n: int, job: Callable[..., None], *args: object) -> None:
        """Run a write job on the writer thread; with ``write_behind``, every
        :data:`_WRITE_BEHIND` bytes ask the kernel to write the file back and drop its clean
        pages, so a large output neither piles up dirty pages until writeback throttles it
        nor crowds the page cache (measured: 4.4 GB written in 1.2-1.7 s against 1.1-2.9 s)."""
        job(*args)
        if self._write_behind:
            self._unsettled += n
            if self._unsettled >= _WRITE_BEHIND:
                self._unsettled = 0
                os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lcow-write")
        return self._pool

    def submit(self) -> None:
        """Hand the pending run to the writer thread without waiting for it; switch buffers.

        Enough before another writer fills *other* ranges of the file (``copy_file_range``):
        positional writes to disjoint ranges do not interfere.
        """
        if not self._len:
            return
        cur = self._cur
        self._pending[cur] = self._executor().submit(
            self._settling, self._len, _pwrite_all, self.fd, self._view[: self._len], self._start
        )
        self._start += self._len
        self._len = 0
        nxt = 1 - cur
        self._wait(nxt)
        self._cur = nxt
        self._view = memoryview(self._bufs[nxt])

    def _wait(self, index: int) -> None:
        future = self._pending[index]
        if future is not None:
            self._pending[index] = None
            future.result()  # re-raises a failed write (ENOSPC, EIO) here

    def _wait_all(self) -> None:
        self._wait(0)
        self._wait(1)
        while self._copies:
            self._copies.popleft().result()

    def flush(self) -> None:
        """Write out everything pending and wait until it is written."""
        self.submit()
        self._wait_all()

    def close(self) -> None:
        """Flush and stop the writer thread."""
        try:
            self.flush()
        finally:
            self.discard()

    def discard(self) -> None:
        """Stop the writer thread without reporting write errors (the output is abandoned)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._pending = [None, None]
        self._copies.clear()
        self._len = 0
