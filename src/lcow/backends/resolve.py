"""Symlink resolution confined to a view's root, over any view's ``lstat``/``readlink``
(remotefs ``resolvepath``, SPEC §4.8): every backend answers it the same way."""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Callable

from lcow.backends.base import FileInfo

__all__ = ["MAX_SYMLINKS", "resolve_in_view"]

MAX_SYMLINKS = 40  # Linux's limit on links followed in one lookup


def resolve_in_view(
    path: str, lstat: Callable[[str], FileInfo], readlink: Callable[[str], str]
) -> str:
    """``path`` with every symlink resolved as if the view's root were ``/``: an absolute
    target restarts at the view's root and ``..`` never climbs above it. The part from the
    first missing component on is kept as written (normalised).

    Raises:
        OSError: ``ELOOP`` after :data:`MAX_SYMLINKS` links.
    """
    pending = [p for p in posixpath.normpath("/" + path).split("/") if p]
    pending.reverse()
    resolved: list[str] = []
    hops = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = "/" + "/".join([*resolved, part])
        try:
            info = lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            resolved.append(part)
            resolved.extend(reversed(pending))
            return posixpath.normpath("/" + "/".join(resolved))
        if stat.S_ISLNK(info.mode):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            if (target := readlink(candidate)).startswith("/"):
                resolved = []
            pending.extend(reversed([p for p in target.split("/") if p]))
            continue
        resolved.append(part)
    return "/" + "/".join(resolved)
