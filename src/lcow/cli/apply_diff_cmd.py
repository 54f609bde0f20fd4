"""``lcow --root DIR apply-diff ID [TAR|-] [--parent P]``: the driver's ApplyDiff (SPEC §3).

Converts a layer tar (plain, gzip or zstd; given as ``TAR`` or ``-i TAR``; ``-`` or omitted:
stdin) into ``<root>/<ID>/layer.vhd``
and prints ApplyDiff's result: the sum of the tar entries' sizes (moby's unpack size). The layer
must exist (``create`` first). A progress bar is drawn on stderr when it is a terminal.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from typing import BinaryIO

from lcow._util.escape import quoted
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
    parser.add_argument(
        "tar", nargs="?", metavar="TAR",
        help="the layer tar, plain/gzip/zstd ('-' or omitted: stdin)",
    )  # fmt: skip
    add_parent(parser)
    parser.add_argument(
        "-i", "--input", dest="input", metavar="TAR", help="the layer tar, as TAR (either one)"
    )  # fmt: skip
    add_json(parser)


def _input(args: argparse.Namespace) -> str:
    """The tar named once, as ``TAR`` or ``-i TAR`` (``-``: stdin, also when neither is)."""
    if args.tar is not None and args.input is not None:
        raise UsageError(f"the tar is given twice: {quoted(args.tar)} and -i {quoted(args.input)}")
    given: str | None = args.tar if args.tar is not None else args.input
    return _STDIN if given is None else given


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
    tar = _input(args)
    if tar == _STDIN and sys.stdin.isatty():
        raise UsageError("no input: give TAR or pipe a tar into stdin")
    driver = open_driver(args)
    source: str | int = sys.stdin.fileno() if tar == _STDIN else tar
    total = None if tar == _STDIN else _total(tar)
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
