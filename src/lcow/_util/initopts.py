"""InitDriver's ``key=value`` options: splitting them, and the rules several readers share.

The driver (:mod:`lcow.graphdriver.options`) and a backend (the vm backend's options) read
keys from the same list; what both read — ``lcow.timeout`` and Go-boolean keys such as
``lcow.globalmode`` — is parsed here once, with LCOW's messages (SPEC §2). Keys are
case-insensitive and split at the first ``=``; entries without ``=`` are ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

from lcow.errors import InvalidArgument

__all__ = [
    "DEFAULT_TIMEOUT",
    "UTILITY_VM_KEYS",
    "bool_option",
    "parse_go_bool",
    "split_options",
    "timeout_option",
]

DEFAULT_TIMEOUT = 300
#: SPEC §2's keys about the utility VM: the vm backend reads them, and the driver accepts them
#: whatever the backend (LCOW's own table), so both name them from here.
UTILITY_VM_KEYS = frozenset(
    {
        "lcow.globalmode",
        "lcow.kirdpath",
        "lcow.kernel",
        "lcow.initrd",
        "lcow.vhdx",
        "lcow.bootparameters",
        "lcow.timeout",
    }
)
_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_SIGNED_DIGITS = re.compile(r"[+-]?[0-9]+")


def split_options(options: Iterable[str]) -> dict[str, str]:
    """``key=value`` strings as a mapping: keys stripped and lower-cased, the last of a key
    winning; entries without ``=`` left out."""
    pairs: dict[str, str] = {}
    for item in options:
        key, eq, value = item.partition("=")
        if eq:
            pairs[key.strip().lower()] = value
    return pairs


def parse_go_bool(text: str) -> bool | None:
    """Go's ``strconv.ParseBool``: the accepted spellings, else ``None``."""
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    return None


def _go_atoi(text: str) -> int:
    """Go's ``strconv.Atoi``: an optional sign and ASCII digits, nothing else."""
    if not _SIGNED_DIGITS.fullmatch(text):
        raise ValueError(text)
    return int(text, 10)


def bool_option(pairs: Mapping[str, str], key: str) -> bool:
    """The Go boolean under ``key`` (false when absent).

    Raises:
        InvalidArgument: ``lcowdriver: init: failed to parse value for '<key>' - must be 'true'
            or 'false'``.
    """
    if key not in pairs:
        return False
    parsed = parse_go_bool(pairs[key])
    if parsed is None:
        raise InvalidArgument(
            f"lcowdriver: init: failed to parse value for '{key}' - must be 'true' or 'false'",
            subject=key,
        )
    return parsed


def timeout_option(pairs: Mapping[str, str]) -> int:
    """Seconds of ``lcow.timeout``: a non-zero value, else ``$OPENGCS_UVM_TIMEOUT_SECONDS``,
    else 300.

    Raises:
        InvalidArgument: not a Go integer, or negative (LCOW's messages).
    """
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
    return timeout
