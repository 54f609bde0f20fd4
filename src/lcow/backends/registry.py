"""Backends by name: the built-ins and the ``lcow.backends`` entry points (SPEC §2).

``lcow.backend=<name>`` names a :class:`~lcow.backends.base.BackendFactory`. The built-ins
``userspace``, ``host`` and ``vm`` are declared as entry points of the group ``lcow.backends``
in lcow's own ``pyproject.toml``, the way a third-party package declares its backend::

    [project.entry-points."lcow.backends"]
    mybackend = "mypackage.lcow_backend:FACTORY"

and are also listed here, so a source checkout without installed metadata still finds them.
A built-in name always means the built-in: an entry point of another package cannot replace
it. Entries are references (``module:attribute``) loaded on first use, so this module imports
no concrete backend and listing the names loads none.

A registry is a value: :meth:`BackendRegistry.with_backend` returns a new one with an extra
backend (for tests and embedders), and nothing is registered process-wide. The installed
backends are scanned once per process (:func:`installed_backends`): a package installed later
is seen after a restart.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from lcow.backends.base import BackendFactory
from lcow.errors import InvalidArgument, NotSupported

__all__ = ["BUILTIN_BACKENDS", "ENTRY_POINT_GROUP", "BackendRegistry", "installed_backends"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "lcow.backends"
#: The built-in backends, in the order they are listed (the first is the default).
BUILTIN_BACKENDS: tuple[tuple[str, str], ...] = (
    ("userspace", "lcow.backends.userspace.factory:FACTORY"),
    ("host", "lcow.backends.host.factory:FACTORY"),
    ("vm", "lcow.backends.vm.factory:FACTORY"),
)
_FACTORY_METHODS = ("parse_options", "check", "create")

#: What a registry maps a name to: a factory, or a ``module:attribute`` reference to one.
Entry = BackendFactory[Any] | EntryPoint


class BackendRegistry:
    """``lcow.backend`` names → backend factories, loaded when first asked for.

    Args:
        entries: name → factory or entry point; names are lower case. Built-in names listed
            first keep their place in :meth:`names`, the others follow sorted.
    """

    def __init__(self, entries: Mapping[str, Entry]) -> None:
        builtin = [name for name, _ in BUILTIN_BACKENDS if name in entries]
        others = sorted(name for name in entries if name not in builtin)
        self._entries = {name: entries[name] for name in [*builtin, *others]}

    @classmethod
    def discover(cls) -> BackendRegistry:
        """The built-ins and every installed entry point of :data:`ENTRY_POINT_GROUP`.

        An entry point naming a built-in, or a name another package already took, is
        ignored with a warning.
        """
        entries: dict[str, Entry] = {
            name: EntryPoint(name, value, ENTRY_POINT_GROUP) for name, value in BUILTIN_BACKENDS
        }
        builtin = dict(BUILTIN_BACKENDS)
        for point in entry_points(group=ENTRY_POINT_GROUP):
            name = point.name.strip().lower()
            if builtin.get(name) == point.value:
                continue  # lcow's own declaration of a built-in
            if name in entries:
                log.warning(
                    "backend %s: ignoring the entry point %s (the name is taken)", name, point.value
                )
                continue
            entries[name] = point
        return cls(entries)

    def with_backend(self, name: str, factory: BackendFactory[Any]) -> BackendRegistry:
        """A registry with ``factory`` under ``name`` as well.

        Raises:
            InvalidArgument: ``name`` is empty, not lower case, or already taken.
        """
        if not name or name != name.strip().lower() or "=" in name:
            raise InvalidArgument(f"backend {name!r}: a name is lower case, without '='")
        if name in self._entries:
            raise InvalidArgument(f"backend {name}: the name is taken", subject=name)
        return BackendRegistry({**self._entries, name: factory})

    def names(self) -> tuple[str, ...]:
        """Every backend name: the built-ins first, then the others sorted."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> BackendFactory[Any]:
        """The factory registered as ``name``, loading its module if needed.

        Raises:
            InvalidArgument: no backend has that name.
            NotSupported: its module cannot be imported, or the object is not a factory
                (``driver not supported: the <name> backend …``).
        """
        entry = self._entries.get(name)
        if entry is None:
            raise InvalidArgument(f"backend {name}: no such backend", subject=name)
        if not isinstance(entry, EntryPoint):
            return entry
        try:
            factory = entry.load()
        except (ImportError, AttributeError) as exc:
            raise NotSupported(
                f"driver not supported: the {name} backend cannot be loaded from {entry.value}: "
                f"{exc}",
                subject=name,
            ) from exc
        missing = [m for m in _FACTORY_METHODS if not callable(getattr(factory, m, None))]
        if missing or not isinstance(getattr(factory, "option_keys", None), frozenset):
            raise NotSupported(
                f"driver not supported: the {name} backend's entry point {entry.value} is not a "
                "backend factory (option_keys, parse_options, check, create)",
                subject=name,
            )
        return factory  # type: ignore[no-any-return]


@functools.cache
def installed_backends() -> BackendRegistry:
    """The built-ins and the installed entry points (:meth:`BackendRegistry.discover`), scanned
    on first use; the same registry afterwards."""
    return BackendRegistry.discover()
