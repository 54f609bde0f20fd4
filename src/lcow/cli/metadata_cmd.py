"""``lcow --root DIR metadata ID``: the driver's GetMetadata (SPEC §3).

Prints ``dir: <root>/<ID>`` (Docker shows the map as ``.GraphDriver.Data``); like LCOW it does
not check that the layer exists, but the data root must; so the id is taken whole (a warning says
when other layers' ids start with an unknown one). ``--json`` prints the map itself,
``{"dir": "<root>/<ID>"}``.
"""

from __future__ import annotations

import argparse

from lcow.cli._driver import add_id, add_json, emit, open_driver, warn_if_prefix
from lcow.cli.status import ExitStatus

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = "GetMetadata: print the layer's metadata map ({'dir': <folder>})"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``lcow metadata``.

    Args:
        parser: the command's parser.
    """
    add_id(parser, prefix=False)
    add_json(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``lcow metadata``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    driver = open_driver(args)
    meta = driver.get_metadata(args.id)
    if not driver.exists(args.id):
        warn_if_prefix(driver, args.id, "metadata")
    emit(args, meta, [f"{key}: {value}" for key, value in sorted(meta.items())])
    return ExitStatus.OK
