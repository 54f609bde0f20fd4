"""A readable tar stream produced on a thread (what :meth:`Driver.diff` returns).

The producer writes into a pipe; the consumer reads at its own pace, so nothing is held in
memory. A producer error is raised by the ``read`` that reaches the end of the data; ``close``
stops the producer early and never fails (SPEC §3 Diff: "Close ... never errors").
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Callable

__all__ = ["DiffStream"]

log = logging.getLogger(__name__)


class DiffStream(io.RawIOBase):
    """``read`` side of a pipe filled by ``produce(fd)`` on a background thread."""

    def __init__(self, produce: Callable[[int], None]) -> None:
        super().__init__()
        self._read_fd, write_fd = os.pipe()
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(produce, write_fd), name="lcow-diff", daemon=True
        )
        self._thread.start()

    def _run(self, produce: Callable[[int], None], write_fd: int) -> None:
        try:
            produce(write_fd)
        except BrokenPipeError:
            pass  # the reader closed early
        except BaseException as exc:  # handed to the reader
            self._error = exc
        finally:
            os.close(write_fd)

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._read_fd

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        n = os.readv(self._read_fd, [buffer])
        if n == 0:
            self._thread.join()
            if self._error is not None:
                error, self._error = self._error, None
                raise error
        return n

    def close(self) -> None:
        if self.closed:
            return
        try:
            os.close(self._read_fd)
            self._thread.join()
            if self._error is not None:
                log.debug("diff stream closed before the end: %s", self._error)
        finally:
            super().close()
