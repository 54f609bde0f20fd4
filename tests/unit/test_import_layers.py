"""Imports go one way: backends never load the graph driver, the driver no concrete backend.

Two views: a fresh interpreter imports one module and ``sys.modules`` shows what that really
loads; and every import statement of a package's source, those inside functions included (which
run only when called), is read with :mod:`ast`.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import lcow

CONCRETE_BACKENDS = ("lcow.backends.host", "lcow.backends.userspace", "lcow.backends.vm")
SOURCE = Path(lcow.__file__).parent


def _loaded_by(module: str) -> list[str]:
    """The ``lcow`` modules a fresh interpreter has after ``import <module>``."""
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('lcow'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    loaded: list[str] = json.loads(proc.stdout)
    return loaded


def _within(modules: list[str], package: str) -> list[str]:
    return [m for m in modules if m == package or m.startswith(package + ".")]


@pytest.mark.parametrize(
    "module",
    [
        *CONCRETE_BACKENDS,
        "lcow.backends.host.factory",
        "lcow.backends.userspace.factory",
        "lcow.backends.vm.factory",
        "lcow.backends.vm.assets",
        "lcow.backends.vm.svm",
        "lcow.backends.registry",
        "lcow.sandboxes",
    ],
)
def test_backends_and_sandboxes_do_not_load_the_graph_driver(module: str) -> None:
    assert _within(_loaded_by(module), "lcow.graphdriver") == []


@pytest.mark.parametrize("module", ["lcow.graphdriver.driver", "lcow.backends.registry"])
def test_the_driver_and_the_registry_load_no_concrete_backend(module: str) -> None:
    loaded = _loaded_by(module)
    assert [m for b in CONCRETE_BACKENDS for m in _within(loaded, b)] == []


def test_sandboxes_load_neither_driver_nor_backends() -> None:
    loaded = _loaded_by("lcow.sandboxes")
    assert _within(loaded, "lcow.backends") == [] and _within(loaded, "lcow.graphdriver") == []


def _imported_names(package: str) -> dict[str, list[str]]:
    """File (relative to the ``lcow`` package) → every module its import statements name."""
    found: dict[str, list[str]] = {}
    folder = SOURCE.joinpath(*package.split(".")[1:])
    for path in sorted(folder.rglob("*.py")):
        names: list[str] = []
        for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
            if isinstance(node, ast.Import):
                names.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.extend([node.module, *(f"{node.module}.{a.name}" for a in node.names)])
        found[str(path.relative_to(SOURCE))] = names
    return found


def _offending(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path}: {name}"
        for path, names in _imported_names(package).items()
        for name in names
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


def test_no_graphdriver_source_imports_a_concrete_backend() -> None:
    assert _offending("lcow.graphdriver", CONCRETE_BACKENDS) == []


def test_no_backend_source_imports_the_graph_driver_or_above() -> None:
    above = ("lcow.graphdriver", "lcow.plugin", "lcow.cli", "lcow.images")
    assert _offending("lcow.backends", above) == []


def test_the_registry_source_imports_no_concrete_backend() -> None:
    names = _imported_names("lcow.backends")["backends/registry.py"]
    assert [n for n in names if n.startswith(CONCRETE_BACKENDS)] == []


def test_no_sandbox_source_imports_the_driver_or_a_backend() -> None:
    assert _offending("lcow.sandboxes", ("lcow.graphdriver", "lcow.backends")) == []
