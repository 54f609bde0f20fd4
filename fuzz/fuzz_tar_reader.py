#!/usr/bin/env python3
"""Fuzz the tar reader and the converter behind it: bytes -> ``convert_stream`` -> ext4 image.

Plain input goes straight to :func:`lcow.convert.tar2ext4.convert_stream` from an in-memory
file (the ``copy_file_range`` path); input starting with gzip or zstd magic goes through
:func:`lcow.convert.input.open_tar_input` (decompression thread and pipe, the ``splice`` path).
Options alternate between raw and LCOW's (whiteouts converted, inline data) by the input's
length; the image is capped at 64 MiB. Every input must convert or raise an ``LcowError``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import fuzz_main, guarded, instrumented, memfd, reset

with instrumented():
    from lcow.convert import input as _input  # noqa: F401  (lazily imported by lcow)
    from lcow.convert.input import TarSource, open_tar_input
    from lcow.convert.options import ConvertOptions
    from lcow.convert.tar2ext4 import convert_stream
    from lcow.formats import verity as _verity  # noqa: F401
    from lcow.formats.vhd import footer as _footer  # noqa: F401

_IN = memfd("tar-in")
_OUT = memfd("ext4-out")
_OPTIONS = (
    ConvertOptions(max_size=64 << 20),
    ConvertOptions(max_size=64 << 20, convert_whiteouts=True, inline_data=True, vhd_footer=True),
)
_MAGICS = (b"\x1f\x8b", b"\x28\xb5\x2f\xfd")


@guarded
def check(data: bytes) -> None:
    reset(_IN, data)
    reset(_OUT)
    options = _OPTIONS[len(data) & 1]
    if data.startswith(_MAGICS):
        with open_tar_input(_IN) as source:
            convert_stream(source, _OUT, options)
    else:
        convert_stream(TarSource(_IN), _OUT, options)


one_input = check

if __name__ == "__main__":
    fuzz_main(one_input)
