"""Driver options: ``lcow.*`` keys with LCOW's parsing, defaults and messages (SPEC §2).

Options arrive as ``key=value`` strings (``--storage-opt``, plugin ``Init.Opts``). Keys are
case-insensitive and split at the first ``=``; entries without ``=`` and keys outside the
``lcow.`` prefix are ignored, while an unknown ``lcow.*`` key is an error naming it.

The driver reads ``lcow.backend``, ``lcow.globalmode``, ``lcow.timeout`` and ``lcow.dmverity``
here; the chosen backend reads its own keys (:class:`~lcow.backends.base.BackendFactory`), so
the keys accepted are :data:`DRIVER_KEYS` and those that backend declares. Every key of SPEC
§2's table is among the driver's: the VM-only ones are read by the vm backend and ignored by
the others, as SPEC §2 says.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lcow._util.initopts import (
    DEFAULT_TIMEOUT,
    UTILITY_VM_KEYS,
    bool_option,
    split_options,
    timeout_option,
)
from lcow.backends.base import BackendOptions
from lcow.backends.registry import BackendRegistry, installed_backends
from lcow.errors import InvalidArgument

__all__ = [
    "DEFAULT_BACKEND",
    "DEFAULT_SANDBOX_GB",
    "DRIVER_KEYS",
    "DriverOptions",
    "parse_driver_options",
    "parse_ram_size",
    "sandbox_size_bytes",
]

DEFAULT_BACKEND = "userspace"
DEFAULT_SANDBOX_GB = 20
#: The ``lcow.*`` keys InitDriver accepts whatever the backend: SPEC §2's table and lcow's own.
DRIVER_KEYS = UTILITY_VM_KEYS | {"lcow.sandboxsize", "lcow.backend", "lcow.dmverity"}

_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True, kw_only=True)
class DriverOptions:
    """Parsed driver-wide options.

    Attributes:
        global_mode: one utility VM for every layer (``lcow.globalmode``; shown by Status).
        timeout: seconds for VM start and commands; an idle timeout on streams.
        backend: the backend's name (``lcow.backend``): ``userspace`` (default), ``host``,
            ``vm`` or a registered third-party one.
        dm_verity: add a dm-verity hash area to layers written by ApplyDiff.
        raw: every option as given, for persistence.
        backend_options: what the chosen backend's factory parsed from the same options.
    """

    global_mode: bool = False
    timeout: int = DEFAULT_TIMEOUT
    backend: str = DEFAULT_BACKEND
    dm_verity: bool = False
    raw: tuple[str, ...] = field(default=())
    backend_options: BackendOptions | None = None


def parse_driver_options(
    options: Iterable[str] | None, *, root: str, backends: BackendRegistry | None = None
) -> DriverOptions:
    """Parse InitDriver's options, the chosen backend's included.

    Args:
        options: ``key=value`` strings (``None`` = none).
        root: the data root (defaults are placed relative to it).
        backends: where ``lcow.backend`` is looked up (default: the built-ins and the installed
            entry points, :func:`~lcow.backends.registry.installed_backends`).

    Raises:
        InvalidArgument: a bad value, an unknown backend, or an unknown ``lcow.*`` key (named
            in the message).
        NotSupported: the chosen backend is installed but cannot be loaded.
    """
    given = list(options or ())
    pairs = split_options(given)
    registry = backends if backends is not None else installed_backends()
    backend = pairs.get("lcow.backend", DEFAULT_BACKEND).strip().lower() or DEFAULT_BACKEND
    factory = registry.get(backend) if backend in registry else None
    known = DRIVER_KEYS | (factory.option_keys if factory is not None else frozenset())
    for key in pairs:
        if key.startswith("lcow.") and key not in known:
            raise InvalidArgument(f"lcowdriver: init: unknown option '{key}'", subject=key)
    global_mode = bool_option(pairs, "lcow.globalmode")
    timeout = timeout_option(pairs)
    if factory is None:
        raise InvalidArgument(
            f"lcowdriver: init: invalid value '{backend}' for 'lcow.backend' - must be one of "
            f"{', '.join(registry.names())}",
            subject="lcow.backend",
        )
    dm_verity = bool_option(pairs, "lcow.dmverity")
    return DriverOptions(
        global_mode=global_mode,
        timeout=timeout,
        backend=backend,
        dm_verity=dm_verity,
        raw=tuple(given),
        backend_options=factory.parse_options(pairs, root=Path(root)),
    )


def sandbox_size_bytes(layer_id: str, storage_opt: Mapping[str, str] | None) -> int | None:
    """The sandbox size a CreateReadWrite asks for, or ``None`` for the default.

    ``lcow.sandboxsize`` (GB, ≥ 20) is LCOW's key; Docker's generic ``size`` (RAM-size syntax,
    binary multiples) sets an exact size and wins when both are given.

    Raises:
        InvalidArgument: with LCOW's messages.
    """
    if not storage_opt:
        return None
    opts = {k.lower(): v for k, v in storage_opt.items()}
    if "size" in opts:
        return parse_ram_size(opts["size"], subject="size")
    if "lcow.sandboxsize" not in opts:
        return None
    text = opts["lcow.sandboxsize"]
    try:
        if not _DIGITS.fullmatch(text):
            raise ValueError  # Go's ParseUint: ASCII digits only, no sign, space or "_"
        gb = int(text, 10)
        if not 0 <= gb < 1 << 32:
            raise ValueError
    except ValueError:
        raise InvalidArgument(
            f"lcowdriver: createreadwrite: id {layer_id} failed to parse value '{text}' for "
            "'lcow.sandboxsize'",
            subject="lcow.sandboxsize",
        ) from None
    if gb < DEFAULT_SANDBOX_GB:
        raise InvalidArgument(
            f"lcowdriver: createreadwrite: id {layer_id} 'lcow.sandboxsize' option cannot be less "
            f"than {DEFAULT_SANDBOX_GB}",
            subject="lcow.sandboxsize",
        )
    return None if gb == DEFAULT_SANDBOX_GB else gb << 30


_RAM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_ram_size(text: str, *, subject: str = "size") -> int:
    """Docker's ``units.RAMInBytes``: ``512M``, ``1.5g``, ``1024`` (binary multiples).

    Raises:
        InvalidArgument: an unparsable size.
    """
    match = _RAM.match(text)
    if match is None:
        raise InvalidArgument(f"invalid size: '{text}'", subject=subject)
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
