"""``lcow plugin serve``: run lcow as dockerd's graph-driver plugin (SPEC §9; docs/plugin.md).

Listens on ``/run/docker/plugins/<name>.sock`` (mode 0660) where dockerd started with
``--experimental --storage-driver <name>`` finds it. The layers go to Init's Home
(``<data-root>/<name>``); ``--root`` is the plugin's own state directory, where Init is kept so
that a restarted plugin serves a running dockerd without a new Init. Runs until SIGTERM or
SIGINT, then finishes running calls and removes its socket; views dockerd holds (running
containers) stay mounted for the next plugin to adopt (dockerd's Cleanup, or 'lcow --root HOME
--backend host cleanup', releases them). Logs go to stderr, one line per call with its request
id.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path
from types import TracebackType

from lcow.cli._argtypes import add_log_level, backend_name, positive_int
from lcow.cli.status import ExitStatus, UsageError

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = "serve Docker's graph-driver plugin protocol on /run/docker/plugins/NAME.sock"

_DEFAULT_BACKEND = "host"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``lcow plugin serve`` and its options.

    Args:
        parser: the command's parser.
    """
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    serve = actions.add_parser(
        "serve",
        help="serve the plugin protocol until SIGTERM",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    serve.add_argument(
        "--root", dest="state_root", metavar="DIR", default=None,
        help="the plugin's state directory, where Init is persisted (default: the global "
        "--root or $LCOW_ROOT)",
    )  # fmt: skip
    serve.add_argument(
        "--name", default="lcow",
        help="plugin name: dockerd's --storage-driver value and the socket's name (default lcow)",
    )  # fmt: skip
    serve.add_argument(
        "--socket", metavar="PATH", default=None,
        help="listen here instead of /run/docker/plugins/NAME.sock",
    )  # fmt: skip
    serve.add_argument(
        "--backend", dest="plugin_backend", type=backend_name, default=None,
        help=f"backend for views (default {_DEFAULT_BACKEND}; dockerd needs host directories); "
        "a '--storage-opt lcow.backend=B' from dockerd overrides it",
    )  # fmt: skip
    serve.add_argument(
        "--workers", type=positive_int, default=64,
        help="threads for metadata calls (Exists, Status, GetMetadata, Get, Put) and as many "
        "for other calls but ApplyDiff, i.e. such calls served at once (default 64)",
    )  # fmt: skip
    serve.add_argument(
        "--max-uploads", type=positive_int, default=None, metavar="N",
        help="ApplyDiff conversions at once; more wait without holding a thread (default: "
        "$LCOW_MAX_CONVERSIONS or the CPU count, at least 2)",
    )  # fmt: skip
    serve.add_argument(
        "--idle-timeout", type=_seconds, default=60.0, metavar="SECONDS",
        help="fail a request whose body sends nothing (or a Diff whose client takes nothing) "
        "for this long; every byte restarts the timer, so slow uploads are not cut "
        "(default 60)",
    )  # fmt: skip
    serve.add_argument(
        "--shutdown-timeout", type=_seconds, default=30.0, metavar="SECONDS",
        help="how long running calls may finish after SIGTERM (default 30)",
    )  # fmt: skip
    add_log_level(serve)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _setup_logging(level_name: str) -> None:
    """Log lines with the request id to stderr (journald adds time and unit).

    Log messages carry what clients send (URL paths, ids, tar entry names, error texts), so one
    handler with an escaping formatter takes every record — aiohttp's and asyncio's too, through
    the root logger — and what Python would print to stderr by itself (warnings, exceptions in
    threads or finalisers) is logged instead: a hostile name can neither forge a log line nor
    drive the terminal of whoever reads the log.
    """
    from lcow._util.escape import EscapingFormatter
    from lcow.plugin.server import RequestIdFilter

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        EscapingFormatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level_name.upper()))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.captureWarnings(True)
    threading.excepthook = _log_thread_exception
    sys.unraisablehook = _log_unraisable


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    _log_exception(f"uncaught exception in thread {name}", args.exc_type, args.exc_value,
                   args.exc_traceback)  # fmt: skip


def _log_unraisable(args: sys.UnraisableHookArgs) -> None:
    what = f"{args.err_msg or 'Exception ignored in'}: {args.object!r}"
    _log_exception(what, args.exc_type, args.exc_value, args.exc_traceback)


def _log_exception(
    what: str,
    exc_type: type[BaseException],
    exc: BaseException | None,
    tb: TracebackType | None,
) -> None:
    logging.getLogger("lcow.plugin").error(
        "%s: %s", what, exc_type.__name__, exc_info=(exc_type, exc, tb) if exc else None
    )


def run(args: argparse.Namespace) -> int:
    """Run ``lcow plugin serve``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK` after a clean shutdown; failures are raised for the CLI boundary.
    """
    from lcow.graphdriver.options import parse_driver_options
    from lcow.plugin.server import ServerConfig, socket_path_for
    from lcow.plugin.server import run as serve

    state_root = args.state_root or args.root
    if not state_root:
        raise UsageError("plugin serve: give --root DIR (the plugin's state directory)")
    defaults = list(args.driver_options)  # the global -o KEY=VALUE / --backend
    if args.plugin_backend is not None or not any(
        o.lower().startswith("lcow.backend=") for o in defaults
    ):
        defaults.append(f"lcow.backend={args.plugin_backend or _DEFAULT_BACKEND}")
    parse_driver_options(defaults, root=str(state_root))  # bad defaults fail now, not at Init
    socket_path = Path(args.socket) if args.socket else socket_path_for(args.name)
    _setup_logging(args.log_level or ("debug" if args.verbose else "info"))
    status = serve(
        ServerConfig(
            socket_path=socket_path,
            state_root=Path(state_root),
            defaults=defaults,
            workers=args.workers,
            max_uploads=args.max_uploads,
            idle_timeout=args.idle_timeout,
            shutdown_timeout=args.shutdown_timeout,
        )
    )
    return ExitStatus.OK if status == 0 else ExitStatus.ERROR
