#!/usr/bin/env python3
"""Fuzz the VHDX reader: a sparse-encoded file (see ``_common.materialize``) is opened as a
dynamic VHDX and read: size, BAT states, host ranges and bytes across the virtual disk.

For inputs of odd length the CRC-32C of both headers and both region tables is recomputed
first, so mutations get past the checksums into the region entries, metadata and BAT. Every
input must open and read, or raise an ``LcowError`` (``CorruptImage``, ``NotSupported``,
``VhdxLogNotEmpty``).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import fuzz_main, guarded, instrumented, materialize, memfd

with instrumented():
    from lcow.formats.vhd.vhdx import (
        HEADER_OFFSETS,
        HEADER_SIZE,
        REGION_TABLE_OFFSETS,
        REGION_TABLE_SIZE,
        VhdxImage,
        crc32c_of,
    )

_FD = memfd("vhdx")
_PROBES = 8


def _fix_checksums(size: int) -> None:
    structures = [(off, HEADER_SIZE) for off in HEADER_OFFSETS]
    structures += [(off, REGION_TABLE_SIZE) for off in REGION_TABLE_OFFSETS]
    for offset, length in structures:
        if offset + length <= size:
            raw = os.pread(_FD, length, offset)
            os.pwrite(_FD, crc32c_of(raw).to_bytes(4, "little"), offset + 4)


@guarded
def check(data: bytes) -> None:
    size = materialize(data, _FD)
    if len(data) & 1:
        _fix_checksums(size)
    image = VhdxImage(_FD, name="fuzz.vhdx")
    size = image.size
    for i in range(min(image.block_count, _PROBES)):
        image.block_state(i)
    for k in range(_PROBES):
        offset = size * k // _PROBES
        length = min(1 << 16, size - offset)
        for _ in image.host_ranges(offset, length):
            pass
        image.pread(offset, length)


one_input = check

if __name__ == "__main__":
    fuzz_main(one_input)
