"""Deleting removed layers' folders after Remove has answered (issue 17).

Remove's commit point is the rename of the layer's folder to a ``-removing`` name: from then on
the layer is absent for every reader, and whatever a crash leaves under such a name is swept by
Cleanup (:meth:`lcow.storage.dataroot.DataRoot.sweep_removing`). Deleting the folder itself
(unlinking a sandbox of some megabytes costs the host filesystem 5-90 ms on a busy disk) need
not hold up the caller: long-running front ends (the plugin, the snapshotter) hand it to one
background thread here and wait for it only when they let go (or sweep).
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

from lcow.errors import LcowError

__all__ = ["DeferredDeletions"]

log = logging.getLogger(__name__)


class DeferredDeletions:
    """One thread deleting retired folders in the order they were handed in."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lcow-delete")
        self._pending: set[Future[None]] = set()
        self._lock = threading.Lock()

    def submit(self, folder: Path | None, first: Callable[[], None] | None = None) -> None:
        """Run ``first`` (releasing what still holds the folder's files), then delete
        ``folder`` (a retired ``-removing`` folder), soon; never fails."""
        future = self._pool.submit(_retire, folder, first)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)

    def drain(self) -> None:
        """Wait until every folder handed in so far is deleted (or given up on)."""
        with self._lock:
            pending = set(self._pending)
        wait(pending)

    def close(self) -> None:
        """Drain, then end the thread."""
        self.drain()
        self._pool.shutdown(wait=True)

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)


def _retire(folder: Path | None, first: Callable[[], None] | None) -> None:
    if first is not None:
        try:
            first()
        except (OSError, LcowError) as exc:  # the idle stop or the next Cleanup retries
            log.warning("lcowdriver: releasing %s: %s", folder, exc)
    if folder is not None:
        _delete(folder)


def _delete(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    if folder.exists():  # Cleanup's sweep tries again
        log.warning("lcowdriver: could not delete %s; cleanup retries", folder)
