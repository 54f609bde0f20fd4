"""Every committed fuzz input replays cleanly: the seed corpora and the crash regressions.

Each file of ``fuzz/corpus/<harness>/`` and ``fuzz/regressions/<harness>/`` goes through the
harness's ``one_input`` in this process (no atheris needed): it must return, which means it
was handled or refused with an ``LcowError`` — never another exception. The regression files
are the inputs that once crashed lcow (see ``benchmarks/RELIABILITY.md``).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
HARNESSES = sorted(p.stem.removeprefix("fuzz_") for p in FUZZ.glob("fuzz_*.py"))


def _load(name: str) -> ModuleType:
    module_name = f"fuzz_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, FUZZ / f"{module_name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _inputs() -> list[object]:
    params: list[object] = []
    for name in HARNESSES:
        for kind in ("regressions", "corpus"):
            for path in sorted((FUZZ / kind / name).glob("*")):
                params.append(pytest.param(name, path, id=f"{name}/{kind}/{path.name}"))
    return params


def test_every_harness_has_seeds() -> None:
    assert set(HARNESSES) == {
        "tar_reader", "tarscan", "ext4_reader", "vhd_footer", "vhdx", "layerchain",
        "plugin_request",
    }  # fmt: skip
    for name in HARNESSES:
        assert any((FUZZ / "corpus" / name).iterdir()), f"no seeds for {name}"


@pytest.mark.parametrize(("harness", "path"), _inputs())
def test_replay(harness: str, path: Path) -> None:
    one_input: Callable[[bytes], None] = _load(harness).one_input
    one_input(path.read_bytes())
