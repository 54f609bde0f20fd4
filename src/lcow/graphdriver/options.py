"""Driver options: ``lcow.*`` keys with LCOW's parsing, defaults and messages (SPEC §2).

Options arrive as ``key=value`` strings (``--storage-opt``, plugin ``Init.Opts``). Keys are
case-insensitive and split at the first ``=``; entries without ``=`` and keys outside the
``lcow.`` prefix are ignored, while an unknown ``lcow.*`` key is an error naming it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from lcow.errors import InvalidArgument

__all__ = [
    "BACKENDS",
    "DEFAULT_SANDBOX_GB",
    "DriverOptions",
    "parse_driver_options",
    "parse_go_bool",
    "parse_ram_size",
    "sandbox_size_bytes",
]

BACKENDS = ("userspace", "host", "vm")
DEFAULT_SANDBOX_GB = 20
DEFAULT_TIMEOUT = 300
_KNOWN = {
    "lcow.globalmode",
    "lcow.sandboxsize",
    "lcow.kirdpath",
    "lcow.kernel",
    "lcow.initrd",
    "lcow.vhdx",
    "lcow.bootparameters",
    "lcow.timeout",
    "lcow.backend",
    "lcow.dmverity",
}
_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


_DIGITS = re.compile(r"[0-9]+")
_SIGNED_DIGITS = re.compile(r"[+-]?[0-9]+")


def _go_atoi(text: str) -> int:
    """Go's ``strconv.Atoi``: an optional sign and ASCII digits, nothing else."""
    if not _SIGNED_DIGITS.fullmatch(text):
        raise ValueError(text)
    return int(text, 10)


def parse_go_bool(text: str) -> bool | None:
    """Go's ``strconv.ParseBool``: the accepted spellings, else ``None``."""
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    return None


@dataclass(frozen=True, kw_only=True)
class DriverOptions:
    """Parsed driver-wide options.

    Attributes:
        global_mode: one utility VM for every layer (``lcow.globalmode``).
        kirdpath: folder of the VM kernel and initrd (``lcow.kirdpath``).
        kernel: kernel file name in ``kirdpath``.
        initrd: initrd file name in ``kirdpath``.
        vhdx: boot disk path, if given (``lcow.vhdx``).
        boot_parameters: extra kernel command line.
        timeout: seconds for VM start and commands; an idle timeout on streams.
        backend: ``userspace`` (default), ``host`` or ``vm``.
        dm_verity: add a dm-verity hash area to layers written by ApplyDiff.
        raw: every option as given (lower-cased keys), for persistence.
    """

    global_mode: bool = False
    kirdpath: str = ""
    kernel: str = "bootx64.efi"
    initrd: str = "initrd.img"
    vhdx: str = ""
    boot_parameters: str = ""
    timeout: int = DEFAULT_TIMEOUT
    backend: str = "userspace"
    dm_verity: bool = False
    raw: tuple[str, ...] = field(default=())


def _split(options: Iterable[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in options:
        key, eq, value = item.partition("=")
        if eq:
            pairs[key.strip().lower()] = value
    return pairs


def parse_driver_options(options: Iterable[str] | None, *, root: str) -> DriverOptions:
    """Parse InitDriver's options.

    Args:
        options: ``key=value`` strings (``None`` = none).
        root: the data root (defaults are placed relative to it).

    Raises:
        InvalidArgument: a bad value, or an unknown ``lcow.*`` key (named in the message).
    """
    given = list(options or ())
    pairs = _split(given)
    for key in pairs:
        if key.startswith("lcow.") and key not in _KNOWN:
            raise InvalidArgument(f"lcowdriver: init: unknown option '{key}'", subject=key)
    global_mode = False
    if "lcow.globalmode" in pairs:
        parsed = parse_go_bool(pairs["lcow.globalmode"])
        if parsed is None:
            raise InvalidArgument(
                "lcowdriver: init: failed to parse value for 'lcow.globalmode' - must be 'true' or "
                "'false'",
                subject="lcow.globalmode",
            )
        global_mode = parsed
    timeout = 0
    if "lcow.timeout" in pairs:
        try:
            timeout = _go_atoi(pairs["lcow.timeout"])
        except ValueError:
            raise InvalidArgument(
                "lcow.timeout option could not be interpreted as an integer", subject="lcow.timeout"
            ) from None
        if timeout < 0:
            raise InvalidArgument("lcow.timeout option cannot be negative", subject="lcow.timeout")
    if timeout == 0:
        env = os.environ.get("OPENGCS_UVM_TIMEOUT_SECONDS", "")
        timeout = int(env) if env.isdigit() and int(env) > 0 else DEFAULT_TIMEOUT
    backend = pairs.get("lcow.backend", "userspace").strip().lower() or "userspace"
    if backend not in BACKENDS:
        raise InvalidArgument(
            f"lcowdriver: init: invalid value '{backend}' for 'lcow.backend' - must be one of "
            f"{', '.join(BACKENDS)}",
            subject="lcow.backend",
        )
    dm_verity = False
    if "lcow.dmverity" in pairs:
        parsed = parse_go_bool(pairs["lcow.dmverity"])
        if parsed is None:
            raise InvalidArgument(
                "lcowdriver: init: failed to parse value for 'lcow.dmverity' - must be 'true' or "
                "'false'",
                subject="lcow.dmverity",
            )
        dm_verity = parsed
    kirdpath = pairs.get("lcow.kirdpath") or os.path.join(root, "uvm")
    return DriverOptions(
        global_mode=global_mode,
        kirdpath=kirdpath,
        kernel=pairs.get("lcow.kernel") or "bootx64.efi",
        initrd=pairs.get("lcow.initrd") or "initrd.img",
        vhdx=pairs.get("lcow.vhdx") or os.path.join(kirdpath, "uvm.vhdx"),
        boot_parameters=pairs.get("lcow.bootparameters", ""),
        timeout=timeout,
        backend=backend,
        dm_verity=dm_verity,
        raw=tuple(given),
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
