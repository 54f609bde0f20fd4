"""Read one archive with the C header scanner and with the Python parser, for comparison.

The scanner (``lcow._tarscan``) may decline any member, but whatever it accepts must come out
exactly as the Python reader parses it, with the same errors; the differential tests and the
``tarscan`` fuzz harness check that with :func:`outcome`.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

from lcow.convert.tarstream import TarEntry, TarReader
from lcow.errors import LcowError

__all__ = ["Outcome", "outcome", "outcome_of_bytes", "tarscan"]

#: ``(members, "ok", consumed)`` or ``(members, error type, message, consumed)``.
Outcome = tuple[Any, ...]


def tarscan() -> ModuleType | None:
    """The scanner itself, whatever ``LCOW_NATIVE`` says; ``None`` when it is not built."""
    try:
        return importlib.import_module("lcow._tarscan")
    except ImportError:
        return None


def _fields(entry: TarEntry) -> tuple[Any, ...]:
    return (
        entry.name,
        entry.type,
        entry.mode,
        entry.uid,
        entry.gid,
        entry.size,
        entry.realsize,
        entry.mtime_ns,
        entry.atime_ns,
        entry.ctime_ns,
        entry.linkname,
        entry.devmajor,
        entry.devminor,
        entry.xattrs,
        entry.sparse,
        entry.offset,
    )


def outcome(fd: int, scanner: Any | None) -> Outcome:
    """Every member's fields (data skipped) read from ``fd``, then how the archive ended.

    ``scanner`` is the header accelerator to use (``None``: the Python parser only).
    """
    reader = TarReader(fd)
    reader.native = scanner
    members: list[tuple[Any, ...]] = []
    try:
        for entry in reader.entries():
            members.append(_fields(entry))
            reader.skip_data(entry.size, entry)
            reader.finish_data(entry)
        reader.drain()
    except LcowError as exc:
        return (members, type(exc).__name__, str(exc), reader.consumed)
    return (members, "ok", reader.consumed)


def outcome_of_bytes(data: bytes, scanner: Any | None) -> Outcome:
    """:func:`outcome` of ``data`` held in an in-memory regular file."""
    fd = os.memfd_create("tar", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
        return outcome(fd, scanner)
    finally:
        os.close(fd)
