"""lcow: Docker's LCOW storage driver for Linux hosts, in Python.

Public API (more arrives as the driver grows):

* :func:`lcow.tar2ext4` — stream a tar into an ext4 image, optionally with dm-verity and a
  VHD footer.
* :class:`lcow.ConvertOptions`, :class:`lcow.ConvertResult`.
* the error tree in :mod:`lcow.errors`.

The converter's names are loaded on first use (PEP 562): every ``lcow.*`` import runs this
file, and most commands (a converted pull, ``ls``, ``exists``) never convert a tar.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lcow.errors import (
    AlreadyExists,
    CorruptImage,
    InvalidArgument,
    LcowError,
    LimitExceeded,
    NotFound,
    NotSupported,
)

if TYPE_CHECKING:
    from lcow.convert.options import ConvertOptions, ConvertResult
    from lcow.convert.tar2ext4 import tar2ext4

__all__ = [
    "AlreadyExists",
    "ConvertOptions",
    "ConvertResult",
    "CorruptImage",
    "InvalidArgument",
    "LcowError",
    "LimitExceeded",
    "NotFound",
    "NotSupported",
    "tar2ext4",
]
__version__ = "0.1.0"

_LAZY = {
    "ConvertOptions": "lcow.convert.options",
    "ConvertResult": "lcow.convert.options",
    "tar2ext4": "lcow.convert.tar2ext4",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lcow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups do not come here
    return value
