"""``lcow --root DIR remove ID``: the driver's Remove (SPEC §3).

Renames ``<ID>/`` to ``<ID>-removing/`` and deletes it. Unknown ids (and a missing data root)
succeed, as in LCOW; so the id is taken whole, never as a prefix (a retried ``remove a`` must
not delete ``a-b``), with a warning when other layers' ids start with an unknown one. Children
are not checked: removing a parent breaks its children's views.
Prints the id (``--json``: ``{"Id", "Existed"}``).
"""

from __future__ import annotations

import argparse

from lcow.cli._driver import (
    add_id,
    add_json,
    check_options,
    emit,
    open_driver,
    root_exists,
    warn_if_prefix,
)
from lcow.cli.status import ExitStatus
from lcow.storage.dataroot import validate_id

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = "Remove: delete a layer (unknown ids succeed)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``lcow remove``.

    Args:
        parser: the command's parser.
    """
    add_id(parser, prefix=False)
    add_json(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``lcow remove``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    validate_id(args.id)
    check_options(args)
    existed = False
    if root_exists(args):
        driver = open_driver(args)
        existed = driver.exists(args.id)
        driver.remove(args.id)
        if not existed:
            warn_if_prefix(driver, args.id, "remove")
    emit(args, {"Id": args.id, "Existed": existed}, args.id)
    return ExitStatus.OK
