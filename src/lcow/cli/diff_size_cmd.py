"""``lcow --root DIR diff-size ID [--parent P]``: the driver's DiffSize (SPEC §3, §5.8).

Prints the bytes of changed content (``--json``: ``{"Id", "Parent", "Size"}``).
"""

from __future__ import annotations

import argparse

from lcow.cli._driver import add_id, add_json, add_parent, emit, open_driver
from lcow.cli.status import ExitStatus

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = "DiffSize: print the bytes of a layer's changed content against a parent"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``lcow diff-size``.

    Args:
        parser: the command's parser.
    """
    add_id(parser)
    add_parent(parser)
    add_json(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``lcow diff-size``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    size = open_driver(args).diff_size(args.id, args.parent)
    emit(args, {"Id": args.id, "Parent": args.parent, "Size": size}, str(size))
    return ExitStatus.OK
