"""Values inside QEMU's ``key=value,key=value`` option syntax.

QEMU splits an option string at commas and reads ``,,`` as one literal comma, so a path that
holds a comma (a data root or ``$TMPDIR`` named ``a,b``) must have it doubled; unescaped, the
rest of the path would be read as further options (``/x,server=off`` would even set one).
"""

from __future__ import annotations

from os import PathLike

__all__ = ["option_value"]


def option_value(value: str | PathLike[str]) -> str:
    """``value`` written for QEMU's option syntax: every comma doubled."""
    return str(value).replace(",", ",,")
