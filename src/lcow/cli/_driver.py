"""What the driver commands share: opening the data root, common flags and JSON/text output.

The top-level options (``--root``, ``--backend``, ``-o key=value``, ``--json``) are parsed by
:mod:`lcow.cli.main` and arrive on every command's namespace as ``root``, ``driver_options``
and ``json``. Each ``lcow`` invocation is its own process: the driver's reference counts (Get/Put)
live only as long as the command.

Layer ids on the command line may be shortened as ``docker`` allows: an id that must name an
existing layer (the ``ID`` of the commands that read or change one, and every ``--parent``) is
taken as it is when such a layer exists, else as the unique prefix of one (the 12 characters
``lcow ls`` prints); a prefix of several is refused, listing them. :func:`open_driver` resolves
them. ``create``/``create-rw`` name a new id; ``exists``, ``remove`` and ``put``, for which a
missing layer is a normal answer, take the whole id: a guess there would turn "not there" into
another layer (a retried ``remove a`` deleting ``a-b``), so they only warn about a prefix.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from lcow.cli._output import write_json, write_lines
from lcow.cli.status import UsageError
from lcow.errors import InvalidArgument, NotFound
from lcow.storage.dataroot import is_valid_id, validate_id

if TYPE_CHECKING:
    from lcow.graphdriver.driver import Driver

__all__ = [
    "add_id",
    "add_json",
    "add_parent",
    "check_options",
    "emit",
    "layers_starting_with",
    "open_driver",
    "resolve_layer",
    "root_exists",
    "root_path",
    "warn_if_prefix",
]

#: How many candidates an ambiguous prefix's error names.
_SHOWN_CANDIDATES = 10

log = logging.getLogger(__name__)


def add_json(parser: argparse.ArgumentParser) -> None:
    """``--json`` on the command itself (the top-level ``lcow --json`` works too)."""
    parser.add_argument(
        "--json", action="store_true", default=False, help="print the result as JSON"
    )


def add_id(parser: argparse.ArgumentParser, *, prefix: bool = True, help: str = "") -> None:
    """The positional ``ID``: an existing layer, which a unique ``prefix`` of its id may name,
    or (``prefix=False``) an id taken whole."""
    default = "layer id, or a unique prefix of one" if prefix else "the whole layer id"
    parser.add_argument("id", metavar="ID", help=help or default)
    parser.set_defaults(id_prefix=prefix)


def add_parent(parser: argparse.ArgumentParser) -> None:
    """``--parent P`` (omitted: no parent, a base layer)."""
    parser.add_argument(
        "--parent", "-p", metavar="P", default=None,
        help="parent layer id, or a unique prefix of one (default: none)",
    )  # fmt: skip


def add_whole_id(parser: argparse.ArgumentParser) -> None:
    """The arguments of a command on one layer named by its whole id, never a prefix (a
    retried ``remove a`` must not delete ``a-b``): ``ID`` and ``--json``."""
    add_id(parser, prefix=False)
    add_json(parser)


def root_path(args: argparse.Namespace) -> Path:
    """The data root given by ``--root`` / ``LCOW_ROOT``."""
    root = getattr(args, "root", None)
    if not root:
        raise UsageError("no data root: give --root DIR (or set LCOW_ROOT)")
    return Path(root)


def root_exists(args: argparse.Namespace) -> bool:
    """Whether the data root directory exists."""
    return root_path(args).is_dir()


def check_options(args: argparse.Namespace) -> None:
    """Validate ``-o``/``--backend`` options without touching the data root.

    Raises:
        InvalidArgument: a bad option value or an unknown ``lcow.*`` key.
    """
    from lcow.graphdriver.options import parse_driver_options

    parse_driver_options(args.driver_options, root=str(root_path(args)))


def open_driver(args: argparse.Namespace, *, init: bool = False) -> Driver:
    """The driver over ``--root``.

    Args:
        args: the parsed command line.
        init: create a missing data root (InitDriver); otherwise a missing one is an error.

    Raises:
        NotFound: the data root does not exist and ``init`` is false.
        InvalidArgument: a bad driver option.
        NotSupported: the backend is not available.
    """
    from lcow.graphdriver.driver import Driver

    root = root_path(args)
    if not init:
        check_options(args)
        if not root.is_dir():
            raise NotFound(f"{root}: no such data root", subject=str(root))
    driver = Driver(root, args.driver_options)
    if getattr(args, "id", None) is not None and getattr(args, "id_prefix", False):
        args.id = resolve_layer(driver, args.id)
    if getattr(args, "parent", None) is not None:
        args.parent = resolve_layer(driver, args.parent)
    return driver


def resolve_layer(driver: Driver, text: str) -> str:
    """The id of the existing layer ``text`` names: itself if such a layer exists, else the one
    layer whose id starts with it; ``text`` unchanged when none does (or it is not a valid id),
    for the driver to report.

    Args:
        driver: the driver over the data root.
        text: an id or id prefix from the command line.

    Raises:
        InvalidArgument: ``text`` is the prefix of several layers' ids (named in the message).
    """
    if not is_valid_id(text) or driver.exists(text):
        return text
    matches = layers_starting_with(driver, text)
    if len(matches) <= 1:
        return matches[0] if matches else text
    raise InvalidArgument(
        f"{text}: ambiguous layer id prefix, {len(matches)} layers start with it: "
        f"{_listed(matches)}",
        subject=text,
    )


def layers_starting_with(driver: Driver, text: str) -> list[str]:
    """Ids of the layers whose id starts with ``text`` (and is longer), sorted."""
    return [i for i in driver.root.layer_ids() if i.startswith(text) and i != text]


def warn_if_prefix(driver: Driver, text: str, command: str) -> None:
    """Warn that ``text``, which names no layer, is the start of other layers' ids: ``command``
    (one that takes a whole id) did nothing with them."""
    matches = layers_starting_with(driver, text)
    if matches:
        log.warning(
            "%s: no layer has this id; %s takes a whole id, and %d start with it: %s",
            text, command, len(matches), _listed(matches),
        )  # fmt: skip


def driver_if_root_exists(args: argparse.Namespace) -> Driver | None:
    """For the commands that succeed on a missing data root, as LCOW's Put, Remove and Exists
    do: ``args.id`` and the options checked, then the driver, or ``None`` without a root."""
    validate_id(args.id)
    check_options(args)
    return open_driver(args) if root_exists(args) else None


def warn_unless_layer(driver: Driver, text: str, command: str) -> None:
    """:func:`warn_if_prefix`, when ``text`` names no layer."""
    if not driver.exists(text):
        warn_if_prefix(driver, text, command)


def _listed(ids: list[str]) -> str:
    more = len(ids) - _SHOWN_CANDIDATES
    return ", ".join(ids[:_SHOWN_CANDIDATES]) + (f" and {more} more" if more > 0 else "")


def emit(args: argparse.Namespace, value: object, text: str | Iterable[str] | None) -> None:
    """Print ``value`` as JSON with ``--json``, else ``text`` (one line, or lines; ``None``:
    nothing), every line escaped (:mod:`lcow.cli._output`)."""
    if args.json:
        write_json(value)
    elif text is not None:
        write_lines(text)
