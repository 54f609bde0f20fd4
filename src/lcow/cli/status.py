"""Named exit codes of the ``lcow`` command and the one place errors map to them (STYLE §5).

The command line is a boundary: everything below raises categories from :mod:`lcow.errors` (or
plain :class:`OSError` from the standard library), and only :func:`exit_status_for` turns them into
a process status, :func:`error_message` into the ``lcow: <message>`` line on stderr.
"""

from __future__ import annotations

import enum

from lcow.errors import CorruptImage, InvalidArgument, LcowError, NotFound, NotSupported

__all__ = ["ExitStatus", "UsageError", "error_message", "exit_status_for"]


class ExitStatus(enum.IntEnum):
    """Process exit statuses of ``lcow``."""

    OK = 0
    """The command did what was asked."""
    ERROR = 1
    """Any failure without a more specific status (I/O errors, internal errors)."""
    USAGE = 2
    """Bad command line: unknown command or flag, missing or malformed argument."""
    BAD_INPUT = 3
    """The input is malformed or over a limit (InvalidArgument, LimitExceeded, CorruptImage)."""
    NOT_FOUND = 4
    """A named file, layer or link target does not exist."""
    NOT_SUPPORTED = 5
    """The request is valid but this build or backend cannot do it."""
    INTERRUPTED = 130
    """Stopped by SIGINT (Ctrl-C), as shells report it."""
    BROKEN_PIPE = 141
    """Stdout or stderr was closed before lcow wrote everything (``lcow ls | head``): nothing
    more is printed, and the status is the one a shell reports for a tool that SIGPIPE killed
    (128 + 13), so ``set -o pipefail`` still tells a cut-short output from a complete one."""


class UsageError(InvalidArgument):
    """The command line itself is wrong.

    Attributes:
        usage: the usage text of the (sub)command, printed before the message.
    """

    def __init__(self, message: str, *, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


# Most specific first: UsageError is an InvalidArgument, NotFound is a FileNotFoundError.
_TABLE: tuple[tuple[type[BaseException], ExitStatus], ...] = (
    (UsageError, ExitStatus.USAGE),
    (NotSupported, ExitStatus.NOT_SUPPORTED),
    (InvalidArgument, ExitStatus.BAD_INPUT),
    (CorruptImage, ExitStatus.BAD_INPUT),
    (NotFound, ExitStatus.NOT_FOUND),
    (FileNotFoundError, ExitStatus.NOT_FOUND),
    (KeyboardInterrupt, ExitStatus.INTERRUPTED),
)


def exit_status_for(exc: BaseException) -> ExitStatus:
    """Return the exit status for an exception that reached the command line.

    Args:
        exc: the exception a command raised.

    Returns:
        The first matching status of the table above, else :attr:`ExitStatus.ERROR`.
    """
    for kind, status in _TABLE:
        if isinstance(exc, kind):
            return status
    return ExitStatus.ERROR


def error_message(exc: BaseException) -> str:
    """Return the text printed after ``lcow: `` for an exception.

    lcow errors already lead with their subject. Standard-library ``OSError`` s are shown as
    ``<filename>: <strerror>`` like other Unix tools, instead of Python's ``[Errno n]`` form.

    Args:
        exc: the exception a command raised.

    Returns:
        A one-line message.
    """
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, OSError) and not isinstance(exc, LcowError) and exc.strerror:
        if exc.filename is not None:
            return f"{exc.filename}: {exc.strerror}"
        return exc.strerror
    text = str(exc)
    return text if text else type(exc).__name__
