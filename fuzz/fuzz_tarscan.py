#!/usr/bin/env python3
"""Fuzz the C tar header scanner against the Python parser (a differential harness).

Every input is read as a tar twice, with ``lcow._tarscan`` and without it; the members'
fields, the error (type and message) and the bytes consumed must be identical. The input is
also split as an entry name by the C split and its Python twin, which must agree. A difference
raises ``AssertionError``: a finding. Without the extension built, inputs only go through the
Python code.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests.harness

from _common import fuzz_main, instrumented

with instrumented():
    from tests.harness.tarscan_diff import outcome_of_bytes, tarscan

    from lcow.convert.entrypath import split_path_py

_SCANNER = tarscan()


def one_input(data: bytes) -> None:
    python = outcome_of_bytes(data, None)
    split = split_path_py(data)
    if _SCANNER is not None:
        if _SCANNER.split_path(data) != split:
            raise AssertionError(f"C and Python name splits differ for {data!r}")
        native = outcome_of_bytes(data, _SCANNER)
        if native != python:
            raise AssertionError(f"C scanner and Python parser differ:\n{native}\n{python}")


if __name__ == "__main__":
    fuzz_main(one_input)
