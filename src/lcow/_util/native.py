"""The switch for lcow's optional C accelerators (``lcow._tarscan``, ``lcow._ext4pack``).

Each accelerator has a pure-Python equivalent producing the same results. ``LCOW_NATIVE=0`` in
the environment, read at import time, makes every caller use the Python code; otherwise a
native module is used whenever it was built.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["load"]


def load(name: str) -> ModuleType | None:
    """``lcow.<name>``, or ``None`` when native code is disabled or the module is not built."""
    if os.environ.get("LCOW_NATIVE") == "0":
        return None
    try:
        return importlib.import_module("lcow." + name)
    except ImportError:
        return None
