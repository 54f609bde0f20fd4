"""How the registry builds the host backend (``lcow.backend=host``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lcow.backends.host.backend import HostBackend, check_prerequisites

__all__ = ["FACTORY", "HostFactory", "HostOptions"]


@dataclass(frozen=True, kw_only=True)
class HostOptions:
    """The host backend's settings (no ``lcow.*`` key sets them).

    Attributes:
        daemon_timeout: seconds to wait for the storage daemon to start, answer or stop.
    """

    daemon_timeout: float = 30.0


class HostFactory:
    """Needs root, loop devices, ext4, overlayfs and openat2 (:func:`check_prerequisites`)."""

    option_keys: frozenset[str] = frozenset()

    def parse_options(self, pairs: Mapping[str, str], *, root: Path) -> HostOptions:
        """No keys of its own: the defaults."""
        return HostOptions()

    def check(self, options: HostOptions) -> None:
        """``driver not supported`` naming what the host lacks."""
        check_prerequisites()

    def create(self, root: Path, options: HostOptions) -> HostBackend:
        """The backend over ``root``, adopting the views an earlier process left mounted."""
        return HostBackend(root, options.daemon_timeout)


FACTORY = HostFactory()
