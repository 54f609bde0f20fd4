"""Errors of the registry client: what a registry answered, or failed to answer.

* :class:`RegistryError` — the registry sent something unusable (not JSON, too big, a digest or
  size that does not match, an unsupported media type, a redirect loop): bad input, ``lcow``
  exit status 3, like a tampered image tarball.
* :class:`Unauthorized` — the registry refused the credentials (or asked for some and none were
  found): a ``PermissionError``, exit status 1.
* :class:`RegistryUnavailable` — no usable answer after the retries (connection refused, 5xx):
  a ``ConnectionError``, exit status 1. A stalled server is :class:`~lcow.errors.Timeout`.
* :class:`Cancelled` — a download stopped because another layer of the same pull failed (the
  pull reports that layer's error, not this one).
* A repository, tag or digest the registry does not have is :class:`~lcow.errors.NotFound`.

Every message leads with the registry host (and the repository or digest it is about).
"""

from __future__ import annotations

from lcow.errors import InvalidArgument, LcowError

__all__ = ["BlobMismatch", "Cancelled", "RegistryError", "RegistryUnavailable", "Unauthorized"]


class RegistryError(InvalidArgument):
    """A registry's answer is not a usable manifest, index, config or blob."""


class BlobMismatch(RegistryError):
    """A blob's bytes do not match its descriptor (digest, or size while streaming).

    Attributes:
        digest: the descriptor's digest (``sha256:<hex>``), the blob the error is about.
    """

    def __init__(self, message: str, *, digest: str) -> None:
        super().__init__(message, subject=digest)
        self.digest = digest


class Unauthorized(LcowError, PermissionError):
    """The registry refused access (HTTP 401/403) with the credentials found, or without any."""


class RegistryUnavailable(LcowError, ConnectionError):
    """The registry could not be reached, or kept failing, after every retry."""


class Cancelled(LcowError, ConnectionAbortedError):
    """A download was stopped on purpose (another layer of the pull failed first)."""
