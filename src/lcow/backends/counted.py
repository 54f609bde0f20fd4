"""Per-id Get counts kept in memory, for backends whose views live inside the process."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["CountedViews"]

V = TypeVar("V")


class CountedViews(Generic[V]):
    """``id → (view, count)``. The driver serialises calls per id; this guards the map."""

    def __init__(self) -> None:
        self._views: dict[str, tuple[V, int]] = {}
        self._lock = threading.Lock()

    def acquire(self, layer_id: str, open_view: Callable[[], V]) -> V:
        """Count a Get; the first one opens the view."""
        with self._lock:
            held = self._views.get(layer_id)
            if held is not None:
                self._views[layer_id] = (held[0], held[1] + 1)
                return held[0]
        view = open_view()
        with self._lock:
            self._views[layer_id] = (view, 1)
        return view

    def release(self, layer_id: str) -> V | None:
        """Count a Put; returns the view to close when this was the last one."""
        with self._lock:
            held = self._views.get(layer_id)
            if held is None:
                return None
            if held[1] > 1:
                self._views[layer_id] = (held[0], held[1] - 1)
                return None
            del self._views[layer_id]
            return held[0]

    def pop(self, layer_id: str) -> V | None:
        """Forget a view whatever its count; returns it for closing."""
        with self._lock:
            held = self._views.pop(layer_id, None)
        return None if held is None else held[0]

    def count(self, layer_id: str) -> int:
        """Outstanding Gets of ``layer_id``."""
        with self._lock:
            held = self._views.get(layer_id)
            return 0 if held is None else held[1]

    def ids(self) -> list[str]:
        """Ids with a view."""
        with self._lock:
            return list(self._views)
