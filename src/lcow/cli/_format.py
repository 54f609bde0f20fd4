"""Small text helpers shared by the commands: sizes in and out, aligned tables."""

from __future__ import annotations

import re
from collections.abc import Sequence

from lcow._util.escape import printable

__all__ = ["format_size", "format_table", "parse_size"]

_SUFFIX = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}
_SIZE_RE = re.compile(r"(?P<n>[0-9]+)\s*(?P<unit>[KMGT]?)(?:I?B)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Parse a byte count: plain bytes, or with a binary K/M/G/T suffix (``1G`` = 2**30).

    ``KiB``/``KB``-style spellings are accepted and also mean powers of 1024.

    Args:
        text: the command-line value.

    Returns:
        The size in bytes.

    Raises:
        ValueError: the text is not a non-negative size.
    """
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid size {text!r} (want bytes or a K/M/G/T suffix, e.g. 16G)")
    return int(match["n"]) << _SUFFIX[match["unit"].upper()]


def format_size(n: int) -> str:
    """Format a byte count for people: ``512 B``, ``4.0 KiB``, ``1.5 GiB``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Align ``rows`` under ``headers``: the first column left, the others right.

    Cells stay raw, for the writer to escape (:func:`lcow.cli._output.write_lines`); columns are
    as wide as the cells will be once escaped, so a name with control bytes keeps its row
    aligned.

    Args:
        headers: column titles.
        rows: cells, one sequence per row, as many as ``headers``.

    Returns:
        The table's lines: the header, a rule, then one line per row.
    """
    widths = [
        max(len(printable(cell)) for cell in column) for column in zip(headers, *rows, strict=True)
    ]

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True)):
            pad = " " * (width - len(printable(cell)))
            out.append(cell + pad if i == 0 else pad + cell)
        return "  ".join(out).rstrip(" ")

    rule = "  ".join("-" * w for w in widths)
    return [line(headers), rule, *(line(r) for r in rows)]
