"""SHA-256 of a stream computed on a helper thread, so that the thread reading the stream only
hands its pieces over.

A download is read in the pieces the connection delivers (up to 64 KiB), and the thread that
reads them also decompresses them (zstandard's streaming decompression holds the GIL): hashing
there puts the hash on that critical path. Pieces are handed over in batches of about 1 MiB
(references, not copies), so the queue between the threads costs a few operations per MiB
whatever the piece size; the queue is bounded, so memory stays bounded whatever the speeds.
"""

from __future__ import annotations

import hashlib
import queue
import threading

__all__ = ["BackgroundHash"]

_BATCH = 1 << 20  # bytes handed to the thread at once
_DEPTH = 16  # batches in flight


class BackgroundHash:
    """SHA-256 of the pieces given to :meth:`update`, in order, computed on its own thread.

    :meth:`digest` waits for everything given and returns the digest; :meth:`close` stops the
    thread without waiting for a digest (after a failure). Pieces must not change after they
    are given (``bytes``).
    """

    def __init__(self, name: str = "lcow-sha256") -> None:
        self._hash = hashlib.sha256()
        self._queue: queue.Queue[list[bytes] | None] = queue.Queue(_DEPTH)
        self._batch: list[bytes] = []
        self._pending = 0  # bytes in _batch
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            for piece in batch:
                self._hash.update(piece)

    def update(self, piece: bytes) -> None:
        """Hash ``piece`` after everything given before."""
        self._batch.append(piece)
        self._pending += len(piece)
        if self._pending >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._batch:
            self._queue.put(self._batch)
            self._batch = []
            self._pending = 0

    def close(self) -> None:
        """Hash what was given and stop the thread (idempotent)."""
        if not self._closed:
            self._closed = True
            self._flush()
            self._queue.put(None)
            self._thread.join()

    def digest(self) -> str:
        """``sha256:<hex>`` of everything given (no more can be given after it)."""
        self.close()
        return f"sha256:{self._hash.hexdigest()}"
