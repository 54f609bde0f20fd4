"""Coalescing positional writer: many small block-aligned writes become few large ``pwrite``s."""

from __future__ import annotations

import os

__all__ = ["OutputWriter"]

_FLUSH_AT = 4 << 20
_MAX_GAP = 64 << 10  # a forward gap this small is zero-filled instead of flushing
_ZEROS = bytes(_MAX_GAP)


class OutputWriter:
    """Writes at explicit offsets into ``fd``, buffering runs of adjacent writes.

    Writes that continue the pending run (or follow it after a small gap, filled with zeros) are
    appended in memory; anything else flushes first. Call :meth:`flush` before handing ``fd`` to
    other writers (``copy_file_range``, ``splice``) and before closing.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._pending = bytearray()
        self._start = 0  # file offset of _pending[0]
        self.high_water = 0  # one past the last byte ever written

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``offset`` (possibly later, on flush)."""
        end = self._start + len(self._pending)
        if offset != end:
            gap = offset - end
            if self._pending and 0 < gap <= _MAX_GAP:
                self._pending += _ZEROS[:gap]
            else:
                self.flush()
                self._start = offset
        self._pending += data
        if len(self._pending) >= _FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        """Write out the pending run."""
        if not self._pending:
            return
        view = memoryview(self._pending)
        offset = self._start
        while view:
            n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n
        view.release()
        self.high_water = max(self.high_water, offset)
        self._start = offset
        self._pending.clear()
