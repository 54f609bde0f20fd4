"""Coalescing positional writer: many small block-aligned writes become few large ``pwrite``s.

Full buffers are written by a background thread (``pwrite`` releases the GIL) while the caller
fills the next of a ring of buffers, so parsing and writing overlap on two cores. Large file bodies
are queued to the same thread as copy jobs (read and write through one reused buffer), so
moving one file's data overlaps the parsing of the next headers.

Every byte written passes one thread at a time, in the order written, so a :class:`WriteObserver`
(e.g. the VHD identity's piece digests) sees the output's bytes while they are in memory and
the output need not be read back.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from queue import SimpleQueue
from typing import NamedTuple, Protocol

from lcow.errors import NoSpace

__all__ = ["OutputWriter", "Owners", "WriteObserver", "no_space"]

#: Who wrote a run of the output: ``(first offset, owner)`` in rising offsets; an owner is a
#: tar entry's name, ``None`` for the image's own metadata.
Owners = list[tuple[int, str | None]]
_FULL = (errno.ENOSPC, errno.EDQUOT)

# Both buffers are filled and then written while still in the core's cache: the copy into
# the page cache from a 4 MiB buffer (filled on the parsing thread, written on the writer
# thread) ran at a fifth of the speed here, most of the kernel time on D2 (issue 17).
_CAPACITY = 512 << 10
# A ring of buffers, not two: filling a buffer with a run of tiny files takes longer than
# writing it, and one of a big file's bytes less, so with two the parser waited for the writer
# a quarter of D2's time (0.19 of 0.73 s in a warm process), with four 0.12 s (wall 0.94x).
_BUFFERS = 4
_MAX_GAP = 64 << 10  # a forward gap this small is zero-filled instead of flushing
_ZEROS = bytes(_MAX_GAP)
_MAX_COPIES = 2  # queued copies before copy_range waits for the oldest
_WRITE_BEHIND = 64 << 20  # written bytes between two write-behind advices
_FALLBACK_WRITE_BEHIND_FROM = 1 << 30


class WriteObserver(Protocol):
    """Sees what an :class:`OutputWriter` writes, in the order it is written, one call at a
    time (never from two threads at once)."""

    def seen(self, offset: int, data: memoryview) -> None:
        """``data`` was written at ``offset``."""

    def unseen(self, offset: int, length: int) -> None:
        """``length`` bytes at ``offset`` were written by other means (e.g. ``splice``)."""


def background_writeback_threshold() -> int:
    """Dirty bytes at which the kernel starts writing back on its own (vm.dirty_background_*
    of MemAvailable, which is close to the kernel's own base); 1 GiB if unreadable."""
    try:
        with open("/proc/sys/vm/dirty_background_bytes") as f:
            fixed = int(f.read())
        if fixed:
            return fixed
        with open("/proc/sys/vm/dirty_background_ratio") as f:
            ratio = int(f.read())
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 * ratio // 100
    except (OSError, ValueError, IndexError):
        pass
    return _FALLBACK_WRITE_BEHIND_FROM


_COPY_CHUNK = 512 << 10  # read and written back to back, in cache (see _CAPACITY)
_copy_buffers = threading.local()
# A body this big is read (and observed) on a second thread, a few chunks ahead of the writes:
# the source's copy out of the page cache and the hashing then overlap the copy into the
# output's pages. D3's bare copy: 0.69x the one-thread copy's wall time at 0.96x its CPU, and
# 0.83x `cp`'s wall (whole-process timings, paired). Smaller bodies are not worth the hand-off.
_READ_AHEAD_FROM = 4 * _COPY_CHUNK
_READ_AHEAD_CHUNKS = 4  # buffers in flight between the two threads (2 MiB)


class _Span(NamedTuple):
    """A queued copy: ``n`` bytes of ``src_fd`` (a regular file) at ``src_offset`` go to
    ``offset`` of the output; ``short()`` is the error should the source end early, and the
    ``observer`` sees the bytes."""

    src_fd: int
    src_offset: int
    offset: int
    n: int
    short: Callable[[], Exception]
    observer: WriteObserver | None


def _read_span(
    span: _Span, next_buffer: Callable[[], memoryview | None]
) -> Iterator[tuple[memoryview, memoryview, int]]:
    """Read ``span`` chunk by chunk, each into a buffer from ``next_buffer()`` (``None``: stop),
    show it to the observer and yield ``(buffer, chunk, output offset)``."""
    src_offset, offset, n = span.src_offset, span.offset, span.n
    while n:
        buf = next_buffer()
        if buf is None:
            return
        done = os.preadv(span.src_fd, [buf[: min(n, _COPY_CHUNK)]], src_offset)
        if done == 0:
            raise span.short()
        chunk = buf[:done]
        if span.observer is not None:
            span.observer.seen(offset, chunk)
        yield buf, chunk, offset
        src_offset += done
        offset += done
        n -= done


def _write_chunks(
    chunks: Iterator[tuple[memoryview, memoryview, int]],
    fd: int,
    owners: Owners,
    written: Callable[[int, int], None] | None,
) -> None:
    """Write each chunk at its offset; ``written(offset, n)`` is told of every chunk written
    (write-behind windows)."""
    for _, chunk, at in chunks:
        _pwrite_all(fd, chunk, at, owners)
        if written is not None:
            written(at, len(chunk))


def _copy_span(
    span: _Span, fd: int, owners: Owners, written: Callable[[int, int], None] | None = None
) -> None:
    """Copy through a reused per-thread buffer: measured faster here than ``copy_file_range``
    (4.3 against 2.6 GB/s), which moves tar members, 512-byte aligned, a page piece at a time."""
    buf = getattr(_copy_buffers, "buf", None)
    if buf is None:
        buf = _copy_buffers.buf = memoryview(bytearray(_COPY_CHUNK))
    _write_chunks(_read_span(span, lambda: buf), fd, owners, written)


# What the reader thread hands the writer: a chunk, the error that ended the span, or the end.
_Filled = SimpleQueue[tuple[memoryview, memoryview, int] | BaseException | None]


class _ReadAhead:
    """A reader thread that fills chunk buffers of one span at a time for the writer thread.

    The reader also calls the observer, in offset order; the writer thread makes no observer
    call while a span is being copied, so the observer still sees one call at a time, in the
    order the bytes are written.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lcow-read")
        self._buffers = [memoryview(bytearray(_COPY_CHUNK)) for _ in range(_READ_AHEAD_CHUNKS)]

    def copy_span(
        self, span: _Span, fd: int, owners: Owners, written: Callable[[int, int], None] | None
    ) -> None:
        """Copy like :func:`_copy_span`, reading on the reader thread; return once the reader
        has finished with the span (also when a write failed)."""
        free: SimpleQueue[memoryview] = SimpleQueue()
        for buf in self._buffers:
            free.put(buf)
        filled: _Filled = SimpleQueue()
        stop = threading.Event()
        reading = self._pool.submit(_read_ahead, span, free, filled, stop)
        try:
            _write_chunks(_handed_over(filled, free), fd, owners, written)
        finally:
            if not reading.done():  # a write failed: let the reader see the stop and end
                stop.set()
                free.put(self._buffers[0])  # wakes a reader waiting for a buffer
            reading.result()  # never raises: the reader reports through ``filled``

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _read_ahead(
    span: _Span, free: SimpleQueue[memoryview], filled: _Filled, stop: threading.Event
) -> None:
    """The reader thread's half: read ``span`` into free buffers and pass each chunk on; end
    with ``None`` or the error."""

    def next_buffer() -> memoryview | None:
        buf = free.get()
        return None if stop.is_set() else buf

    try:
        for item in _read_span(span, next_buffer):
            filled.put(item)
    except BaseException as exc:  # handed to the writer thread, which raises it
        filled.put(exc)
        return
    filled.put(None)


def _handed_over(
    filled: _Filled, free: SimpleQueue[memoryview]
) -> Iterator[tuple[memoryview, memoryview, int]]:
    """The writer thread's half: the reader's chunks in order, each buffer given back once the
    chunk is written; the reader's error is raised here."""
    while (item := filled.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item
        free.put(item[0])


def _advise(fd: int, ranges: list[tuple[int, int]]) -> None:
    """Start writeback of each range and drop its clean pages (dirty ones stay)."""
    for offset, length in ranges:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def _pwrite_all(
    fd: int, data: bytes | bytearray | memoryview, offset: int, owners: Owners | None = None
) -> None:
    """Write all of ``data`` at ``offset``; a full file system is a :class:`NoSpace` naming
    the owner of the byte that did not fit."""
    view = memoryview(data)
    try:
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written
    except OSError as exc:
        if exc.errno not in _FULL or owners is None:
            raise
        raise no_space(_owner_at(owners, offset), exc.errno) from exc


def _owner_at(owners: Owners, offset: int) -> str | None:
    """The owner of the byte at ``offset`` (the last run starting at or before it)."""
    found = owners[0][1] if owners else None
    for start, owner in owners:
        if start > offset:
            break
        found = owner
    return found


def no_space(owner: str | None, code: int = errno.ENOSPC) -> NoSpace:
    """The error for a write of ``owner``'s bytes that the file system had no room for."""
    what = os.strerror(code).lower() if code != errno.ENOSPC else "no space left on device"
    if owner is None:
        return NoSpace(what, code=code)
    return NoSpace(f"{owner}: {what}", subject=owner, entry=owner, code=code)


class OutputWriter:
    """Writes at explicit offsets into ``fd``, buffering runs of adjacent writes.

    With ``write_behind`` the output's written pages are handed to writeback and dropped
    from the page cache as the file grows (for outputs not read back soon), from half the
    kernel's background writeback threshold on, or from the threshold itself when
    ``expected_size`` (the output's final size as far as the caller can tell) is below it. An
    ``observer`` sees every byte written (see :class:`WriteObserver`).

    A write that continues the pending run (or follows it after a small gap, filled with zeros)
    is copied into the current buffer; anything else hands the buffer to the writer thread
    first. Call :meth:`flush` (which waits for every write) before handing ``fd`` to other
    writers (``copy_file_range``, ``splice``), before truncating and before closing; call
    :meth:`close` to stop the thread.
    """

    def __init__(
        self,
        fd: int,
        *,
        write_behind: bool = False,
        observer: WriteObserver | None = None,
        expected_size: int | None = None,
    ) -> None:
        self.fd = fd
        self.observer = observer
        #: Whose bytes the next writes are (a tar entry's name; ``None``: the image's own);
        #: a full file system names the owner of the write that failed, even a deferred one.
        self.owner: str | None = None
        self._owners: Owners = []  # owners of the pending run
        self._unsettled = 0  # bytes written by the thread since the last write-behind
        self._written = 0  # bytes written by the writer thread
        # A small output stays in the page cache as any file would: writing behind it only
        # makes the writer share the machine with writeback (D3's 1.5 GB: 0.32 s without,
        # 0.61 s with, here). Past half the kernel's own background threshold, windows keep
        # dirty pages from piling up until the kernel throttles (D4's 4.4 GB: 4.0 s against
        # 2.7 s); starting at the threshold itself is too late (3.3 s). An output expected to
        # end below the threshold starts there: the kernel would not write it back meanwhile
        # (D3: 1.03x `cp` against 1.18x), and a wrong guess still writes behind past it.
        self._write_behind = write_behind
        threshold = background_writeback_threshold() if write_behind else 0
        small = expected_size is not None and expected_size < threshold
        self._write_behind_from = threshold if small else threshold // 2
        self._window = [1 << 62, 0]  # [lowest, highest) offset written since the last advice
        self._windows: deque[tuple[int, int]] = deque()  # (offset, length) advised, oldest first
        self._settler: ThreadPoolExecutor | None = None  # runs the write-behind advice
        self._settled: Future[None] | None = None  # the latest advice given
        self._bufs = [bytearray(_CAPACITY) for _ in range(_BUFFERS)]
        self._pending: list[Future[None] | None] = [None] * _BUFFERS
        self._cur = 0
        self._view = memoryview(self._bufs[0])
        self._len = 0  # bytes pending in the current buffer
        self._start = 0  # file offset of the pending run
        self._pool: ThreadPoolExecutor | None = None
        self._read_ahead: _ReadAhead | None = None  # reads big bodies for the writer thread
        self._copies: deque[Future[None]] = deque()  # queued copy_range jobs, oldest first
        self._failure: BaseException | None = None  # the first job that failed

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
                if self.observer is not None:
                    self.observer.seen(offset, memoryview(data))
                _pwrite_all(self.fd, data, offset, [(offset, self.owner)])
                self._wrote(offset, n)  # the writer thread is idle: counting here is safe
                self._start = offset + n
                return
        owners = self._owners
        if not owners or owners[-1][1] is not self.owner:
            owners.append((offset, self.owner))
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
            self._result(self._copies.popleft())
        span = _Span(src_fd, src_offset, offset, n, short, self.observer)
        copy = _copy_span if n < _READ_AHEAD_FROM else self._reader().copy_span
        self._copies.append(
            self._executor().submit(
                self._guarded,
                copy,
                span,
                self.fd,
                [(offset, self.owner)],
                self._wrote if self._write_behind else None,  # windows inside big bodies
            )
        )

    def wrote_elsewhere(self, offset: int, length: int) -> None:
        """Tell the observer that ``length`` bytes at ``offset`` were written around this
        writer (``splice`` into :attr:`fd`, after :meth:`submit`)."""
        if self.observer is not None:
            self._wait_all()  # the observer is called from one thread at a time
            self.observer.unseen(offset, length)

    def _guarded(self, job: Callable[..., None], *args: object) -> None:
        """Run a write job on the writer thread, keeping the first failure."""
        try:
            job(*args)
        except BaseException as exc:
            if self._failure is None:  # jobs run in order: this one failed first
                self._failure = exc
            raise

    def _settling(self, offset: int, n: int, job: Callable[..., None], *args: object) -> None:
        """Run a write job (``n`` bytes at ``offset``) on the writer thread, then count it
        for write-behind (:meth:`_wrote`)."""
        self._guarded(job, *args)
        self._wrote(offset, n)

    def _wrote(self, offset: int, n: int) -> None:
        """Count ``n`` bytes written at ``offset`` (on the writer thread).

        With ``write_behind``, past half the kernel's background writeback threshold (or the
        threshold, for an output expected to stay below it), each
        :data:`_WRITE_BEHIND` bytes written after form a window: the
        settler thread hands the new window to writeback and drops the pages of the one
        written two windows before (clean by then). A large output then neither piles up dirty
        pages until writeback throttles it nor crowds the page cache, and the writer never
        waits for the disk. Big bodies count chunk by chunk: a window the size of a whole
        500 MiB body was advised at its end, and closing the image waited 0.35 s for it (D3).
        """
        if not self._write_behind:
            return
        self._written += n
        if self._written <= self._write_behind_from:
            return
        self._window[0] = min(self._window[0], offset)
        self._window[1] = max(self._window[1], offset + n)
        self._unsettled += n
        if self._unsettled < _WRITE_BEHIND or not (self._settled is None or self._settled.done()):
            return
        self._unsettled = 0
        self._windows.append((self._window[0], self._window[1] - self._window[0]))
        self._window = [1 << 62, 0]
        ranges = [self._windows[-1]]
        if len(self._windows) > 2:
            ranges.append(self._windows.popleft())
        if self._settler is None:
            self._settler = ThreadPoolExecutor(1, thread_name_prefix="lcow-settle")
        self._settled = self._settler.submit(_advise, self.fd, ranges)

    def _reader(self) -> _ReadAhead:
        if self._read_ahead is None:
            self._read_ahead = _ReadAhead()
        return self._read_ahead

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
            self._settling,
            self._start,
            self._len,
            self._observed_write,
            self._view[: self._len],
            self._start,
            self._owners,
        )
        self._owners = []
        self._start += self._len
        self._len = 0
        nxt = (cur + 1) % _BUFFERS
        self._wait(nxt)
        self._cur = nxt
        self._view = memoryview(self._bufs[nxt])

    def _observed_write(self, data: memoryview, offset: int, owners: Owners) -> None:
        if self.observer is not None:
            self.observer.seen(offset, data)
        _pwrite_all(self.fd, data, offset, owners)

    def _wait(self, index: int) -> None:
        future = self._pending[index]
        if future is not None:
            self._pending[index] = None
            self._result(future)

    def _wait_all(self) -> None:
        for index in range(_BUFFERS):
            self._wait(index)
        while self._copies:
            self._result(self._copies.popleft())

    def _result(self, future: Future[None]) -> None:
        """Wait for a job; a failure re-raises the first one, which names the right owner (a
        later write may fail too, for the same full disk)."""
        try:
            future.result()
        except BaseException as exc:
            raise (self._failure or exc) from None

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
        if self._read_ahead is not None:  # idle once the writer has stopped
            self._read_ahead.close()
            self._read_ahead = None
        if self._settler is not None:  # after the writer: it may have queued one more
            self._settler.shutdown(wait=True)
            self._settler = None
            self._settled = None
        self._pending = [None] * _BUFFERS
        self._copies.clear()
        self._owners = []
        self._len = 0
