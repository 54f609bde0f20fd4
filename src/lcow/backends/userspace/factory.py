"""How the registry builds the userspace backend (``lcow.backend=userspace``, the default)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lcow.backends.userspace import UserspaceBackend

__all__ = ["FACTORY", "UserspaceFactory", "UserspaceOptions"]


@dataclass(frozen=True)
class UserspaceOptions:
    """The userspace backend reads no option: views are read from the images in place."""


class UserspaceFactory:
    """Needs nothing of the host: no root, no mounts, no VM."""

    option_keys: frozenset[str] = frozenset()

    def parse_options(self, pairs: Mapping[str, str], *, root: Path) -> UserspaceOptions:
        """No keys of its own."""
        return UserspaceOptions()

    def check(self, options: UserspaceOptions) -> None:
        """Always available."""

    def create(self, root: Path, options: UserspaceOptions) -> UserspaceBackend:
        """A backend with no views open."""
        return UserspaceBackend()


FACTORY = UserspaceFactory()
