"""A registry client: references, credentials, the distribution API (issue 16 part 1).

* :func:`parse_reference` — ``busybox`` → ``docker.io/library/busybox:latest``.
* :func:`find_credentials` — the Docker client's ``config.json`` and credential helpers.
* :class:`RegistryClient` — one repository over httpx: tokens, retries, caps, streamed blobs.
* :func:`resolve` — a reference down to the image manifest for a platform, and its config.

Layering: ``registry`` uses ``_util`` and ``errors`` only (and httpx); :mod:`lcow.images.pull`
lands what it fetches as layers, and the CLI's ``pull`` drives both.
"""

from __future__ import annotations

from lcow.registry.client import BlobReader, ClientOptions, Document, RegistryClient
from lcow.registry.credentials import Credentials, config_path, find_credentials
from lcow.registry.errors import (
    BlobMismatch,
    Cancelled,
    RegistryError,
    RegistryUnavailable,
    Unauthorized,
)
from lcow.registry.reference import Reference, parse_reference
from lcow.registry.resolve import (
    BlobRef,
    Platform,
    ResolvedImage,
    host_platform,
    parse_platform,
    resolve,
)

__all__ = [
    "BlobMismatch",
    "BlobReader",
    "BlobRef",
    "Cancelled",
    "ClientOptions",
    "Credentials",
    "Document",
    "Platform",
    "Reference",
    "RegistryClient",
    "RegistryError",
    "RegistryUnavailable",
    "ResolvedImage",
    "Unauthorized",
    "config_path",
    "find_credentials",
    "host_platform",
    "parse_platform",
    "parse_reference",
    "resolve",
]
