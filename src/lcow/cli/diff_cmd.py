"""``lcow --root DIR diff ID [--parent P] [-o OUT|-]``: the driver's Diff (SPEC §3).

Writes the tar of the layer's changes: against its direct parent (or none, for a base) its own
content with AUFS whiteouts; against another parent the comparison of the two views. ``-o OUT``
writes a file (temporary name, then renamed); ``-`` or omitted writes to stdout, which must not be
a terminal. ``--json`` (with ``-o OUT`` only) prints ``{"Id", "Parent", "Output", "Bytes"}``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable

from lcow._util.atomic import atomic_output
from lcow.cli._driver import add_id, add_json, add_parent, emit, open_driver
from lcow.cli._output import write_all
from lcow.cli.status import ExitStatus, UsageError

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = "Diff: write a layer's changes against a parent as a tar"

_STDOUT = "-"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``lcow diff``.

    Args:
        parser: the command's parser.
    """
    add_id(parser)
    add_parent(parser)
    parser.add_argument(
        "-o", "--output", dest="output", default=_STDOUT, metavar="OUT",
        help="where to write the tar ('-' or omitted: stdout)",
    )  # fmt: skip
    add_json(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``lcow diff``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    to_stdout = args.output == _STDOUT
    if to_stdout and args.json:
        raise UsageError("--json needs -o OUT: the tar itself goes to stdout otherwise")
    if to_stdout and sys.stdout.isatty():
        raise UsageError("refusing to write a tar to a terminal: give -o OUT or a pipe")
    driver = open_driver(args)
    if to_stdout:
        sys.stdout.flush()
        try:
            out: int | Callable[[bytes], object] = sys.stdout.fileno()
        except (OSError, ValueError):  # io.UnsupportedOperation: a replaced sys.stdout
            buffer = sys.stdout.buffer
            out = functools.partial(write_all, buffer)
        driver.write_diff(args.id, args.parent, out)
        sys.stdout.flush()
        return ExitStatus.OK
    with atomic_output(args.output) as fd:
        driver.write_diff(args.id, args.parent, fd)
        written = os.lseek(fd, 0, os.SEEK_CUR)
    value = {"Id": args.id, "Parent": args.parent, "Output": args.output, "Bytes": written}
    emit(args, value, None)
    return ExitStatus.OK
