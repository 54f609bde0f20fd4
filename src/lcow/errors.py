"""The one error tree of lcow (STYLE §5).

Every error lcow raises derives from :class:`LcowError` and from one category, and each category
also inherits the matching built-in exception so callers that only know the standard library can
still catch it (``except FileNotFoundError`` catches :class:`NotFound`).
"""

from __future__ import annotations

import errno
import os

__all__ = [
    "AlreadyExists",
    "Busy",
    "CorruptImage",
    "FailedPrecondition",
    "InvalidArgument",
    "LcowError",
    "LimitExceeded",
    "NoSpace",
    "NotFound",
    "NotSupported",
    "Timeout",
]


class LcowError(Exception):
    """Root of every error lcow raises.

    Attributes:
        subject: what the error is about (a path, a tar entry name, a layer id), or ``None``.
    """

    def __init__(self, message: str, *, subject: str | None = None) -> None:
        super().__init__(message)
        self.subject = subject

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class NotFound(LcowError, FileNotFoundError):
    """A named thing (layer, parent, link target) does not exist."""


class AlreadyExists(LcowError, FileExistsError):
    """A thing that must be new already exists."""


class InvalidArgument(LcowError, ValueError):
    """Bad input: a hostile or malformed tar, a wrong option value, an unusable name."""


class LimitExceeded(InvalidArgument):
    """Input is well formed but goes past a configured limit (image size, name length...)."""


class FailedPrecondition(LcowError, RuntimeError):
    """The operation is valid but the state does not allow it now."""


class NotSupported(LcowError, NotImplementedError):
    """The backend or format cannot do this (moby's ``driver not supported``)."""


class CorruptImage(LcowError, ValueError):
    """An on-disk image (ext4, VHD, VHDX) is damaged or not what it claims to be."""


class Timeout(LcowError, TimeoutError):
    """An operation went idle for longer than allowed."""


class Busy(LcowError, BlockingIOError):
    """A resource is in use (a mounted layer, a locked data root)."""


class NoSpace(LcowError, OSError):
    """The output file system filled up (``ENOSPC``, or ``EDQUOT`` for a quota) while writing.

    Attributes:
        entry: the tar entry whose data was being written, or ``None`` when the failing write
            was the image's own metadata.
        errno: ``errno.ENOSPC`` or ``errno.EDQUOT``, as an ``OSError`` from the kernel has.
    """

    def __init__(
        self,
        message: str,
        *,
        subject: str | None = None,
        entry: str | None = None,
        code: int = errno.ENOSPC,
    ) -> None:
        super().__init__(message, subject=subject)
        self.entry = entry
        self.errno = code
        self.strerror = os.strerror(code)
