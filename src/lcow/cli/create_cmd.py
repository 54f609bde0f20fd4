"""``lcow --root DIR create ID [--parent P]``: the driver's Create (SPEC §3).

Makes ``<root>/<ID>/`` and its ``layerchain.json``; no disk. Creates the data root if needed
(InitDriver). Prints the id (``--json``: ``{"Id", "Parent", "Dir"}``).
"""

from __future__ import annotations

import argparse

from lcow.cli._driver import add_id, add_json, add_parent, emit, open_driver
from lcow.cli.status import ExitStatus

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = "Create: make a layer folder and its layerchain.json (no disk yet)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``lcow create``.

    Args:
        parser: the command's parser.
    """
    add_id(parser, prefix=False, help="the new layer's id")
    add_parent(parser)
    add_json(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``lcow create``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    driver = open_driver(args, init=True)
    driver.create(args.id, args.parent)
    value = {"Id": args.id, "Parent": args.parent, "Dir": driver.get_layer_path(args.id)}
    emit(args, value, args.id)
    return ExitStatus.OK
