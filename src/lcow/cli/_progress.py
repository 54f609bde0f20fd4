"""Progress bars on stderr (tqdm), drawn only when stderr is a terminal.

A bar's label may name a layer, so it is escaped (:func:`lcow._util.escape.printable`) like every
other line lcow prints.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO

from lcow._util.escape import printable

__all__ = ["ByteBar", "CountingReader", "byte_progress"]


class ByteBar:
    """A running byte counter shown as a tqdm bar."""

    def __init__(self, desc: str, total: int | None) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
            desc=printable(desc), leave=False, dynamic_ncols=True,
        )  # fmt: skip

    def add(self, n: int) -> None:
        """Count ``n`` more bytes (safe from another thread)."""
        self._bar.update(n)

    def set_total(self, total: int | None) -> None:
        """Change the expected total."""
        self._bar.total = total
        self._bar.refresh()

    def set_description(self, desc: str) -> None:
        """Change the label."""
        self._bar.set_description_str(printable(desc))

    def close(self) -> None:
        """Remove the bar."""
        self._bar.close()


@contextmanager
def byte_progress(desc: str, total: int | None = None) -> Iterator[ByteBar | None]:
    """Yield a :class:`ByteBar` when stderr is a terminal, else ``None``."""
    if not sys.stderr.isatty():
        yield None
        return
    bar = ByteBar(desc, total)
    try:
        yield bar
    finally:
        bar.close()


class CountingReader:
    """A read-only stream that reports how many bytes were read through it.

    It has no ``fileno``, so consumers copy through it rather than around it.
    """

    def __init__(self, stream: BinaryIO, report: Callable[[int], None]) -> None:
        self._stream = stream
        self._report = report

    def read(self, n: int = -1) -> bytes:
        """Read up to ``n`` bytes."""
        data = self._stream.read(n)
        if data:
            self._report(len(data))
        return data

    def readable(self) -> bool:
        """Always true."""
        return True
