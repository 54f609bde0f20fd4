"""The embedded userspace backend: no root, no VM, no mounts (issue 4 item 6)."""

from __future__ import annotations

from lcow.backends.base import LayerDisk
from lcow.backends.userspace.union import UnionView

__all__ = ["UnionView", "UserspaceBackend"]


class UserspaceBackend:
    """Views are read in user space from the images themselves."""

    name = "userspace"

    def open_view(self, layer_id: str, disks: list[LayerDisk]) -> UnionView:
        """A read-only union over ``disks`` (own content first)."""
        return UnionView(layer_id, disks)

    def cleanup(self) -> None:
        """Nothing is held outside the views."""
