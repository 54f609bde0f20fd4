"""``lcow --root DIR put ID``: the driver's Put (SPEC §3).

Put releases a reference a Get of the same process took. Every ``lcow`` invocation is a fresh
process (``lcow get`` already released its own reference), so here Put has no outstanding Get
and is the documented no-op: exit 0, also for unknown layers or a missing data root. It prints
the id (``--json``: ``{"Id", "Released": false}``). Long-lived views belong to the Python API
(``Driver.get``/``Driver.put``) or the plugin.
"""

from __future__ import annotations

import argparse

from lcow.cli._driver import add_id, add_json, check_options, emit, open_driver, root_exists
from lcow.cli.status import ExitStatus
from lcow.storage.dataroot import validate_id

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = "Put: release a view taken by Get (no outstanding Get in a fresh process: a no-op)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``lcow put``.

    Args:
        parser: the command's parser.
    """
    add_id(parser)
    add_json(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``lcow put``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    validate_id(args.id)
    check_options(args)
    released = False
    if root_exists(args):
        driver = open_driver(args)
        released = driver.view_count(args.id) > 0
        driver.put(args.id)
    emit(args, {"Id": args.id, "Released": released}, args.id)
    return ExitStatus.OK
