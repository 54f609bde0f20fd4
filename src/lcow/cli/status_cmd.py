"""``lcow --root DIR status``: the driver's Status (SPEC §3).

Prints LCOW's ``[["LCOW", ""]]`` followed by lcow's own pairs (backend, mode, root, layers), one
``key: value`` line each. Like InitDriver it creates a missing data root (``cache/``,
``scratch/``). ``--json``: ``{"Status": [[key, value], ...]}``, the plugin's shape.
"""

from __future__ import annotations

import argparse

from lcow.cli._driver import add_json, emit, open_driver
from lcow.cli.status import ExitStatus

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = "Status: print the driver's status pairs (creates the data root like InitDriver)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``lcow status``.

    Args:
        parser: the command's parser.
    """
    add_json(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``lcow status``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    pairs = [[key, value] for key, value in open_driver(args, init=True).status()]
    width = max(len(key) for key, _ in pairs)
    lines = [f"{key + ':':<{width + 1}} {value}".rstrip() for key, value in pairs]
    emit(args, {"Status": pairs}, lines)
    return ExitStatus.OK
