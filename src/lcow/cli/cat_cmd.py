"""``lcow --root DIR cat ID PATH``: a file of a layer's view, read through Get's union.

The path is resolved inside the view (symlinks followed, never leaving its root); upper layers
win, whiteouts and opaque directories hide what is below. Bytes go to stdout unchanged.
``--json``: ``{"Id", "Path", "Size", "Data"}`` with the content base64-encoded.
"""

from __future__ import annotations

import argparse
import base64
import sys

from lcow.cli._driver import add_id, add_json, emit, open_driver
from lcow.cli._output import write_all
from lcow.cli.status import ExitStatus

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = "print a file of a layer's view (the union of its chain)"

_CHUNK = 1 << 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``lcow cat``.

    Args:
        parser: the command's parser.
    """
    add_id(parser)
    parser.add_argument("path", metavar="PATH", help="absolute path inside the view")
    add_json(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``lcow cat``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    driver = open_driver(args)
    view = driver.get(args.id)
    try:
        with view.open(args.path) as stream:
            if args.json:
                data = stream.read()
                value = {
                    "Id": args.id,
                    "Path": args.path,
                    "Size": len(data),
                    "Data": base64.b64encode(data).decode("ascii"),
                }
                emit(args, value, None)
            else:
                sys.stdout.flush()
                while chunk := stream.read(_CHUNK):
                    write_all(sys.stdout.buffer, chunk)
    finally:
        driver.put(args.id)
    return ExitStatus.OK
