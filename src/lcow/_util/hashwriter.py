"""Hash and write a stream of pieces on a helper thread, while the caller produces the next.

A converted pull receives and decompresses a blob, then hashes and writes what comes out;
hashing and writing release the GIL (hashlib, ``os.write``), so handing them to a thread lets
two cores share the work. The queue between them is bounded (a few pieces), so memory stays
bounded whatever the speeds.

An output that the caller makes durable with ``fsync`` at its end can be written behind
(``write_behind``): each time that many more bytes have been written, their writeback is started
(:mod:`lcow._util.writeback`), so the disk writes while the stream goes on and the ``fsync``
waits for the last part only, not for the whole file.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from types import TracebackType

from lcow._util.writeback import start_writeback

__all__ = ["HashingWriter"]

_DEPTH = 4  # pieces in flight between the producer and the writer


class HashingWriter:
    """Writes pieces to ``fd`` in order, hashing them with SHA-256, on its own thread; with
    ``write_behind`` (bytes), starts their writeback every that many bytes.

    Use as a context manager: :meth:`write` queues a piece (raising at once if the writer has
    failed), leaving the block waits for every queued piece to be written and re-raises the
    writer's error; after it, :attr:`digest` and :attr:`size` describe what was written. A
    failure of the producer ends the writer too (what was queued is dropped).
    """

    def __init__(self, fd: int, name: str, *, write_behind: int = 0) -> None:
        self._fd = fd
        self._write_behind = write_behind
        self._behind = 0  # bytes written when writeback was last started
        self._queue: queue.Queue[bytes | None] = queue.Queue(_DEPTH)
        self._hash = hashlib.sha256()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"lcow-write {name}", daemon=True)
        self.size = 0

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of the bytes written."""
        return f"sha256:{self._hash.hexdigest()}"

    def __enter__(self) -> HashingWriter:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if kind is not None and self._error is None:
            self._error = exc  # the writer stops writing; the sentinel below ends it
        self._queue.put(None)
        self._thread.join()
        if kind is None and self._error is not None:
            raise self._error

    def write(self, piece: bytes) -> None:
        """Queue ``piece`` (waits while the queue is full).

        Raises:
            OSError: (or whatever the writer met) the writer has failed already.
        """
        if self._error is not None:
            raise self._error
        self._queue.put(piece)

    def _start_writeback(self) -> None:
        """Hand the bytes written since the last call to writeback (a hint: if the kernel
        refuses it, the caller's ``fsync`` writes everything, as without ``write_behind``)."""
        if not start_writeback(self._fd):
            self._write_behind = 0
        self._behind = self.size

    def _run(self) -> None:
        while (piece := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain, so that the producer never blocks on a dead writer
            try:
                self._hash.update(piece)
                view = memoryview(piece)
                while view:
                    view = view[os.write(self._fd, view) :]
                self.size += len(piece)
                if self._write_behind and self.size - self._behind >= self._write_behind:
                    self._start_writeback()
            except BaseException as exc:  # handed to the producer's thread
                self._error = exc
