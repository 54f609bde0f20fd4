"""``lcow --root DIR metadata ID``: the driver's GetMetadata (SPEC §3).

Prints ``dir: <root>/<ID>`` (Docker shows the map as ``.GraphDriver.Data``); like LCOW it does
not check that the layer exists, but the data root must; so the id is taken whole (a warning says
when other layers' ids start with an unknown one). ``--json`` prints the map itself,
``{"dir": "<root>/<ID>"}``.
"""

from __future__ import annotations

import argparse

from lcow.cli._driver import add_whole_id, emit, open_driver, warn_unless_layer
from lcow.cli.status import ExitStatus

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = "GetMetadata: print the layer's metadata map ({'dir': <folder>})"


add_arguments = add_whole_id  # ``ID`` (whole) and ``--json``


def run(args: argparse.Namespace) -> int:
    """Run ``lcow metadata``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    driver = open_driver(args)
    meta = driver.get_metadata(args.id)
    warn_unless_layer(driver, args.id, "metadata")
    emit(args, meta, [f"{key}: {value}" for key, value in sorted(meta.items())])
    return ExitStatus.OK
