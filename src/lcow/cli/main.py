"""Entry point of the ``lcow`` command: a lazy command table in the style of pip.

``lcow [--root DIR] [--backend B] [-o key=value ...] [--json] <command> [options]``. The table
below names each command's module; a module is imported only when its command runs, so
``lcow --help`` stays fast and a broken command cannot break the others. The global options
reach every command as ``args.root`` (``--root``, else ``$LCOW_ROOT``), ``args.driver_options``
(the ``-o`` strings, then ``lcow.backend=B``) and ``args.json``; commands marked ``needs_root``
are refused without a data root, the tools (``tar2ext4``, ``vhd2tar``, ``demo``) never need one.
Every command module provides::

    SUMMARY: str                                      # one line for ``lcow --help``
    def add_arguments(parser: argparse.ArgumentParser) -> None
    def run(args: argparse.Namespace) -> int          # an ExitStatus

Errors map to exit codes only here (:mod:`lcow.cli.status`) and print as one line
``lcow: <message>``, escaped with :func:`lcow._util.escape.printable` (a message names tar entries,
paths and ids, which may hold newlines and terminal escapes); log records go to stderr through
:class:`lcow._util.escape.EscapingFormatter`. A reader that goes away early (``lcow ls | head``)
ends the command quietly with status 141. Global options go before the command; one written
after it is refused with a hint that shows where it goes.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn, Protocol, cast

from lcow._util.escape import EscapingFormatter, printable
from lcow.cli._argtypes import backend_name
from lcow.cli._output import logging_to_stderr, reader_gone
from lcow.cli.status import ExitStatus, UsageError, error_message, exit_status_for
from lcow.errors import LcowError

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

__all__ = ["COMMANDS", "CommandInfo", "main"]

PROG = "lcow"


@dataclass(frozen=True)
class CommandInfo:
    """A row of the command table.

    Attributes:
        module: dotted name of the module implementing the command.
        summary: one line shown by ``lcow --help``.
        needs_root: the command works on a data root (``--root DIR`` or ``$LCOW_ROOT``).
    """

    module: str
    summary: str
    needs_root: bool = False


def _driver(module: str, summary: str) -> CommandInfo:
    return CommandInfo(f"lcow.cli.{module}", summary, needs_root=True)


COMMANDS: dict[str, CommandInfo] = {
    "tar2ext4": CommandInfo(
        "lcow.cli.tar2ext4_cmd", "convert a tar stream into an ext4 layer image (hcsshim flags)"
    ),
    "vhd2tar": CommandInfo(
        "lcow.cli.vhd2tar_cmd", "export a layer image (layer.vhd, sandbox.vhdx, raw ext4) as a tar"
    ),
    "demo": CommandInfo(
        "lcow.cli.demo_cmd",
        "the main job on generated samples: convert layers, import an image, inspect, export",
    ),
    "plugin": CommandInfo(
        "lcow.cli.plugin_cmd", "serve Docker's graph-driver plugin protocol ('plugin serve')"
    ),
    "snapshotter": _driver(
        "snapshotter_cmd", "serve containerd's snapshots API on a unix socket ('snapshotter serve')"
    ),
    "uvm": CommandInfo("lcow.cli.uvm_cmd", "vm backend assets: 'uvm build' (kernel, initramfs)"),
    # the driver's operations (SPEC §3), one per subcommand
    "create": _driver("create_cmd", "Create: a layer folder and its layerchain.json"),
    "create-rw": _driver("create_rw_cmd", "CreateReadWrite: a layer with an empty sandbox.vhdx"),
    "apply-diff": _driver("apply_diff_cmd", "ApplyDiff: a tar (plain/gzip/zstd) into layer.vhd"),
    "diff": _driver("diff_cmd", "Diff: a layer's changes against a parent, as a tar"),
    "changes": _driver("changes_cmd", "Changes: a layer's changes as 'C|A|D /path' lines"),
    "diff-size": _driver("diff_size_cmd", "DiffSize: bytes of a layer's changed content"),
    "exists": _driver("exists_cmd", "Exists: exit 0 if the layer exists, 4 if not"),
    "get": _driver("get_cmd", "Get: open a layer's view, print its path and top entries"),
    "put": _driver("put_cmd", "Put: release a view (a no-op in a fresh process)"),
    "layer-path": _driver("layer_path_cmd", "GetLayerPath: the layer's folder"),
    "metadata": _driver("metadata_cmd", "GetMetadata: the layer's metadata ({'dir': ...})"),
    "remove": _driver("remove_cmd", "Remove: delete a layer (unknown ids succeed)"),
    "cleanup": _driver("cleanup_cmd", "Cleanup: sweep '-removing' folders and temporaries"),
    "status": _driver("status_cmd", "Status: the driver's status pairs (initialises the root)"),
    # images and reading through views
    "import": _driver("import_cmd", "import a docker-save or OCI image tarball, by chain IDs"),
    "pull": _driver("pull_cmd", "pull an image from a registry, layers by chain IDs"),
    "images": _driver("images_cmd", "list the images pulled into the data root"),
    "publish": _driver("publish_cmd", "push a pulled image's converted layers to its registry"),
    "ls": _driver("ls_cmd", "list layers: parent, kind of disk, sizes"),
    "cat": _driver("cat_cmd", "print a file of a layer's view (the union of its chain)"),
    "tree": _driver("tree_cmd", "print the tree of a layer's view under a path"),
}


class _CommandModule(Protocol):
    SUMMARY: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`UsageError` instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, usage=self.format_usage())

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        # argparse ignores write errors; a closed pipe must reach main() like any other output's
        if message:
            (file or sys.stderr).write(message)


def _top_parser() -> _Parser:
    width = max(len(name) for name in COMMANDS)

    def rows(needs_root: bool) -> str:
        return "\n".join(
            f"  {name:<{width}}  {info.summary}"
            for name, info in COMMANDS.items()
            if info.needs_root == needs_root
        )

    epilog = (
        f"tools:\n{rows(False)}\n\n"
        f"driver and image commands (need --root DIR or $LCOW_ROOT):\n{rows(True)}"
    )
    parser = _Parser(
        prog=PROG,
        usage="%(prog)s [-h] [--version] [-v] [--root DIR] [--backend B] [-o KEY=VALUE] [--json]\n"
        "            <command> [ARGS]",
        description="Docker's LCOW storage driver in Python: ext4 layer images, the graph "
        "driver's operations, image import.",
        epilog=epilog + f"\n\nRun '{PROG} <command> --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (repeat for debug)"
    )
    parser.add_argument(
        "--root", metavar="DIR", default=None,
        help="the driver's data root (default: $LCOW_ROOT)",
    )  # fmt: skip
    parser.add_argument(
        "--backend", type=backend_name, default=None,
        metavar="B", help="backend for views: userspace, host, vm or an installed one (default "
        "userspace); same as -o lcow.backend=B",
    )  # fmt: skip
    parser.add_argument(
        "-o", "--opt", dest="driver_options", action="append", default=[], type=_option,
        metavar="KEY=VALUE", help="a driver option (SPEC §2), e.g. -o lcow.globalmode=true",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print every command's result as JSON")
    parser.add_argument(
        "command", metavar="<command>", nargs="?", help="the command to run (listed below)"
    )
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _option(text: str) -> str:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return text


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
    top_parser = _top_parser()
    top = top_parser.parse_args(argv)
    if top.command is None:  # bare `lcow` (or only global options): say what there is to run
        raise UsageError("no command given", usage=top_parser.format_help() + "\n")
    module = _load(top.command)
    parser = _Parser(
        prog=f"{PROG} {top.command}",
        description=module.SUMMARY,
        allow_abbrev=False,
    )
    module.add_arguments(parser)
    try:
        args = parser.parse_args(top.args)
    except UsageError as exc:
        hint = _misplaced_global(top_parser, parser, list(argv), top.command, top.args)
        if hint is None:
            raise
        raise UsageError(hint, usage=exc.usage) from exc
    args.verbose = top.verbose
    args.command = top.command
    args.root = top.root or os.environ.get("LCOW_ROOT") or None
    args.driver_options = list(top.driver_options)
    if top.backend is not None:
        args.driver_options.append(f"lcow.backend={top.backend}")
    args.json = bool(top.json or getattr(args, "json", False))
    if COMMANDS[top.command].needs_root and args.root is None:
        raise UsageError(
            f"'{top.command}' works on a data root: give --root DIR before the command "
            "(or set LCOW_ROOT)",
            usage=_top_parser().format_usage(),
        )
    return module, args


def _misplaced_global(
    top: argparse.ArgumentParser,
    command: argparse.ArgumentParser,
    argv: list[str],
    name: str,
    rest: list[str],
) -> str | None:
    """The hint for a global option written after the command (``lcow ls --root R``), which
    the command's parser does not know; ``None`` when there is none.

    Global options stay before the command: after it, ``-o`` already means a command's own
    output file (``diff``, ``tar2ext4``, ``vhd2tar``), so one position for them is the rule that
    cannot be misread.
    """
    own = _flags_of(command)
    globals_ = {
        flag: action.nargs != 0
        for action in top._actions
        for flag in action.option_strings
        if flag not in ("-h", "--help") and flag not in own
    }
    moved: list[str] = []
    kept: list[str] = []
    first: str | None = None
    tokens = iter(rest)
    for token in tokens:
        if token == "--":
            kept += [token, *tokens]
            break
        flag = _flag_of(token, globals_)
        if flag is None:
            kept.append(token)
            continue
        first = first or flag
        moved.append(token)
        if globals_[flag] and token == flag:  # the value is the next token
            moved += [next(tokens, "VALUE")]
    if first is None:
        return None
    import shlex  # only for this hint

    before = argv[: len(argv) - len(rest) - 1]
    fixed = shlex.join([PROG, *before, *moved, name, *kept])
    return f"{first} is a global option: put it before the command ({fixed})"


def _flags_of(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string a command knows, its sub-commands' included (``plugin serve``)."""
    flags = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _flags_of(sub)
    return flags


def _flag_of(token: str, flags: dict[str, bool]) -> str | None:
    """The global flag ``token`` spells: ``--root``, ``--root=R``, ``-oKEY=V``, ``-vv``."""
    if token in flags:
        return token
    if token.startswith("--"):
        flag = token.partition("=")[0]
        return flag if flags.get(flag) else None
    short = token[:2]
    if token.startswith("-") and short in flags:
        takes_value = flags[short]
        if takes_value or set(token[1:]) == {short[1]}:  # -oK=V, or -vv
            return short
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lcow`` with ``argv`` (default ``sys.argv[1:]``) and return the exit status.

    Args:
        argv: arguments after the program name.

    Returns:
        An :class:`ExitStatus` value.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    _tolerate_unencodable_output()
    try:
        return _main(argv)
    except BaseException as exc:  # the CLI boundary: every error becomes a status
        if reader_gone(exc):  # `lcow ... | head`: the reader has all it wanted
            return ExitStatus.BROKEN_PIPE
        if isinstance(exc, SystemExit | GeneratorExit):
            raise
        _report(exc)
        return exit_status_for(exc)


def _main(argv: list[str]) -> int:
    try:
        module, args = _parse(argv)
    except SystemExit as done:  # --help / --version: argparse printed and asked to exit
        sys.stdout.flush()
        return int(done.code or 0) if isinstance(done.code, int | None) else ExitStatus.USAGE
    except UsageError as exc:
        sys.stderr.write(exc.usage)
        _report(exc)
        return ExitStatus.USAGE
    with logging_to_stderr(args.verbose):
        status = int(module.run(args))
        sys.stdout.flush()  # a closed pipe is found here, not by the interpreter's last flush
    return status


def _tolerate_unencodable_output() -> None:
    """Write characters the output encoding lacks (a box-drawing character of ``tree`` under an
    ASCII locale) as backslash escapes instead of failing the command."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(Exception):
                reconfigure(errors="backslashreplace")


def _report(exc: BaseException) -> None:
    """Print ``lcow: <message>``, escaped to one line; a bug (not an lcow or OS error) also gets
    its traceback, the exception's own text escaped."""
    expected = isinstance(exc, LcowError | OSError | KeyboardInterrupt)
    text = error_message(exc) if expected else f"internal error: {type(exc).__name__}: {exc}"
    try:
        if not expected:
            trace = EscapingFormatter().formatException((type(exc), exc, exc.__traceback__))
            sys.stderr.write(trace + "\n")
        sys.stderr.write(f"{PROG}: {printable(text)}\n")
        sys.stderr.flush()
    except OSError:  # stderr closed: nothing left to tell
        pass
