"""What the conformance suite holds every backend to (SPEC §1-§3): the on-disk names, the
sizes, the ids every operation must refuse and LCOW's exact option errors; and the
:class:`DriverFactory` a backend provides to join the suite.

The on-disk names are spelled out here rather than imported, so the suite is an oracle
independent of :mod:`lcow.storage`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from lcow.graphdriver.driver import Driver

__all__ = [
    "BAD_IDS",
    "CHAIN",
    "DEFAULT_SANDBOX",
    "GIB",
    "INIT_OPTION_ERRORS",
    "LAYER_VHD",
    "LONGEST_ID",
    "MIB",
    "OWN_METADATA",
    "REMOVING",
    "SANDBOX_ON_DISK_LIMIT",
    "SANDBOX_OPTION_ERRORS",
    "SANDBOX_VHDX",
    "DriverFactory",
]

GIB = 1 << 30
MIB = 1 << 20
LAYER_VHD = "layer.vhd"
SANDBOX_VHDX = "sandbox.vhdx"
CHAIN = "layerchain.json"
REMOVING = "-removing"
OWN_METADATA = frozenset({"lcow-layer.json"})  # lcow's own file beside LCOW's (SPEC §1.1)
DEFAULT_SANDBOX = 20 * GIB
SANDBOX_ON_DISK_LIMIT = 8 * MIB  # "a new 20 GB sandbox occupies only a few MB"

BAD_IDS = (
    *("", ".", "..", "a/b", "../escape", "a\\b", "nul\x00id", "cache", "scratch", "mounts"),
    # Names the driver makes for itself: a layer with such an id was swept or removed with
    # another (data-safety issue item 1).
    *("x-removing", ".y.tmp-z", ".hidden", "a-removing"),
    # Not printable, not portable, or longer than every derived name allows.
    *("a b", "a\nb", "\x1b]0;x\x07", "caf\u00e9", "-lead", "_lead", "L" * 129, "L" * 255),
)
#: The longest valid id: every operation works with it (derived names stay under NAME_MAX).
LONGEST_ID = "L" * 128

# (options, exact message) of InitDriver (SPEC §2).
INIT_OPTION_ERRORS: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("lcow.globalmode=maybe",),
        "lcowdriver: init: failed to parse value for 'lcow.globalmode' - must be 'true' or 'false'",
    ),
    (
        ("lcow.globalmode=yes",),
        "lcowdriver: init: failed to parse value for 'lcow.globalmode' - must be 'true' or 'false'",
    ),
    (("lcow.timeout=abc",), "lcow.timeout option could not be interpreted as an integer"),
    (("lcow.timeout=1.5",), "lcow.timeout option could not be interpreted as an integer"),
    (("lcow.timeout=",), "lcow.timeout option could not be interpreted as an integer"),
    # Go's strconv.Atoi takes no spaces, underscores or non-ASCII digits.
    (("lcow.timeout= 5",), "lcow.timeout option could not be interpreted as an integer"),
    (("lcow.timeout=5_0",), "lcow.timeout option could not be interpreted as an integer"),
    (("lcow.timeout=-1",), "lcow.timeout option cannot be negative"),
    (("LCOW.Timeout=-7",), "lcow.timeout option cannot be negative"),
)

# (value, message template with {id}) of CreateReadWrite's lcow.sandboxsize (SPEC §2).
_PARSE = "lcowdriver: createreadwrite: id {id} failed to parse value '{v}' for 'lcow.sandboxsize'"
_LESS = "lcowdriver: createreadwrite: id {id} 'lcow.sandboxsize' option cannot be less than 20"
SANDBOX_OPTION_ERRORS: tuple[tuple[str, str], ...] = (
    ("abc", _PARSE),
    ("", _PARSE),
    ("-1", _PARSE),
    ("20.5", _PARSE),
    ("4294967296", _PARSE),  # strconv.ParseUint(v, 10, 32): beyond uint32
    # ParseUint takes no sign, spaces, underscores or non-ASCII digits.
    ("+25", _PARSE),
    (" 25", _PARSE),
    ("2_5", _PARSE),
    ("\uff12\uff15", _PARSE),
    ("19", _LESS),
    ("0", _LESS),
)


class DriverFactory(Protocol):
    """Makes a driver on ``home`` with the backend under test; ``options`` go to InitDriver."""

    def __call__(self, home: Path, options: Sequence[str] | None = None) -> Driver:
        """A new driver (InitDriver) on ``home``."""
        ...
