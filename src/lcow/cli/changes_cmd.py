"""``lcow --root DIR changes ID [--parent P]``: the driver's Changes (SPEC §3, §5.5-§5.7).

Prints one ``<C|A|D> /path`` line per change, sorted by path, as ``docker diff`` does;
``--json`` prints Docker's records ``[{"Path": "/x", "Kind": 0|1|2}]`` (Modify, Add, Delete).
"""

from __future__ import annotations

import argparse

from lcow.cli._driver import add_id, add_json, add_parent, emit, open_driver
from lcow.cli.status import ExitStatus

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = "Changes: print a layer's changes against a parent ('C|A|D /path')"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``lcow changes``.

    Args:
        parser: the command's parser.
    """
    add_id(parser)
    add_parent(parser)
    add_json(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``lcow changes``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    driver = open_driver(args)
    changes = sorted(driver.changes(args.id, args.parent), key=lambda c: c.path)
    value = [{"Path": c.path, "Kind": int(c.kind)} for c in changes]
    emit(args, value, [str(c) for c in changes])
    return ExitStatus.OK
