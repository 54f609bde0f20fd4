"""``LayerLocks``: exclusive per key across processes and threads, re-entrant, nothing kept open."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from lcow.storage.locks import LAYER_LOCK_FILE, LayerLocks
from tests.helpers import LockHeldElsewhere


def _open_fds_on(path: Path) -> int:
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == str(path))


def test_another_process_holding_a_key_excludes_only_that_key(tmp_path: Path) -> None:
    with LockHeldElsewhere(tmp_path, "layer-a") as holder:
        locks = LayerLocks(tmp_path)
        with locks.try_hold("layer-a") as held:
            assert not held
        with locks.try_hold("layer-b") as held:
            assert held
        got = threading.Event()

        def wait_for_a() -> None:
            with locks.hold("layer-a"):
                got.set()

        waiter = threading.Thread(target=wait_for_a)
        waiter.start()
        time.sleep(0.3)
        assert not got.is_set()  # blocked while the other process holds it
        holder.release()
        waiter.join(10)
        assert got.is_set()


def test_reentrant_in_a_thread_exclusive_between_threads(tmp_path: Path) -> None:
    locks = LayerLocks(tmp_path)
    order: list[str] = []
    with locks.hold("k"), locks.hold("k"):  # re-entrant
        t = threading.Thread(target=lambda: _hold_and_note(locks, order))
        t.start()
        time.sleep(0.2)
        order.append("first")
    t.join(10)
    assert order == ["first", "second"]


def _hold_and_note(locks: LayerLocks, order: list[str]) -> None:
    with locks.hold("k"):
        order.append("second")


def test_hold_all_sorted_and_nothing_left_open(tmp_path: Path) -> None:
    locks = LayerLocks(tmp_path)
    path = tmp_path / LAYER_LOCK_FILE
    with locks.hold_all(["b", "a", "b"]):
        assert _open_fds_on(path) == 1
        with locks.try_hold("a") as again:
            assert again  # the holding thread may re-enter
    assert _open_fds_on(path) == 0  # the data root can be unmounted between operations
