"""Errors of image import: a tarball that is malformed, hostile, incomplete or tampered with.

All are :class:`~lcow.errors.InvalidArgument` (bad input, ``lcow`` exit status 3) and carry the
member or digest they are about, so callers can tell which blob failed without parsing text.
"""

from __future__ import annotations

from lcow.errors import InvalidArgument

__all__ = ["DigestMismatch", "ImageError", "MissingBlob", "UnsafeMember"]


class ImageError(InvalidArgument):
    """An image tarball is not a usable ``docker save`` archive or OCI image layout."""


class UnsafeMember(ImageError):
    """A member name, link target or reference points outside the archive (``..``, ``/``)."""


class MissingBlob(ImageError):
    """A manifest names a file the tarball does not contain."""


class DigestMismatch(ImageError):
    """A blob's content does not hash to the digest the manifest or config promises.

    Attributes:
        expected: the digest the image metadata names (``sha256:<hex>``).
        got: the digest of the bytes actually read.
    """

    def __init__(self, message: str, *, subject: str | None = None, expected: str, got: str):
        super().__init__(message, subject=subject)
        self.expected = expected
        self.got = got
