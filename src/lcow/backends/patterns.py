"""``TarOptions.ExcludePatterns`` matching, as Docker's ``fileutils.PatternMatcher`` (SPEC §4.8).

Patterns use ``filepath.Match`` syntax (``*``, ``?``, ``[...]``, ``\\`` escapes) plus ``**`` for
any number of directories; ``!pattern`` re-includes what an earlier pattern excluded; the last
matching pattern wins. A pattern also matches a path when it matches one of the path's leading
directories (``dir`` excludes ``dir/a/b``).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass

from lcow.errors import InvalidArgument

__all__ = ["PatternMatcher"]


@dataclass(frozen=True)
class _Pattern:
    text: str
    exclusion: bool
    regex: re.Pattern[str]
    depth: int  # number of path components in the pattern


def _class(pattern: str, start: int) -> tuple[str, int]:
    """Translate the bracket expression at ``pattern[start] == "["`` (Go: ``[^a-z\\]]``)."""
    i = start + 1
    out = ["["]
    if pattern[i : i + 1] == "^":
        out.append("^/")  # a negated class still never matches the separator
        i += 1
    count = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "]" and count:
            out.append("]")
            return "".join(out), i + 1
        if ch == "-" and count and pattern[i + 1 : i + 2] not in ("", "]"):
            out.append("-")
            i += 1
            continue
        if ch == "\\":
            i += 1
            if i >= len(pattern):
                break
            ch = pattern[i]
        elif ch in "-]":
            break
        out.append(re.escape(ch))
        count += 1
        i += 1
    raise InvalidArgument(f"{pattern}: syntax error in pattern", subject=pattern)


def _translate(pattern: str) -> str:
    out = ["^"]
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i + 1 : i + 2] == "*":
                i += 2
                if pattern[i : i + 1] == "/":
                    i += 1
                out.append(".*" if i >= len(pattern) else "(.*/)?")
                continue
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            text, i = _class(pattern, i)
            out.append(text)
            continue
        elif ch == "\\":
            i += 1
            out.append(re.escape(pattern[i]) if i < len(pattern) else "\\\\")
        else:
            out.append(re.escape(ch))
        i += 1
    out.append("$")
    return "".join(out)


class PatternMatcher:
    """Decides whether a path relative to the archived directory is excluded.

    Raises:
        InvalidArgument: a malformed pattern (unclosed ``[``, a lone ``!``).
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        self._patterns: list[_Pattern] = []
        for raw in patterns:
            text = raw.strip()
            if not text:
                continue
            exclusion = text.startswith("!")
            if exclusion:
                text = text[1:]
                if not text:
                    raise InvalidArgument('illegal exclusion pattern: "!"', subject=raw)
            text = posixpath.normpath(text)
            if text == ".":
                continue
            regex = re.compile(_translate(text), re.DOTALL)
            self._patterns.append(_Pattern(text, exclusion, regex, len(text.split("/"))))

    @property
    def exclusions(self) -> bool:
        """Whether any ``!`` pattern exists (a skipped directory may still hold included files)."""
        return any(p.exclusion for p in self._patterns)

    def reincluded_below(self, directory: str) -> bool:
        """Whether a ``!`` pattern names something inside ``directory`` (so it must be walked)."""
        prefix = directory + "/"
        return any(p.exclusion and (p.text + "/").startswith(prefix) for p in self._patterns)

    def matches(self, path: str) -> bool:
        """Whether ``path`` is excluded."""
        parent = posixpath.dirname(path) or "."
        parent_dirs = parent.split("/")
        matched = False
        for pattern in self._patterns:
            hit = pattern.regex.match(path) is not None
            if not hit and parent != "." and pattern.depth <= len(parent_dirs):
                hit = pattern.regex.match("/".join(parent_dirs[: pattern.depth])) is not None
            if hit:
                matched = not pattern.exclusion
        return matched
