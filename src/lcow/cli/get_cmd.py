"""``lcow --root DIR get ID``: the driver's Get (SPEC §3, §4.8), for one command's lifetime.

Each ``lcow`` invocation is its own process and the driver counts Gets per process, so this
command takes a reference, opens the view, reports, and releases it (Put) before exiting. It
prints the view's path and the entries of its root. With the userspace backend the path is
LCOW's in-VM union path ``/tmp/<ID>-mount``: the view exists only inside the process (there is no
host directory to ``cd`` into; use ``cat``/``tree`` or the Python API). A backend that mounts
(host) prints a host directory, mounted only while the command runs.
``--json``: ``{"Id", "Dir", "Backend", "Entries": [names]}``.
"""

from __future__ import annotations

import argparse

from lcow.cli._driver import add_id, add_json, emit, open_driver
from lcow.cli.status import ExitStatus

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = "Get: open a layer's view, print its path and root entries, release it on exit"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``lcow get``.

    Args:
        parser: the command's parser.
    """
    add_id(parser)
    add_json(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``lcow get``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    driver = open_driver(args)
    view = driver.get(args.id)
    try:
        names = [entry.name for entry in view.readdir("/")]
        path = view.path
    finally:
        driver.put(args.id)
    backend = driver.backend.name
    value = {"Id": args.id, "Dir": path, "Backend": backend, "Entries": names}
    kind = (
        "in-process view, no host directory; released when lcow exits"
        if backend == "userspace"
        else "released when lcow exits"
    )
    listing = " ".join(names) if names else "(empty)"
    emit(args, value, [path, f"backend: {backend} ({kind})", f"/: {len(names)} entries: {listing}"])
    return ExitStatus.OK
