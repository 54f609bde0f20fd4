"""A process-wide cap on concurrent tar -> ext4 conversions.

Each conversion holds a few MiB of buffers, a namespace that grows with its entries and, for
compressed input, a decompression thread; many at once (a plugin serving parallel pulls) could
exhaust memory. :func:`lcow.convert.tar2ext4.tar2ext4` takes a slot for its whole run and gives it
back at the end, so at most :func:`max_conversions` run at a time; the others wait (up to
``ConvertOptions.slot_timeout``, then :class:`~lcow.errors.Busy`).

The default is the CPU count (at least 2), or ``$LCOW_MAX_CONVERSIONS`` when set; change it with
:func:`set_max_conversions`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator

from lcow.errors import Busy, InvalidArgument

__all__ = [
    "ENV_MAX_CONVERSIONS",
    "active_conversions",
    "conversion_slot",
    "default_max_conversions",
    "max_conversions",
    "set_max_conversions",
]

ENV_MAX_CONVERSIONS = "LCOW_MAX_CONVERSIONS"


def default_max_conversions() -> int:
    """``$LCOW_MAX_CONVERSIONS`` if set to a positive integer, else the CPU count (at least 2)."""
    text = os.environ.get(ENV_MAX_CONVERSIONS, "").strip()
    if text:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise InvalidArgument(
                f"${ENV_MAX_CONVERSIONS}: {text!r} is not a positive integer",
                subject=ENV_MAX_CONVERSIONS,
            )
        return value
    return max(2, os.cpu_count() or 1)


class _Slots:
    """A counting semaphore whose capacity can change while slots are held."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._limit: int | None = None  # read lazily: the environment may change before use
        self._active = 0

    def limit(self) -> int:
        with self._cond:
            if self._limit is None:
                self._limit = default_max_conversions()
            return self._limit

    def set_limit(self, value: int) -> None:
        with self._cond:
            self._limit = value
            self._cond.notify_all()

    def active(self) -> int:
        with self._cond:
            return self._active

    @contextlib.contextmanager
    def hold(self, timeout: float | None, what: str) -> Iterator[None]:
        limit = self.limit()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._active >= (self._limit or limit):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise Busy(
                        f"{what}: {self._active} conversions already running, the limit of "
                        f"max_conversions={self._limit} was still reached after {timeout} s",
                        subject=what,
                    )
                self._cond.wait(left)
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify()


_SLOTS = _Slots()


def max_conversions() -> int:
    """How many conversions may run at once in this process."""
    return _SLOTS.limit()


def set_max_conversions(value: int) -> None:
    """Change the cap (waiting conversions start when it grows).

    Raises:
        InvalidArgument: ``value`` is not a positive integer.
    """
    if not isinstance(value, int) or value < 1:
        raise InvalidArgument(
            f"max_conversions: {value!r} must be a positive integer", subject="max_conversions"
        )
    _SLOTS.set_limit(value)


def active_conversions() -> int:
    """Conversions holding a slot right now."""
    return _SLOTS.active()


def conversion_slot(
    timeout: float | None = None, *, what: str = "tar2ext4"
) -> contextlib.AbstractContextManager[None]:
    """Hold one conversion slot for the ``with`` block.

    Args:
        timeout: most seconds to wait for a free slot; ``None``: no limit.
        what: the subject named by the error.

    Raises:
        Busy: no slot became free within ``timeout``.
    """
    return _SLOTS.hold(timeout, what)
