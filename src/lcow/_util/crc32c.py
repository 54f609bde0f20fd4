"""CRC-32C (Castagnoli) from the ``crc32c`` package, imported at first use.

The package reads its own version through ``importlib.metadata`` when imported: about 12 ms of
start-up (a tenth of a converted pull's imports) for every process that merely might check a
VHDX header or an ext4 block. ext4's and VHDX's checksum code call :func:`crc32c` here instead.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["crc32c"]

_Crc = Callable[[bytes | bytearray | memoryview, int], int]
_function: _Crc | None = None


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """The package's ``crc32c(data, value)``: CRC-32C of ``data`` continuing from ``value``
    (with the usual pre- and post-inversion)."""
    global _function  # noqa: PLW0603 - imported once, at first use
    if _function is None:
        import crc32c as package

        _function = package.crc32c
    return _function(data, value)
