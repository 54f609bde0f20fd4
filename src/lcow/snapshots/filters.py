"""containerd's filter syntax, the part List (Walk) requests use (containerd 1.6 ``filters``).

A request carries filters that are OR-ed; each filter is selectors joined by ``,`` (AND)::

    selector  := fieldpath [ ("==" | "!=") value ]
    fieldpath := field ("." field)*
    field     := [A-Za-z_][A-Za-z0-9_]* | quoted
    value     := quoted | one or more characters other than ',' and white space
    quoted    := a Go-style double-quoted string

Fields of a snapshot are ``name``, ``parent``, ``kind`` (``active``, ``view``, ``committed``)
and ``labels.<key>`` (the rest of the path joined with ``.``). As in containerd's adaptors
(``snapshots/storage`` and ``metadata``), ``name``, ``parent`` and ``kind`` are always present
(``parent`` is ``""`` for a snapshot without one) and a label only when it is set; a selector
without an operator tests presence, ``==`` needs the field present, and ``!=`` compares the
value, ``""`` for an absent label (so ``parent!=""`` selects the snapshots with a parent and
``labels.l!=""`` those with a non-empty label ``l``). Everything else —
containerd's ``~=`` regular expressions, ``/``/``|`` quoting, unknown fields — is an
:class:`InvalidArgument`, never a silent "matches all".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from lcow.errors import InvalidArgument

__all__ = ["Filter", "Selector", "parse_filters"]

#: Longest filter string accepted (containerd's GC sends short ones).
MAX_FILTER_LEN = 4096
_FIELDS = frozenset({"name", "parent", "kind", "labels"})
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
            "\\": "\\", '"': '"'}  # fmt: skip


@dataclass(frozen=True)
class Selector:
    """One ``fieldpath[op value]``: ``op`` is ``==``, ``!=`` or ``None`` (presence)."""

    path: tuple[str, ...]
    op: str | None
    value: str = ""

    def matches(self, fields: Callable[[tuple[str, ...]], str | None]) -> bool:
        """Whether the object whose field lookup is ``fields`` satisfies the selector."""
        found = fields(self.path)
        if self.op is None:
            return found is not None
        if self.op == "==":
            return found is not None and found == self.value
        return (found or "") != self.value


#: An OR of ANDs of selectors; empty = everything.
Filter = tuple[tuple[Selector, ...], ...]


def parse_filters(texts: Sequence[str]) -> Filter:
    """Parse a request's filters.

    Raises:
        InvalidArgument: a filter is not in the supported syntax (the message quotes it).
    """
    return tuple(_Parser(t).selectors() for t in texts if t != "")


def matches(flt: Filter, fields: Callable[[tuple[str, ...]], str | None]) -> bool:
    """Whether an object passes ``flt`` (some filter whose every selector matches)."""
    return not flt or any(all(s.matches(fields) for s in conj) for conj in flt)


def snapshot_fields(
    name: str, parent: str | None, kind: str, labels: Mapping[str, str]
) -> Callable[[tuple[str, ...]], str | None]:
    """Field lookup for a snapshot, as containerd's snapshot adaptor answers it."""

    def lookup(path: tuple[str, ...]) -> str | None:
        head, rest = path[0], path[1:]
        if head == "labels":
            return labels.get(".".join(rest)) if rest else None
        if rest:
            return None
        if head == "name":
            return name
        if head == "parent":  # always present, "" for none (containerd's metadata asks
            return parent or ""  # parent=="" when it looks a base layer up by its target)
        return kind

    return lookup


__all__ += ["matches", "snapshot_fields"]


class _Parser:
    def __init__(self, text: str) -> None:
        if len(text) > MAX_FILTER_LEN:
            raise InvalidArgument(
                f"filter of {len(text)} characters: longer than {MAX_FILTER_LEN}",
                subject="filter",
            )
        self.text = text
        self.pos = 0

    def fail(self, why: str) -> InvalidArgument:
        return InvalidArgument(
            f"filter {self.text!r}: {why} at position {self.pos}", subject=self.text
        )

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_space()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def selectors(self) -> tuple[Selector, ...]:
        found = [self.selector()]
        while self.peek() == ",":
            self.pos += 1
            found.append(self.selector())
        if self.peek():
            raise self.fail(f"unexpected {self.peek()!r}")
        return tuple(found)

    def selector(self) -> Selector:
        path = [self.field()]
        while self.peek() == ".":
            self.pos += 1
            path.append(self.field())
        if path[0] not in _FIELDS:
            raise self.fail(f"unknown field {path[0]!r} (fields: {', '.join(sorted(_FIELDS))})")
        if path[0] != "labels" and len(path) > 1:
            raise self.fail(f"field {path[0]!r} has no sub-fields")
        if path[0] == "labels" and len(path) == 1:
            raise self.fail("'labels' needs a key (labels.\"key\")")
        nxt = self.peek()
        if nxt in ("", ","):
            return Selector(tuple(path), None)
        op = self.text[self.pos : self.pos + 2]
        if op not in ("==", "!="):
            raise self.fail(f"unsupported operator {op!r} (supported: ==, !=, presence)")
        self.pos += 2
        return Selector(tuple(path), op, self.value())

    def field(self) -> str:
        if self.peek() == '"':
            return self.quoted()
        start = self.pos
        while self.pos < len(self.text) and (
            self.text[self.pos].isascii()
            and (self.text[self.pos].isalnum() or self.text[self.pos] == "_")
        ):
            self.pos += 1
        if start == self.pos:
            raise self.fail("expected a field name")
        if self.text[start].isdigit():
            raise self.fail("a field name starts with a letter")
        return self.text[start : self.pos]

    def value(self) -> str:
        if self.peek() == '"':
            return self.quoted()
        start = self.pos
        while self.pos < len(self.text) and not (
            self.text[self.pos] == "," or self.text[self.pos].isspace()
        ):
            self.pos += 1
        if start == self.pos:
            raise self.fail("expected a value")
        return self.text[start : self.pos]

    def quoted(self) -> str:
        self.pos += 1  # the opening quote
        out: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == '"':
                return "".join(out)
            if char != "\\":
                out.append(char)
                continue
            if self.pos >= len(self.text):
                break
            code = self.text[self.pos]
            self.pos += 1
            if code in _ESCAPES:
                out.append(_ESCAPES[code])
            elif code in ("x", "u", "U"):
                width = {"x": 2, "u": 4, "U": 8}[code]
                digits = self.text[self.pos : self.pos + width]
                try:
                    out.append(chr(int(digits, 16)) if len(digits) == width else "")
                except (ValueError, OverflowError):
                    raise self.fail(f"bad escape \\{code}{digits}") from None
                if len(digits) != width:
                    raise self.fail(f"bad escape \\{code}{digits}")
                self.pos += width
            else:
                raise self.fail(f"unknown escape \\{code}")
        raise self.fail("unterminated quoted string")
