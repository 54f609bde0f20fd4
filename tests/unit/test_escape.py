"""``lcow._util.escape.printable``: one line, every unprintable character visible, unambiguous."""

from __future__ import annotations

import logging
import sys

import pytest

from lcow._util.escape import EscapingFormatter, printable


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain name.txt", "plain name.txt"),
        ("café 日本 ✓", "café 日本 ✓"),
        # A terminal title, a screen clear and a forged second line (the example).
        (
            "x\x1b]0;PWNED\x07\x1b[2J\nlcow: all good",
            "x\\x1b]0;PWNED\\x07\\x1b[2J\\nlcow: all good",
        ),
        ("nul\x00byte", "nul\\x00byte"),
        ("tab\tcr\rdel\x7f", "tab\\tcr\\rdel\\x7f"),
        ("back\\slash", "back\\\\slash"),
        ("c1\x85\x9b", "c1\\u0085\\u009b"),
        ("rtl\u202eexe.txt", "rtl\\u202eexe.txt"),
        ("line\u2028sep zero\u200bwidth", "line\\u2028sep zero\\u200bwidth"),
        (b"\xff\xfe bytes", "\\xff\\xfe bytes"),
        ("\udcff surrogate-escaped", "\\xff surrogate-escaped"),
        ("\U000e0001 tag", "\\U000e0001 tag"),
    ],
)
def test_printable(raw: str | bytes, shown: str) -> None:
    assert printable(raw) == shown


def test_escaped_names_are_one_printable_line_and_distinct() -> None:
    names = ["a\nb", "a\\nb", "a\\\\nb", "\x85", b"\x85".decode("utf-8", "surrogateescape"), "a b"]
    shown = [printable(n) for n in names]
    assert all(s.isprintable() for s in shown)
    assert len(set(shown)) == len(names), shown


def test_escaping_formatter_keeps_one_record_on_one_line() -> None:
    formatter = EscapingFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord(
        "lcow", logging.INFO, __file__, 1, "removed %s", ("x\nINFO forged\x1b[2J",), None
    )
    assert formatter.format(record) == "INFO removed x\\nINFO forged\\x1b[2J"
    try:
        raise ValueError("bad\nname")
    except ValueError:
        record.exc_info = sys.exc_info()
    lines = formatter.format(record).splitlines()
    assert lines[-1] == "ValueError: bad\\nname"
