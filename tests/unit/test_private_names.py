"""No lcow module imports another module's private names (``from lcow.x import _y``): what two
modules share is public in one of them (e.g. ``lcow.backends.extract_rules``)."""

from __future__ import annotations

import ast
from pathlib import Path

import lcow

_PACKAGE = Path(lcow.__file__).parent


def _private_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lcow"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{path.relative_to(_PACKAGE)}: {node.module}.{alias.name}")
    return found


def test_no_private_cross_imports() -> None:
    found = [hit for path in sorted(_PACKAGE.rglob("*.py")) for hit in _private_imports(path)]
    assert found == []
