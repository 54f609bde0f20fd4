"""Entry point of the ``lcow`` command: a lazy command table in the style of pip.

``lcow <command> [options]``. The table below names each command's module; a module is imported
only when its command runs, so ``lcow --help`` stays fast and a broken command cannot break the
others. Every command module provides::

    SUMMARY: str                                      # one line for ``lcow --help``
    def add_arguments(parser: argparse.ArgumentParser) -> None
    def run(args: argparse.Namespace) -> int          # an ExitStatus

Errors map to exit codes only here (:mod:`lcow.cli.status`) and print as ``lcow: <message>``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn, Protocol, cast

from lcow.cli.status import ExitStatus, UsageError, error_message, exit_status_for
from lcow.errors import LcowError

__all__ = ["COMMANDS", "CommandInfo", "main"]

PROG = "lcow"


@dataclass(frozen=True)
class CommandInfo:
    """A row of the command table.

    Attributes:
        module: dotted name of the module implementing the command.
        summary: one line shown by ``lcow --help``.
    """

    module: str
    summary: str


COMMANDS: dict[str, CommandInfo] = {
    "tar2ext4": CommandInfo(
        "lcow.cli.tar2ext4_cmd", "convert a tar stream into an ext4 layer image (hcsshim flags)"
    ),
    "vhd2tar": CommandInfo(
        "lcow.cli.vhd2tar_cmd", "export a layer image (layer.vhd, sandbox.vhdx, raw ext4) as a tar"
    ),
    "demo": CommandInfo(
        "lcow.cli.demo_cmd", "write the sample layer tars, convert them to layer.vhd files"
    ),
}


class _CommandModule(Protocol):
    SUMMARY: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`UsageError` instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, usage=self.format_usage())


def _top_parser() -> _Parser:
    width = max(len(name) for name in COMMANDS)
    epilog = "commands:\n" + "\n".join(
        f"  {name:<{width}}  {info.summary}" for name, info in COMMANDS.items()
    )
    parser = _Parser(
        prog=PROG,
        description="Docker's LCOW storage driver in Python: ext4 layer images and tools.",
        epilog=epilog + f"\n\nRun '{PROG} <command> --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (repeat for debug)"
    )
    parser.add_argument("command", metavar="<command>", help="one of: " + ", ".join(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _version() -> str:
    from lcow import __version__

    return __version__


def _load(name: str) -> _CommandModule:
    info = COMMANDS.get(name)
    if info is None:
        raise UsageError(
            f"unknown command {name!r} (commands: {', '.join(COMMANDS)})",
            usage=_top_parser().format_usage(),
        )
    return cast(_CommandModule, importlib.import_module(info.module))


def _parse(argv: Sequence[str]) -> tuple[_CommandModule, argparse.Namespace]:
    top = _top_parser().parse_args(argv)
    module = _load(top.command)
    parser = _Parser(
        prog=f"{PROG} {top.command}",
        description=module.SUMMARY,
        allow_abbrev=False,
    )
    module.add_arguments(parser)
    args = parser.parse_args(top.args)
    args.verbose = top.verbose
    return module, args


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lcow`` with ``argv`` (default ``sys.argv[1:]``) and return the exit status.

    Args:
        argv: arguments after the program name.

    Returns:
        An :class:`ExitStatus` value.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        module, args = _parse(argv)
    except SystemExit as done:  # --help / --version: argparse printed and asked to exit
        return int(done.code or 0) if isinstance(done.code, int | None) else ExitStatus.USAGE
    except UsageError as exc:
        sys.stderr.write(exc.usage)
        _report(exc)
        return ExitStatus.USAGE
    if args.verbose:
        logging.basicConfig(
            level=logging.DEBUG if args.verbose > 1 else logging.INFO,
            format=f"{PROG}: %(name)s: %(message)s",
        )
    try:
        return int(module.run(args))
    except (Exception, KeyboardInterrupt) as exc:  # the CLI boundary: every error becomes a status
        _report(exc)
        return exit_status_for(exc)


def _report(exc: BaseException) -> None:
    """Print ``lcow: <message>``; a bug (not an lcow or OS error) also gets its traceback."""
    expected = isinstance(exc, LcowError | OSError | KeyboardInterrupt)
    text = error_message(exc) if expected else f"internal error: {type(exc).__name__}: {exc}"
    try:
        if not expected:
            traceback.print_exception(exc, file=sys.stderr)
        sys.stderr.write(f"{PROG}: {text}\n")
        sys.stderr.flush()
    except OSError:  # stderr closed: nothing left to tell
        pass
