"""Argument types the commands share: ``--backend``, positive counts, ``--log-level``.

Its own module, importing only :mod:`argparse`, so the command table (:mod:`lcow.cli.main`)
imports it without the driver's helpers and their imports: ``lcow tar2ext4`` loads no
data-root code.
"""

from __future__ import annotations

import argparse

__all__ = ["add_log_level", "backend_name", "count", "positive_int", "positive_seconds"]

_LEVELS = ("debug", "info", "warning", "error")


def backend_name(text: str) -> str:
    """``--backend B``: a backend's name, a built-in or an installed one. An argparse ``type``
    rather than ``choices``, so the installed backends are looked up only when it is given.

    Raises:
        argparse.ArgumentTypeError: no backend has that name (a usage error).
    """
    from lcow.backends.registry import installed_backends

    names = installed_backends().names()
    if text not in names:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r} (choose from {', '.join(names)})"
        )
    return text


def positive_int(text: str) -> int:
    """A count of at least 1 (``--workers N``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """An argparse type: a positive number of seconds (``--timeout``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def count(text: str) -> int:
    """An argparse type: a count, zero or more (``--retries``)."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a count: {text!r}")
    return int(text)


def add_log_level(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` of a long-running server command."""
    parser.add_argument(
        "--log-level", choices=_LEVELS, default=None,
        help="log level (default info; -v before the command: debug)",
    )  # fmt: skip
