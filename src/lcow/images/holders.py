"""Layer locks held by helper threads, so several layers of one import can convert at once.

The driver's per-layer locks belong to the thread that takes them (re-entrant per thread,
shared across processes), and an import must hold the locks of *all* its layers until it is
decided — so that a concurrent import never reuses a layer this one may still roll back. One
thread can hold them all, but then only that thread may convert. Here each layer's lock is held
by a thread of its own, which runs the operations on that layer it is given (presence check,
Create, ApplyDiff, the rollback's Remove) and lets go only when the whole import is over.

The locks are taken one after the other in sorted id order (each thread holds its lock before
the next one starts), the order :meth:`~lcow.storage.locks.LayerLocks.hold_all` uses, so
imports holding overlapping sets still cannot deadlock.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from lcow.graphdriver.driver import Driver

__all__ = ["LayerHolder", "holding_each"]

T = TypeVar("T")


class LayerHolder:
    """A thread holding one layer's lock and running the jobs submitted to it, in order."""

    def __init__(self, driver: Driver, layer_id: str) -> None:
        self.layer_id = layer_id
        self._driver = driver
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._held = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"lcow-layer-{layer_id[:12]}", daemon=True
        )

    def _run(self) -> None:
        try:
            with self._driver.holding([self.layer_id]):
                self._held.set()
                while (job := self._jobs.get()) is not None:
                    job()
        except BaseException as exc:  # the lock could not be taken: reported by start()
            self._error = exc
            self._held.set()

    def start(self) -> None:
        """Start the thread and wait until it holds the lock.

        Raises:
            Exception: what taking the lock raised (an invalid id).
        """
        self._thread.start()
        self._held.wait()
        if self._error is not None:
            raise self._error

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the holding thread (after the jobs submitted before)."""
        future: Future[T] = Future()

        def job() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self._jobs.put(job)
        return future

    def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the holding thread and wait for its result."""
        return self.submit(fn).result()

    def close(self) -> None:
        """Let the lock go once the jobs submitted are done, and wait for that."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()


@contextlib.contextmanager
def holding_each(driver: Driver, layer_ids: Sequence[str]) -> Iterator[dict[str, LayerHolder]]:
    """Hold every layer's lock, each on a thread of its own, for the block.

    Yields:
        The holder of each id.
    """
    holders: dict[str, LayerHolder] = {}
    try:
        for layer_id in sorted(set(layer_ids)):
            holder = LayerHolder(driver, layer_id)
            holders[layer_id] = holder
            holder.start()
        yield holders
    finally:
        for holder in reversed(list(holders.values())):
            holder.close()
