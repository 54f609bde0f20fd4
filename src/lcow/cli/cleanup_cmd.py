"""``lcow --root DIR cleanup``: the driver's Cleanup (SPEC §3).

Deletes every ``*-removing`` folder and the temporary files an interrupted write left, and
releases the backend's views. Never fails for what it sweeps; a missing data root is fine.
Prints nothing (``--json``: ``{"Root", "Swept": [names]}``).
"""

from __future__ import annotations

import argparse

from lcow.cli._driver import add_json, check_options, emit, open_driver, root_exists, root_path
from lcow.cli.status import ExitStatus
from lcow.storage.dataroot import REMOVING_SUFFIX

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = "Cleanup: sweep '-removing' folders and temporary files (never fails)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``lcow cleanup``.

    Args:
        parser: the command's parser.
    """
    add_json(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``lcow cleanup``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK`.
    """
    check_options(args)
    root = root_path(args)
    swept: list[str] = []
    if root_exists(args):
        before = {p.name for p in root.iterdir() if p.name.endswith(REMOVING_SUFFIX)}
        open_driver(args).cleanup()
        after = {p.name for p in root.iterdir() if p.name.endswith(REMOVING_SUFFIX)}
        swept = sorted(before - after)
    emit(args, {"Root": str(root), "Swept": swept}, None)
    return ExitStatus.OK
