"""Import structure: no import cycle among the modules of a package (issue 14).

The graph is read from the source with :mod:`ast`, not from ``sys.modules``: every ``import`` and
``from ... import`` counts, including those inside functions (a deferred import is still a
dependency, only hidden), except under ``if TYPE_CHECKING:`` (never run, the one place an upward
reference is allowed). Edges go from a module to the modules of the same package root it names;
a ``from package import name`` counts as an import of ``package.name`` when that is a module.
Importing a module also runs its parents' ``__init__``; those implicit edges are left out, as
import-linter's graph leaves them out, so a package's ``__init__`` only counts for what it
imports itself.

:func:`import_cycles` takes a package directory and names each cycle by its modules, so the same
check can cover ``lcow.formats`` today and the whole of ``lcow`` later.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest

import lcow

LCOW = Path(lcow.__file__).parent


def package_name(package_dir: Path) -> str:
    """The dotted name of the package in ``package_dir``, from the ``__init__.py`` files above."""
    parts = [package_dir.name]
    parent = package_dir.parent
    while (parent / "__init__.py").is_file():
        parts.append(parent.name)
        parent = parent.parent
    return ".".join(reversed(parts))


def _modules(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> source file of every module under ``package_dir``."""
    base = package_name(package_dir)
    out: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir).with_suffix("").parts
        if rel[-1] == "__init__":
            rel = rel[:-1]
        out[".".join((base, *rel))] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _import_nodes(tree: ast.AST, type_checking: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in ``tree`` at any depth, except, unless ``type_checking``, the
    bodies of ``if TYPE_CHECKING:`` (their ``else`` branches run, so they count)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif not type_checking and isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name a ``from`` import names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    anchor = module.split(".")
    if not is_package:
        anchor.pop()
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join([*anchor, node.module] if node.module else anchor)


def _within(name: str, modules: dict[str, Path]) -> str | None:
    """The deepest module of ``modules`` that ``name`` is or lies in (``pkg.mod.attr`` is
    ``pkg.mod``), or ``None`` outside them."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(
    package_dir: Path, *, type_checking: bool = False, depth: int | None = None
) -> dict[str, set[str]]:
    """Module -> the modules under ``package_dir`` it imports (see the module docstring).

    Args:
        package_dir: the directory of a package (with its ``__init__.py``).
        type_checking: count imports under ``if TYPE_CHECKING:`` too.
        depth: merge the modules into the packages ``depth`` levels below the root (1: the
            root's subpackages and modules), to check the layering between subpackages;
            ``None`` keeps every module.
    """
    modules = _modules(package_dir)
    keep = None if depth is None else package_name(package_dir).count(".") + 1 + depth

    def group(name: str) -> str:
        return name if keep is None else ".".join(name.split(".")[:keep])

    graph: dict[str, set[str]] = {group(name): set() for name in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_bytes(), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in _import_nodes(tree, type_checking):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                source = _resolve(module, is_package, node)
                targets = [f"{source}.{alias.name}" for alias in node.names]
            for target in targets:
                found = _within(target, modules)
                if found is not None and group(found) != group(module):
                    graph[group(module)].add(group(found))
    return graph


def _components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of ``graph`` (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                members = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.append(member)
                    if member == node:
                        break
                out.append(sorted(members))
    return out


def _shortest_cycle(graph: dict[str, set[str]], start: str, members: set[str]) -> list[str]:
    """A shortest cycle through ``start`` inside ``members`` (breadth first), closed."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph[node] & members):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if nxt not in came_from:
                came_from[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"{start}: not on a cycle")  # a component always closes


def import_cycles(
    package_dir: Path, *, type_checking: bool = False, depth: int | None = None
) -> list[str]:
    """Each import cycle among the modules under ``package_dir``, named by its modules.

    One line per strongly connected component of the import graph: a shortest cycle through
    its first module (``a -> b -> a``) and, when the component is larger, all its members.
    ``type_checking`` and ``depth`` are those of :func:`import_graph`.
    """
    graph = import_graph(package_dir, type_checking=type_checking, depth=depth)
    out = []
    for members in _components(graph):
        if len(members) < 2:
            continue  # a module importing itself is not recorded as an edge
        cycle = " -> ".join(_shortest_cycle(graph, members[0], set(members)))
        if len(set(cycle.split(" -> "))) < len(members):
            cycle += f" (component: {', '.join(members)})"
        out.append(cycle)
    return out


# -- the checks ------------------------------------------------------------------------------


def test_formats_has_no_import_cycle() -> None:
    assert import_cycles(LCOW / "formats") == []


def test_lcow_has_no_import_cycle_between_modules() -> None:
    """Deferred imports inside functions count: hiding a cycle in a function is still a cycle."""
    assert import_cycles(LCOW) == []


@pytest.mark.parametrize("depth", [1, 2])
def test_lcow_has_no_import_cycle_between_subpackages(depth: int) -> None:
    """``lcow.graphdriver`` and ``lcow.backends`` (depth 1), ``lcow.backends.vm`` and
    ``lcow.backends.host`` (depth 2): merged into packages, the graph stays acyclic."""
    assert import_cycles(LCOW, depth=depth) == []


def test_ext4_has_no_import_cycle_even_for_type_checking() -> None:
    """The reader's lower modules know the facade through a protocol, not by name."""
    assert import_cycles(LCOW / "formats" / "ext4", type_checking=True) == []


# -- the checker itself, on packages made for it -----------------------------------------------


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_checker_reports_cycles_by_module_names(tmp_path: Path) -> None:
    pkg = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg import b\n",
            "pkg/b.py": "def f():\n    from .sub.c import thing\n",  # deferred, still an edge
            "pkg/sub/__init__.py": "",
            "pkg/sub/c.py": "import pkg.a as a\n",
            "pkg/d.py": "from . import e\n",
            "pkg/e.py": "from pkg.d import x\n",
            "pkg/f.py": "import os\nimport pkg.sub\n",
        },
    )
    assert import_cycles(pkg) == [
        "pkg.a -> pkg.b -> pkg.sub.c -> pkg.a",
        "pkg.d -> pkg.e -> pkg.d",
    ]
    assert import_cycles(pkg / "sub") == []  # edges leaving the root do not count
    assert import_graph(pkg, depth=1)["pkg.sub"] == {"pkg.a"}
    assert import_cycles(pkg, depth=1) == [
        "pkg.a -> pkg.b -> pkg.sub -> pkg.a",
        "pkg.d -> pkg.e -> pkg.d",
    ]


def test_checker_skips_type_checking_imports_only(tmp_path: Path) -> None:
    pkg = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/low.py": (
                "from typing import TYPE_CHECKING\nimport typing\n"
                "if TYPE_CHECKING:\n    from pkg.high import H\n"
                "if typing.TYPE_CHECKING:\n    import pkg.high\n"
                "else:\n    from pkg import other\n"
            ),
            "pkg/high.py": "from pkg import low\n",
            "pkg/other.py": "from pkg.low import L\n",
        },
    )
    assert import_graph(pkg)["pkg.low"] == {"pkg.other"}
    assert import_cycles(pkg) == ["pkg.low -> pkg.other -> pkg.low"]
    assert import_graph(pkg, type_checking=True)["pkg.low"] == {"pkg.high", "pkg.other"}
    assert import_cycles(pkg, type_checking=True) == [
        "pkg.high -> pkg.low -> pkg.high (component: pkg.high, pkg.low, pkg.other)"
    ]


@pytest.mark.parametrize(
    ("files", "cycle"),
    [
        # a component larger than its shortest cycle lists all its members
        (
            {"a": "from pkg import b, c\n", "b": "from pkg import a\n", "c": "from pkg import b\n"},
            "pkg.a -> pkg.b -> pkg.a (component: pkg.a, pkg.b, pkg.c)",
        ),
        # a package's __init__ is the package's module
        ({"__init__": "from pkg.a import x\n", "a": "import pkg\n"}, "pkg -> pkg.a -> pkg"),
    ],
)
def test_checker_names_components(tmp_path: Path, files: dict[str, str], cycle: str) -> None:
    files.setdefault("__init__", "")
    pkg = _package(tmp_path, {f"pkg/{name}.py": text for name, text in files.items()})
    assert import_cycles(pkg) == [cycle]
