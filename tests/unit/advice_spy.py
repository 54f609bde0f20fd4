"""Records the write-behind advice the output writer gives the kernel, and passes it on."""

from __future__ import annotations

import pytest

from lcow._util import outbuf

__all__ = ["record_advice"]


def record_advice(
    monkeypatch: pytest.MonkeyPatch, *, threshold: int, window: int
) -> list[tuple[int, int]]:
    """Make the kernel's background writeback threshold ``threshold`` and write-behind windows
    ``window`` bytes (so a small test crosses them); return the list every advised
    ``(offset, length)`` is appended to, in the order given."""
    monkeypatch.setattr(outbuf, "background_writeback_threshold", lambda: threshold)
    monkeypatch.setattr(outbuf, "_WRITE_BEHIND", window)
    advised: list[tuple[int, int]] = []
    real_advise = outbuf._advise

    def advise(fd: int, ranges: list[tuple[int, int]]) -> None:
        advised.extend(ranges)
        real_advise(fd, ranges)

    monkeypatch.setattr(outbuf, "_advise", advise)
    return advised
