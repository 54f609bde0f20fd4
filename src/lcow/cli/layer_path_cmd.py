"""``lcow --root DIR layer-path ID``: the driver's GetLayerPath (SPEC §3).

Prints ``<root>/<ID>``, the layer's folder, without checking that it exists (as LCOW does); the
data root must exist; so the id is taken whole (a warning says when other layers' ids start with
an unknown one). ``--json``: ``{"Id", "Path"}``.
"""

from __future__ import annotations

import argparse

from lcow.cli._driver import add_whole_id, emit, open_driver, warn_unless_layer
from lcow.cli.status import ExitStatus

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = "GetLayerPath: print the layer's folder"


add_arguments = add_whole_id  # ``ID`` (whole) and ``--json``


def run(args: argparse.Namespace) -> int:
    """Run ``lcow layer-path``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    driver = open_driver(args)
    path = driver.get_layer_path(args.id)
    warn_unless_layer(driver, args.id, "layer-path")
    emit(args, {"Id": args.id, "Path": path}, path)
    return ExitStatus.OK
