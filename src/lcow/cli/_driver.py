"""What the driver commands share: opening the data root, common flags and JSON/text output.

The top-level options (``--root``, ``--backend``, ``-o key=value``, ``--json``) are parsed by
:mod:`lcow.cli.main` and arrive on every command's namespace as ``root``, ``driver_options``
and ``json``. Each ``lcow`` invocation is its own process: the driver's reference counts (Get/Put)
live only as long as the command.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from lcow.cli._output import write_json, write_lines
from lcow.cli.status import UsageError
from lcow.errors import NotFound

if TYPE_CHECKING:
    from lcow.graphdriver.driver import Driver

__all__ = [
    "add_id",
    "add_json",
    "add_parent",
    "check_options",
    "emit",
    "open_driver",
    "root_exists",
    "root_path",
]


def add_json(parser: argparse.ArgumentParser) -> None:
    """``--json`` on the command itself (the top-level ``lcow --json`` works too)."""
    parser.add_argument(
        "--json", action="store_true", default=False, help="print the result as JSON"
    )


def add_id(parser: argparse.ArgumentParser, *, help: str = "layer id") -> None:
    """The positional ``ID``."""
    parser.add_argument("id", metavar="ID", help=help)


def add_parent(parser: argparse.ArgumentParser) -> None:
    """``--parent P`` (omitted: no parent, a base layer)."""
    parser.add_argument(
        "--parent", "-p", metavar="P", default=None, help="parent layer id (default: none)"
    )


def root_path(args: argparse.Namespace) -> Path:
    """The data root given by ``--root`` / ``LCOW_ROOT``."""
    root = getattr(args, "root", None)
    if not root:
        raise UsageError("no data root: give --root DIR (or set LCOW_ROOT)")
    return Path(root)


def root_exists(args: argparse.Namespace) -> bool:
    """Whether the data root directory exists."""
    return root_path(args).is_dir()


def check_options(args: argparse.Namespace) -> None:
    """Validate ``-o``/``--backend`` options without touching the data root.

    Raises:
        InvalidArgument: a bad option value or an unknown ``lcow.*`` key.
    """
    from lcow.graphdriver.options import parse_driver_options

    parse_driver_options(args.driver_options, root=str(root_path(args)))


def open_driver(args: argparse.Namespace, *, init: bool = False) -> Driver:
    """The driver over ``--root``.

    Args:
        args: the parsed command line.
        init: create a missing data root (InitDriver); otherwise a missing one is an error.

    Raises:
        NotFound: the data root does not exist and ``init`` is false.
        InvalidArgument: a bad driver option.
        NotSupported: the backend is not available.
    """
    from lcow.graphdriver.driver import Driver

    root = root_path(args)
    if not init:
        check_options(args)
        if not root.is_dir():
            raise NotFound(f"{root}: no such data root", subject=str(root))
    return Driver(root, args.driver_options)


def emit(args: argparse.Namespace, value: object, text: str | Iterable[str] | None) -> None:
    """Print ``value`` as JSON with ``--json``, else ``text`` (one line, or lines; ``None``:
    nothing), every line escaped (:mod:`lcow.cli._output`)."""
    if args.json:
        write_json(value)
    elif text is not None:
        write_lines(text)
