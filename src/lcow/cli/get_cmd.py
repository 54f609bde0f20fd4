"""``lcow --root DIR get ID``: the driver's Get (SPEC §3, §4.8).

Prints the view's path and the entries of its root. With the host backend the view is a
mounted host directory that outlives the command: its reference is counted in the data root and
released by ``lcow put ID`` (from any process). With the userspace backend the path is LCOW's
in-VM union path ``/tmp/<ID>-mount`` and the view exists only inside the process, so the
command releases it (Put) before exiting; use ``cat``/``tree`` or the Python API.
``--json``: ``{"Id", "Dir", "Backend", "Held", "Entries": [names]}``.
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
    held = driver.backend.persistent
    try:
        names = [entry.name for entry in view.readdir("/") if entry.name != "lost+found"]
        path = view.path
    except BaseException:
        driver.put(args.id)
        raise
    if not held:
        driver.put(args.id)
    backend = driver.backend.name
    value = {"Id": args.id, "Dir": path, "Backend": backend, "Held": held, "Entries": names}
    kind = (
        f"held until `lcow put {args.id}`"
        if held
        else "in-process view, no host directory; released when lcow exits"
    )
    listing = " ".join(names) if names else "(empty)"
    emit(args, value, [path, f"backend: {backend} ({kind})", f"/: {len(names)} entries: {listing}"])
    return ExitStatus.OK
