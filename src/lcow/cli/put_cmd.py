"""``lcow --root DIR put ID``: the driver's Put (SPEC §3).

Put releases one Get. With the host backend, Gets are counted in the data root, so this
releases a view a ``lcow get`` (or any process on the same root) took, unmounting it at zero.
With the userspace backend every ``lcow`` invocation is a fresh process whose views died with
it, so Put finds no outstanding Get and is the documented no-op. Exit 0 also for unknown layers
or a missing data root, so the id is taken whole (a warning says when other layers' ids start
with an unknown one). Prints the id (``--json``: ``{"Id", "Released": bool}``).
"""

from __future__ import annotations

import argparse

from lcow.cli._driver import add_whole_id, driver_if_root_exists, emit, warn_unless_layer
from lcow.cli.status import ExitStatus

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = "Put: release a view taken by Get (host: counted in the data root; else a no-op)"


add_arguments = add_whole_id  # ``ID`` (whole) and ``--json``


def run(args: argparse.Namespace) -> int:
    """Run ``lcow put``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    released = False
    if (driver := driver_if_root_exists(args)) is not None:
        released = driver.view_count(args.id) > 0
        driver.put(args.id)
        warn_unless_layer(driver, args.id, "put")
    emit(args, {"Id": args.id, "Released": released}, args.id)
    return ExitStatus.OK
