"""``lcow --root DIR remove ID``: the driver's Remove (SPEC §3).

Renames ``<ID>/`` to ``<ID>-removing/`` and deletes it. Unknown ids (and a missing data root)
succeed, as in LCOW; so the id is taken whole, never as a prefix (a retried ``remove a`` must
not delete ``a-b``), with a warning when other layers' ids start with an unknown one. Children
are not checked: removing a parent breaks its children's views.
Prints the id (``--json``: ``{"Id", "Existed"}``).
"""

from __future__ import annotations

import argparse

from lcow.cli._driver import add_whole_id, driver_if_root_exists, emit, warn_if_prefix
from lcow.cli.status import ExitStatus

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = "Remove: delete a layer (unknown ids succeed)"


add_arguments = add_whole_id  # ``ID`` (whole) and ``--json``


def run(args: argparse.Namespace) -> int:
    """Run ``lcow remove``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    existed = False
    if (driver := driver_if_root_exists(args)) is not None:
        existed = driver.exists(args.id)
        driver.remove(args.id)
        if not existed:
            warn_if_prefix(driver, args.id, "remove")
    emit(args, {"Id": args.id, "Existed": existed}, args.id)
    return ExitStatus.OK
