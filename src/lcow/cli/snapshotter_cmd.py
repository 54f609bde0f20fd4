"""``lcow snapshotter serve``: containerd's proxy snapshotter over a data root (issue 15).

containerd 1.6 finds it through its config::

    [proxy_plugins.lcow]
      type = "snapshot"
      address = "/run/lcow/snapshotter.sock"

and ``ctr images pull --snapshotter lcow`` / ``ctr run --snapshotter lcow`` then keep images
and containers as LCOW layers in ``--root``. Only the host backend serves containerd (its views
are host directories). Runs until SIGTERM or SIGINT; views containerd holds stay mounted for
the next snapshotter, which adopts them. Logs go to stderr, escaped.

With ``--containerd-address SOCK`` (containerd's own gRPC socket), a Prepare that names its
layer (the ``containerd.io/snapshot.ref`` target and the ``containerd.io/snapshot/cri.layer-digest``
labels CRI's pulls send) is served from the layer's blob in containerd's content store: the
blob converted in one pass and committed, answered AlreadyExists; and a Prepare for containerd's
unpacker without those labels (``ctr images pull``) has its layer converted from the blob the
image's manifest names while the differ unpacks, committed in the sandbox's place
(docs/containerd.md).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from lcow.cli._argtypes import add_log_level, positive_int
from lcow.cli._driver import root_path
from lcow.cli.status import ExitStatus

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = "serve containerd's snapshots API on a unix socket ('snapshotter serve')"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``lcow snapshotter serve`` and its options.

    Args:
        parser: the command's parser.
    """
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    serve = actions.add_parser(
        "serve",
        help="serve containerd's snapshots API until SIGTERM",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--address", metavar="SOCK", required=True, type=Path,
        help="the unix socket to listen on (containerd's proxy_plugins address)",
    )  # fmt: skip
    serve.add_argument(
        "--containerd-address", metavar="SOCK", type=Path, default=None,
        help="containerd's gRPC socket: convert layers from its content store at Prepare "
        "when the labels name the blob (the fast path; default: off)",
    )  # fmt: skip
    serve.add_argument(
        "--workers", type=positive_int, default=16,
        help="calls served at once (default 16)",
    )  # fmt: skip
    serve.add_argument(
        "--linger", metavar="SECONDS", type=_seconds, default=None,
        help="how long the storage daemon and the image layers' mounts stay after their last "
        "use, for the next container (default 30; 0 releases them at once)",
    )  # fmt: skip
    add_log_level(serve)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: not a number of seconds (0 or more)")
    return value


def _setup_logging(level_name: str) -> None:
    """One escaping handler on stderr for every record (gRPC's included)."""
    from lcow._util.escape import EscapingFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level_name.upper()))
    logging.captureWarnings(True)


def run(args: argparse.Namespace) -> int:
    """Run ``lcow snapshotter serve``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK` after SIGTERM/SIGINT; failures are raised for the CLI boundary.
    """
    from lcow.graphdriver.driver import SERVER_LINGER, Driver
    from lcow.snapshots.service import serve
    from lcow.snapshots.snapshotter import Snapshotter

    options = list(args.driver_options)
    if not any(o.lower().startswith("lcow.backend=") for o in options):
        options.append("lcow.backend=host")
    _setup_logging(args.log_level or ("debug" if args.verbose else "info"))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    driver = Driver(root_path(args), options)
    # No storage-daemon start and stop, no mounts of the image's layers, per container.
    driver.linger(SERVER_LINGER if args.linger is None else args.linger)
    if args.containerd_address is not None:
        from lcow.snapshots.content import ContentStore
        from lcow.snapshots.staging import StagingSnapshotter

        snapshotter: Snapshotter = StagingSnapshotter(driver, ContentStore(args.containerd_address))
    else:
        snapshotter = Snapshotter(driver)
    try:
        serve(snapshotter, args.address, workers=args.workers, stop=stop)
    finally:
        snapshotter.close()
        driver.stop_lingering()
    return ExitStatus.OK
