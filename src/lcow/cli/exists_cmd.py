"""``lcow --root DIR exists ID``: the driver's Exists (SPEC §3).

Exit status 0 and ``true`` when the layer's folder exists (a folder without a disk counts);
exit status 4 (``NOT_FOUND``, as for every missing layer) and ``false`` when it does not, also
when the data root itself is missing. No error message is printed for a missing layer; the id is
taken whole (a warning says when other layers' ids start with it).
``--json``: ``{"Id", "Exists"}`` with the same statuses.
"""

from __future__ import annotations

import argparse

from lcow.cli._driver import add_whole_id, driver_if_root_exists, emit, warn_if_prefix
from lcow.cli.status import ExitStatus

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = "Exists: exit 0 and print 'true' if the layer exists, else exit 4 and print 'false'"


add_arguments = add_whole_id  # ``ID`` (whole) and ``--json``


def run(args: argparse.Namespace) -> int:
    """Run ``lcow exists``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK` if the layer exists, else :attr:`ExitStatus.NOT_FOUND`.
    """
    found = False
    if (driver := driver_if_root_exists(args)) is not None:
        found = driver.exists(args.id)
        if not found:
            warn_if_prefix(driver, args.id, "exists")
    emit(args, {"Id": args.id, "Exists": found}, "true" if found else "false")
    return ExitStatus.OK if found else ExitStatus.NOT_FOUND
