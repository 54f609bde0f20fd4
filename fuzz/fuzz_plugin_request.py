#!/usr/bin/env python3
"""Fuzz the graph-driver plugin's request decoding (:func:`lcow.plugin.requests.decode_request`).

The first input byte picks one of the protocol's methods (or, past the last, the method is the
first line of the input, Latin-1 decoded, e.g. ``GraphDriver.ApplyDiff?id=a&parent=b``); the
rest is the request body. Every input must decode to a request whose layer ids are single path
components, or raise ``BadRequest``/``UnknownMethod`` (``LcowError`` s).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import fuzz_main, guarded, instrumented

with instrumented():
    from lcow.plugin.requests import METHODS, decode_request
    from lcow.storage.dataroot import validate_id


@guarded
def check(data: bytes) -> None:
    if not data:
        return
    pick = data[0] % (len(METHODS) + 1)
    rest = data[1:]
    if pick < len(METHODS):
        method, body = METHODS[pick], rest
    else:
        line, _, body = rest.partition(b"\n")
        method = line.decode("latin-1")
    request = decode_request(method, body)
    for name in ("id", "parent"):
        value = getattr(request, name, None)
        if value is not None:
            assert validate_id(value) == value


one_input = check

if __name__ == "__main__":
    fuzz_main(one_input)
