"""Locks of a data root: one per layer and one for the whole root, across threads and processes.

* :class:`LayerLocks` — an exclusive lock per layer id (SPEC §3; data-safety issue item 2). Every
  mutation of a layer folder (Create, CreateReadWrite, ApplyDiff, Get's sandbox, Remove, an
  import's per-layer work) holds it, so two writers of one id — threads or processes — run one
  after the other and the second wins completely; Cleanup sweeps only folders whose lock it
  gets without waiting. One lock file serves every id: each id owns one byte of
  ``<root>/.layers.lock`` (at an offset from its SHA-256) and takes an *open file description*
  lock on it (``F_OFD_SETLKW``): no file per id to create or sweep, no lock lost when another
  descriptor of the file closes (as with classic POSIX locks), and released by the kernel when
  the process dies. Threads of one process share the descriptor, so a re-entrant lock per id
  orders them and the byte is locked by the first holder and unlocked by the last.
* :class:`RootLock` — an advisory ``flock`` on ``<root>/.lcow.lock`` serialising changes to the
  root's namespace (new folders, renames to ``-removing``, sweeps) across processes.

Order: a layer lock may be taken before the root lock, never after it except without waiting
(:meth:`LayerLocks.try_hold`), so the two cannot deadlock. Several layer locks are taken in
sorted order (:meth:`LayerLocks.hold_all`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LAYER_LOCK_FILE", "LOCK_FILES", "ROOT_LOCK_FILE", "LayerLocks", "RootLock"]

LAYER_LOCK_FILE = ".layers.lock"
ROOT_LOCK_FILE = ".lcow.lock"
#: The lock files a data root may hold whatever else happens.
LOCK_FILES = frozenset({LAYER_LOCK_FILE, ROOT_LOCK_FILE})
# Linux's OFD lock commands (Python has them since 3.9 on Linux).
_OFD_SETLK: int = getattr(fcntl, "F_OFD_SETLK", 37)
_OFD_SETLKW: int = getattr(fcntl, "F_OFD_SETLKW", 38)


def _flock_struct(kind: int, start: int) -> bytes:
    """``struct flock`` for one byte at ``start`` (l_pid must be 0 for OFD locks)."""
    return struct.pack("@hhqqi4x", kind, os.SEEK_SET, start, 1, 0)


def _offset(key: str) -> int:
    """The byte of the lock file that stands for ``key`` (56 bits of its SHA-256)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()[:7])


@dataclass
class _Entry:
    lock: threading.RLock = field(default_factory=threading.RLock)
    users: int = 0  # threads holding or waiting for this key
    depth: int = 0  # nested holds by the owning thread


class LayerLocks:
    """Exclusive per-key locks shared by the threads and processes using one data root.

    Keys are layer ids, or names no id can take (``cache`` guards the sandbox template).

    Args:
        root: the data root (its lock file is created on first use).
    """

    def __init__(self, root: Path) -> None:
        self._path = root / LAYER_LOCK_FILE
        self._guard = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._fd = -1

    def _enter(self, key: str) -> _Entry:
        with self._guard:
            if self._fd < 0:  # open only while some thread holds or awaits a lock
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            entry = self._entries.setdefault(key, _Entry())
            entry.users += 1
            return entry

    def _leave(self, key: str, entry: _Entry) -> None:
        with self._guard:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]
            if not self._entries:  # no lock held or awaited: let the data root go (umount)
                os.close(self._fd)
                self._fd = -1

    def _lock_byte(self, key: str, *, wait: bool) -> bool:
        command = _OFD_SETLKW if wait else _OFD_SETLK
        try:
            fcntl.fcntl(self._fd, command, _flock_struct(fcntl.F_WRLCK, _offset(key)))
        except OSError as exc:
            if not wait and exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def _unlock_byte(self, key: str) -> None:
        fcntl.fcntl(self._fd, _OFD_SETLK, _flock_struct(fcntl.F_UNLCK, _offset(key)))

    @contextlib.contextmanager
    def _holding(self, key: str, *, wait: bool) -> Iterator[bool]:
        entry = self._enter(key)
        try:
            if not entry.lock.acquire(blocking=wait):
                yield False
                return
            try:
                if entry.depth == 0 and not self._lock_byte(key, wait=wait):
                    yield False
                    return
                entry.depth += 1
                try:
                    yield True
                finally:
                    entry.depth -= 1
                    if entry.depth == 0:
                        self._unlock_byte(key)
            finally:
                entry.lock.release()
        finally:
            self._leave(key, entry)

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Hold ``key``'s lock for the block, waiting for other holders (re-entrant)."""
        with self._holding(key, wait=True):
            yield

    @contextlib.contextmanager
    def try_hold(self, key: str) -> Iterator[bool]:
        """Hold ``key``'s lock for the block if nobody else holds it; yields whether it does."""
        with self._holding(key, wait=False) as held:
            yield held

    @contextlib.contextmanager
    def hold_all(self, keys: Iterable[str]) -> Iterator[None]:
        """Hold the locks of all ``keys``, taken in sorted order so that two holders of
        overlapping sets cannot deadlock."""
        with contextlib.ExitStack() as stack:
            for key in sorted(set(keys)):
                stack.enter_context(self.hold(key))
            yield


class RootLock:
    """An advisory ``flock`` on ``<root>/.lcow.lock`` serialising changes across processes.

    Re-entrant within a process (a counter around one exclusive lock), so driver operations may
    nest.
    """

    def __init__(self, root: Path) -> None:
        self._path = root / ROOT_LOCK_FILE
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
