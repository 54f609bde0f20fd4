"""lcow: Docker's LCOW storage driver for Linux hosts, in Python.

Public API (more arrives as the driver grows):

* :func:`lcow.tar2ext4` — stream a tar into an ext4 image, optionally with dm-verity and a
  VHD footer.
* :class:`lcow.ConvertOptions`, :class:`lcow.ConvertResult`.
* the error tree in :mod:`lcow.errors`.
"""

from __future__ import annotations

from lcow.convert.options import ConvertOptions, ConvertResult
from lcow.convert.tar2ext4 import tar2ext4
from lcow.errors import (
    AlreadyExists,
    CorruptImage,
    InvalidArgument,
    LcowError,
    LimitExceeded,
    NotFound,
    NotSupported,
)

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
