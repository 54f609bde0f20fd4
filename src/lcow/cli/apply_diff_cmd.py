"""``lcow --root DIR apply-diff ID [--parent P] [-i TAR|-]``: the driver's ApplyDiff (SPEC §3).

Converts a layer tar (plain, gzip or zstd; ``-`` or omitted: stdin) into ``<root>/<ID>/layer.vhd``
and prints ApplyDiff's result: the sum of the tar entries' sizes (moby's unpack size). The layer
must exist (``create`` first). A progress bar is drawn on stderr when it is a terminal.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from typing import BinaryIO

from lcow.cli._driver import add_id, add_json, add_parent, emit, open_driver
from lcow.cli._progress import CountingReader, byte_progress
from lcow.cli.status import ExitStatus, UsageError

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = "ApplyDiff: convert a tar (plain/gzip/zstd) into the layer's layer.vhd; prints its size"

_STDIN = "-"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``lcow apply-diff``.

    Args:
        parser: the command's parser.
    """
    add_id(parser)
    add_parent(parser)
    parser.add_argument(
        "-i", "--input", dest="input", default=_STDIN, metavar="TAR",
        help="the layer tar, plain/gzip/zstd ('-' or omitted: stdin)",
    )  # fmt: skip
    add_json(parser)


def _total(path: str) -> int | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def run(args: argparse.Namespace) -> int:
    """Run ``lcow apply-diff``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    if args.input == _STDIN and sys.stdin.isatty():
        raise UsageError("no input: give -i TAR or pipe a tar into stdin")
    driver = open_driver(args)
    source: str | int = sys.stdin.fileno() if args.input == _STDIN else os.fspath(args.input)
    total = None if args.input == _STDIN else _total(args.input)
    with byte_progress(f"apply-diff {args.id[:12]}", total) as bar:
        if bar is None:
            size = driver.apply_diff(args.id, args.parent, source)
        else:
            if isinstance(source, int):
                stream: BinaryIO = os.fdopen(source, "rb", closefd=False)
            else:
                stream = open(source, "rb")  # noqa: SIM115 - closed below
            try:
                reader = CountingReader(stream, bar.add)
                size = driver.apply_diff(args.id, args.parent, reader)  # type: ignore[arg-type]
            finally:
                stream.close()
    emit(args, {"Id": args.id, "Parent": args.parent, "Size": size}, str(size))
    return ExitStatus.OK
