"""How big a sandbox may be: LCOW's GB sizes and Docker's exact ones (SPEC §2, §3, §4.5).

``lcow.sandboxsize`` asks in whole GB (2^30 bytes), at least LCOW's 20; Docker's generic
``size`` asks for an exact number of bytes, which may be below 20 GB (a ``512M`` quota) and is
rounded up to the 1 MiB VHDX block. Every backend applies these limits, so they accept the
same sizes.
"""

from __future__ import annotations

from lcow.errors import InvalidArgument
from lcow.formats.vhd.vhdx_writer import MAX_VIRTUAL_SIZE

__all__ = [
    "GIB",
    "MAX_SANDBOX_GB",
    "MIN_EXACT_SIZE",
    "MIN_SANDBOX_GB",
    "exact_sandbox_size",
    "sandbox_size_bytes",
]

GIB = 1 << 30
MIB = 1 << 20
MIN_SANDBOX_GB = 20  # LCOW's default and minimum (lcow.sandboxsize)
MIN_EXACT_SIZE = 8 << 20  # smallest exact size (Docker's ``size``) accepted
MAX_SANDBOX_GB = MAX_VIRTUAL_SIZE // GIB  # 65536: the VHDX limit of 64 TiB


def sandbox_size_bytes(size_gb: int) -> int:
    """Bytes of a sandbox of ``size_gb`` GB (2^30 bytes each).

    Raises:
        InvalidArgument: ``size_gb`` is below 20 (LCOW's minimum) or above 65536 (VHDX's 64 TiB).
    """
    if isinstance(size_gb, bool) or not isinstance(size_gb, int):
        raise InvalidArgument(f"sandbox size {size_gb!r} is not a whole number of GB")
    if size_gb < MIN_SANDBOX_GB:
        raise InvalidArgument(
            f"sandbox size {size_gb} GB is less than the minimum of {MIN_SANDBOX_GB} GB",
            subject=str(size_gb),
        )
    if size_gb > MAX_SANDBOX_GB:
        raise InvalidArgument(
            f"sandbox size {size_gb} GB is more than the VHDX maximum of {MAX_SANDBOX_GB} GB "
            "(64 TiB)",
            subject=str(size_gb),
        )
    return size_gb * GIB


def exact_sandbox_size(size: int) -> int:
    """The virtual size of a sandbox asked for with ``size`` bytes: rounded up to 1 MiB (the
    VHDX block).

    Raises:
        InvalidArgument: below 8 MiB (too small for a useful ext4) or above 64 TiB (VHDX's
            limit).
    """
    if size < MIN_EXACT_SIZE or size > MAX_VIRTUAL_SIZE:
        raise InvalidArgument(
            f"sandbox size {size} bytes is outside {MIN_EXACT_SIZE} bytes .. {MAX_SANDBOX_GB} GB",
            subject=str(size),
        )
    return -(-size // MIB) * MIB
