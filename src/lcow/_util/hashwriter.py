"""Hash and write a stream of pieces on a helper thread, while the caller produces the next.

A converted pull receives, hashes and decompresses a blob, then hashes and writes what comes
out; all of these release the GIL (socket reads, zstandard, hashlib, ``os.write``), so handing
the second half to a thread lets two cores share the work. The queue between them is bounded
(a few pieces), so memory stays bounded whatever the speeds.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from types import TracebackType

__all__ = ["HashingWriter"]

_DEPTH = 4  # pieces in flight between the producer and the writer


class HashingWriter:
    """Writes pieces to ``fd`` in order, hashing them with SHA-256, on its own thread.

    Use as a context manager: :meth:`write` queues a piece (raising at once if the writer has
    failed), leaving the block waits for every queued piece to be written and re-raises the
    writer's error; after it, :attr:`digest` and :attr:`size` describe what was written. A
    failure of the producer ends the writer too (what was queued is dropped).
    """

    def __init__(self, fd: int, name: str) -> None:
        self._fd = fd
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
            except BaseException as exc:  # handed to the producer's thread
                self._error = exc
