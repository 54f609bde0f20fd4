"""Where the ``lcow`` command's text meets a terminal: every line escaped, JSON exact, logs safe.

Names reach the output from layer tars, image manifests, data-root folders and the command line;
any of them may hold a newline (a forged ``lcow:`` line), terminal escapes (``ESC ]0;…`` retitles
the terminal), NUL or bytes that are not UTF-8. Text output therefore goes through
:func:`write_lines`, which writes each line with :func:`lcow._util.escape.printable`: a line
given to it stays one line whatever it holds. Callers pass raw values and never escape
themselves, so nothing is escaped twice.

JSON output (:func:`write_json`) stays exact: :mod:`json` writes control characters as ``\\uNNNN``
and, with ``ensure_ascii``, everything else that is not ASCII too, so the output is ASCII (valid
UTF-8 whatever the locale). A name that is not valid UTF-8 is decoded by lcow with
``surrogateescape``: its byte ``0xNN`` appears as the escape ``\\udcNN`` (Python's convention;
``os.fsencode(json.loads(text))`` gives the bytes back), never as invalid UTF-8 on stdout.

Binary output (``cat``, ``diff -o -``, ``vhd2tar``) is data and is not touched here.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import BinaryIO, TextIO

from lcow._util.escape import EscapingFormatter, printable

__all__ = ["logging_to_stderr", "reader_gone", "write_all", "write_json", "write_lines"]


def write_lines(lines: str | Iterable[str], stream: TextIO | None = None) -> None:
    """Write text lines, each escaped with :func:`printable`, and flush.

    Args:
        lines: the lines, raw (a string is one line: a newline inside it is escaped, not
            printed); an empty string is an empty line.
        stream: where to write (default: the current ``sys.stdout``).
    """
    items = [lines] if isinstance(lines, str) else list(lines)
    _write_text(
        sys.stdout if stream is None else stream, "".join(printable(s) + "\n" for s in items)
    )


def write_json(value: object, stream: TextIO | None = None) -> None:
    """Write ``value`` as indented JSON, ASCII only (see the module docstring), and flush.

    Args:
        value: a JSON-serialisable value; strings may hold surrogate escapes.
        stream: where to write (default: the current ``sys.stdout``).
    """
    import json  # here: most commands print no JSON, and every start would pay for it

    text = json.dumps(value, indent=2, ensure_ascii=True) + "\n"
    _write_text(sys.stdout if stream is None else stream, text)


def write_all(buffer: BinaryIO, data: bytes | memoryview) -> None:
    """Write all of ``data`` to a binary stream and flush it.

    A buffered writer may take only part of a large write and say so in its return value
    (CPython does when a pipe's reader goes away in the middle: the rest is silently lost and
    the command would exit 0); the rest is written again, which then raises the broken pipe.
    """
    view = memoryview(data)
    while view:
        written = buffer.write(view)
        if not written:  # None or 0: a non-blocking stream that took nothing
            raise BlockingIOError(errno.EAGAIN, "output would block")
        view = view[written:]
    buffer.flush()


def _write_text(out: TextIO, text: str) -> None:
    """Write ``text`` whole: encoded as ``out`` would, into its binary buffer when it has one."""
    buffer = getattr(out, "buffer", None)
    if buffer is None:  # a text-only stream (io.StringIO)
        out.write(text)
        out.flush()
        return
    out.flush()  # what was written through the text layer goes first
    write_all(buffer, text.encode(out.encoding or "utf-8", out.errors or "strict"))


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler writing to whatever ``sys.stderr`` is when a record arrives (tests replace it)
    and staying silent when stderr is gone (a closed pipe): a log line is never worth a
    second error."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        where = "%(name)s: " if verbose else ""
        self.setFormatter(EscapingFormatter(f"lcow: %(levelname)s: {where}%(message)s"))

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:  # StreamHandler.__init__ assigns it
        pass

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        pass


@contextmanager
def logging_to_stderr(verbosity: int) -> Iterator[None]:
    """Route log records to stderr through :class:`EscapingFormatter` while the command runs.

    Without this, Python's last-resort handler would print a library's warning (which may name
    a hostile tar entry) raw. The handler and the root level are restored afterwards, so
    calling :func:`lcow.cli.main.main` in-process leaves logging as it found it.

    Args:
        verbosity: the number of ``-v``: 0 warnings, 1 info, 2 or more debug.
    """
    root = logging.getLogger()
    handler = _StderrHandler(verbose=verbosity > 0)
    level = root.level
    if verbosity:
        root.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)
    else:
        handler.setLevel(logging.WARNING)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def reader_gone(exc: BaseException) -> bool:
    """Whether ``exc`` is a broken pipe on stdout or stderr: their reader went away early
    (``lcow ls | head``), as opposed to a pipe to a helper process breaking.

    A stream whose reader is gone is pointed at ``/dev/null`` on the way, so the interpreter's
    final flush of what is still buffered cannot report the same broken pipe again.

    Args:
        exc: an exception that reached the command line.

    Returns:
        True when ``exc`` (or an exception it was raised from) is ``EPIPE`` and the write end
        of stdout's or stderr's pipe has no reader left.
    """
    if not _is_epipe(exc):
        return False
    gone = False
    for stream in (sys.stdout, sys.stderr):
        fd = _fileno(stream)
        if fd is not None and _no_reader(fd):
            _discard(fd)
            gone = True
    return gone


def _is_epipe(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.EPIPE:
            return True
        current = current.__cause__ or current.__context__
    return False


def _fileno(stream: TextIO | None) -> int | None:
    try:
        return stream.fileno() if stream is not None else None
    except (OSError, ValueError):  # io.UnsupportedOperation: a replaced stream
        return None


def _no_reader(fd: int) -> bool:
    """A pipe's write end reports POLLERR once its last reader closed (a socket: POLLHUP)."""
    poller = select.poll()
    try:
        poller.register(fd, select.POLLOUT)
        events = poller.poll(0)
    except (OSError, ValueError):
        return False
    return any(mask & (select.POLLERR | select.POLLHUP) for _, mask in events)


def _discard(fd: int) -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.dup2(devnull, fd)
    except OSError:
        pass
    finally:
        os.close(devnull)
