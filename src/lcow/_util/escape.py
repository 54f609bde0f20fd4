"""Make untrusted text safe to print: one escaping rule for every message, listing and log line.

Names come from layer tars, images, ids and HTTP requests, and may hold control bytes (an
``ESC ]0;…`` that retitles a terminal, a newline that forges a second ``lcow:`` line), invisible
or direction-changing characters, NUL, or bytes that are not UTF-8. :func:`printable` keeps every
printable character as it is and writes everything else as a backslash escape, as ``ls -b`` and
Python's :func:`repr` do, so an escaped name is one line, shows exactly what is there and can be
told apart from any other name (a backslash itself is doubled).

Escape at output time, where the text meets a terminal or a log; keep the raw value everywhere
else (JSON output stays exact: :mod:`json` escapes what JSON needs).
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

__all__ = ["EscapingFormatter", "printable", "quoted"]

_SHORT = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (os.fsdecode's surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x80:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str | bytes) -> str:
    """Return ``text`` with every character that is not printable written as an escape.

    Args:
        text: a name as decoded with ``surrogateescape`` (how lcow decodes tar and file-system
            names), or raw bytes (decoded as UTF-8, invalid bytes escaped as ``\\xNN``).

    Returns:
        One line of printable characters: ``\\n``, ``\\r``, ``\\t``, ``\\\\`` for those four,
        ``\\xNN`` for other ASCII control bytes and for undecodable bytes, ``\\uNNNN`` /
        ``\\UNNNNNNNN`` for other characters :meth:`str.isprintable` rejects: C1 controls (so
        ``\\u0085`` and a raw byte ``\\x85`` stay distinct), line separators, bidi overrides,
        zero-width characters. Printable text, spaces included, comes back unchanged.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    if text.isprintable() and "\\" not in text:
        return text  # the common case: one C-level scan, no copy
    return "".join(
        char if char.isprintable() and char != "\\" else _SHORT.get(char) or _escape_char(char)
        for char in text
    )


class EscapingFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose messages are :func:`printable`: a name inside a log
    message (an id, a tar entry, a URL path) cannot start a forged log line or drive the
    terminal. In a traceback, the exception's own text is escaped too."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = printable(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802
        # Frames name lcow's own files and lines; the exception's text is what may be hostile.
        chunks = traceback.TracebackException(*ei).format()
        return "".join(
            chunk if chunk.startswith("  File ") else printable(chunk.rstrip("\n")) + "\n"
            for chunk in chunks
        ).rstrip("\n")


def quoted(value: str | bytes) -> str:
    """``value`` in single quotes, *unescaped*, for building a message: escaping happens once,
    where the message is printed (:func:`printable`); ``repr`` here would escape twice. Bytes
    are decoded with ``surrogateescape``, so no byte is lost."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    return f"'{value}'"
