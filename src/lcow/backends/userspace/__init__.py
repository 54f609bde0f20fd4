"""The embedded userspace backend: no root, no VM, no mounts (issue 4 item 6)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from lcow.backends.base import LayerDisk
from lcow.backends.counted import CountedViews
from lcow.sandboxes import make_sandbox
from lcow.storage.dataroot import LayerFile

if TYPE_CHECKING:
    from lcow.backends.userspace.union import UnionView

__all__ = ["UserspaceBackend"]


class UserspaceBackend:
    """Views are read in user space from the images themselves; counts live in memory."""

    name = "userspace"
    writable = False
    persistent = False

    def __init__(self) -> None:
        self._views: CountedViews[UnionView] = CountedViews()

    def acquire(self, layer_id: str, disks: list[LayerDisk]) -> UnionView:
        """Count a Get; the first one opens a read-only union over ``disks``."""
        # Imported here: the view reads ext4 images, which a process that opens no view (a
        # pull, ls, exists) never does; the driver makes its backend in every command.
        from lcow.backends.userspace.union import UnionView

        return self._views.acquire(layer_id, lambda: UnionView(layer_id, disks))

    def release(self, layer_id: str) -> None:
        """Count a Put; the last one closes the view."""
        view = self._views.release(layer_id)
        if view is not None:
            view.close()

    def release_all(self, layer_id: str) -> None:
        """Close the view whatever its count."""
        view = self._views.pop(layer_id)
        if view is not None:
            view.close()

    def count(self, layer_id: str) -> int:
        """Outstanding Gets."""
        return self._views.count(layer_id)

    def in_use(self, disk: LayerFile) -> bool:
        """Views only read images, so a disk is never held against replacement."""
        return False

    @contextlib.contextmanager
    def reading(self, disk: LayerFile) -> Iterator[Path]:
        """Images are read where they lie."""
        yield disk.path

    def make_sandbox(self, target: Path, size: int) -> None:
        """Format on the host (lcow's mke2fs path: SPEC §4.5's VM-less equivalent)."""
        make_sandbox(target, size)

    def cleanup(self) -> None:
        """Close every view."""
        for layer_id in self._views.ids():
            self.release_all(layer_id)
