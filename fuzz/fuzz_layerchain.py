#!/usr/bin/env python3
"""Fuzz the data root's JSON records: ``layerchain.json`` and ``lcow-layer.json``.

The input becomes both files of one layer folder; ``DataRoot.read_chain`` must return the
ancestor folders (each one path component inside the root) or raise an ``LcowError``, and
``DataRoot.read_meta`` must never fail (a damaged file reads as empty metadata).
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import fuzz_main, guarded, instrumented

with instrumented():
    from lcow.storage.dataroot import LAYER_CHAIN, LAYER_META, DataRoot

_ROOT = DataRoot(tempfile.mkdtemp(prefix="lcow-fuzz-root-"))
_ROOT.create()
(_ROOT.root / "layer").mkdir()
_CHAIN = _ROOT.root / "layer" / LAYER_CHAIN
_META = _ROOT.root / "layer" / LAYER_META


@guarded
def check(data: bytes) -> None:
    _CHAIN.write_bytes(data)
    _META.write_bytes(data)
    meta = _ROOT.read_meta("layer")
    assert isinstance(meta, dict)
    for folder in _ROOT.read_chain("layer"):
        assert folder.parent == _ROOT.root and folder.name not in ("", ".", ".."), folder


one_input = check

if __name__ == "__main__":
    fuzz_main(one_input)
