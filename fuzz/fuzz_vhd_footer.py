#!/usr/bin/env python3
"""Fuzz the fixed-VHD footer parser and container detection.

The input is the whole file: its last 512 bytes are read as a footer (``read_footer``), the
container is detected (``detect_container``) and opened (``open_source``), and the first 512
bytes are parsed directly (``parse_footer``). For inputs of odd length the footer checksum is
recomputed first, so mutations reach the fields behind it. A valid footer must round-trip:
rebuilding one for its size gives a footer that parses to the same size. Failures must be
``LcowError``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import fuzz_main, guarded, instrumented, memfd, reset

with instrumented():
    from lcow.formats.source import detect_container, open_source
    from lcow.formats.vhd.footer import build_fixed_footer, parse_footer, read_footer

_FD = memfd("vhd")


def _with_checksum(data: bytes) -> bytes:
    if len(data) < 512:
        return data
    tail = bytearray(data[-512:])
    tail[64:68] = bytes(4)
    tail[64:68] = ((~sum(tail)) & 0xFFFFFFFF).to_bytes(4, "big")
    return data[:-512] + bytes(tail)


@guarded
def check(data: bytes) -> None:
    if len(data) & 1:
        data = _with_checksum(data)
    reset(_FD, data)
    footer = read_footer(_FD)
    if footer is not None and footer.current_size and footer.current_size % 512 == 0:
        again = parse_footer(build_fixed_footer(footer.current_size, unique_id=footer.unique_id))
        assert again.current_size == footer.current_size
        assert again.unique_id == footer.unique_id
    detect_container(_FD)
    with open_source(f"/proc/self/fd/{_FD}") as source:
        source.pread(0, min(source.size, 4096))
    parse_footer(data[:512])


one_input = check

if __name__ == "__main__":
    fuzz_main(one_input)
