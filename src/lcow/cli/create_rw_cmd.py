"""``lcow --root DIR create-rw ID [--parent P] [--storage-opt k=v ...]``: CreateReadWrite.

Makes the layer folder and an empty ``sandbox.vhdx`` (SPEC §3): 20 GB by default from the cached
template, ``lcow.sandboxsize=<GB>`` (≥ 20) or Docker's ``size=<bytes|K|M|G>`` for other sizes.
Creates the data root if needed. Prints the id (``--json``: ``{"Id", "Parent", "Dir", "Disk"}``).
"""

from __future__ import annotations

import argparse

from lcow._util.escape import quoted
from lcow.cli._driver import add_id, add_json, add_parent, emit, open_driver
from lcow.cli.status import ExitStatus, UsageError
from lcow.storage.dataroot import SANDBOX_VHDX

__all__ = ["SUMMARY", "add_arguments", "parse_storage_opts", "run"]

SUMMARY = "CreateReadWrite: make a writable layer with an empty sandbox.vhdx"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``lcow create-rw``.

    Args:
        parser: the command's parser.
    """
    add_id(parser, prefix=False, help="the new layer's id")
    add_parent(parser)
    parser.add_argument(
        "--storage-opt", "-s", dest="storage_opt", action="append", default=[],
        metavar="KEY=VALUE",
        help="per-layer option: lcow.sandboxsize=GB (>= 20) or size=SIZE (repeatable)",
    )  # fmt: skip
    add_json(parser)


def parse_storage_opts(items: list[str]) -> dict[str, str]:
    """``key=value`` strings as a mapping (split at the first ``=``).

    Raises:
        UsageError: an item without ``=``.
    """
    opts: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"--storage-opt: expected KEY=VALUE, got {quoted(item)}")
        opts[key] = value
    return opts


def run(args: argparse.Namespace) -> int:
    """Run ``lcow create-rw``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    opts = parse_storage_opts(args.storage_opt)
    driver = open_driver(args, init=True)
    driver.create_read_write(args.id, args.parent, opts or None)
    folder = driver.get_layer_path(args.id)
    value = {
        "Id": args.id,
        "Parent": args.parent,
        "Dir": folder,
        "Disk": f"{folder}/{SANDBOX_VHDX}",
    }
    emit(args, value, args.id)
    return ExitStatus.OK
