"""Locks: per-id inside a process, the whole data root across processes (SPEC §3, issue 4)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["IdLocks", "RootLock"]


class IdLocks:
    """One re-entrant lock per layer id, created on demand."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.RLock] = {}

    @contextlib.contextmanager
    def hold(self, layer_id: str) -> Iterator[None]:
        """Hold ``layer_id``'s lock for the duration of the block."""
        with self._guard:
            lock = self._locks.setdefault(layer_id, threading.RLock())
        with lock:
            yield


class RootLock:
    """An advisory ``flock`` on ``<root>/.lcow.lock`` serialising changes across processes.

    Re-entrant within a process (a counter around one exclusive lock), so driver operations may
    nest.
    """

    def __init__(self, root: Path) -> None:
        self._path = root / ".lcow.lock"
        self._mutex = threading.RLock()
        self._depth = 0
        self._fd = -1

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the data-root lock for the duration of the block."""
        with self._mutex:
            if self._depth == 0:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                    os.close(self._fd)
                    self._fd = -1
