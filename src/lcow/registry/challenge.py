"""``WWW-Authenticate`` challenges (RFC 7235), as registries send them on a 401.

``Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull"``
asks for a token from ``realm``; ``Basic realm="..."`` for the user and password on every
request. httpx has no parser for the header (its Digest auth parses only its own scheme), so
this one is hand-written: auth-params are ``key=token`` or ``key="quoted string"`` (with ``\\``
escapes), separated by commas; several challenges may share one header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Challenge", "parse_challenges"]

_SCHEME = re.compile(r"\s*,?\s*([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)(?=\s|$|,)")
_PARAM = re.compile(
    r"\s*,?\s*([A-Za-z0-9!#$%&'*+.^_`|~-]+)\s*=\s*(?:\"((?:[^\"\\]|\\.)*)\"|([^\s,\"]*))"
)


@dataclass(frozen=True)
class Challenge:
    """One challenge: its scheme (lower case) and its parameters (keys lower case)."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(header: str) -> list[Challenge]:
    """Every challenge of a ``WWW-Authenticate`` value, in order; unparsable text is skipped.

    Args:
        header: the header's value.

    Returns:
        The challenges (empty when there is none).
    """
    challenges: list[Challenge] = []
    pos = 0
    while pos < len(header):
        scheme = _SCHEME.match(header, pos)
        if scheme is None:
            break
        pos = scheme.end()
        params: dict[str, str] = {}
        while (param := _PARAM.match(header, pos)) is not None:
            quoted, bare = param.group(2), param.group(3)
            value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare or ""
            params[param.group(1).lower()] = value
            pos = param.end()
        challenges.append(Challenge(scheme.group(1).lower(), params))
    return challenges
