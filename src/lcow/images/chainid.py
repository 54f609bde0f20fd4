"""Digest checking for image documents, over the chain-ID rule of :mod:`lcow.formats.chainid`.

The rule itself (diff IDs, chain IDs, layer ids) lives in :mod:`lcow.formats.chainid`, below the
front ends that all name layers by it; this module re-exports it for the image front end and adds
:func:`parse_digest`, which checks a digest found in a manifest, config or index.
"""

from __future__ import annotations

import re

from lcow._util.escape import quoted
from lcow.formats.chainid import ALGORITHM, chain_id, chain_ids, digest_hex, layer_id, sha256
from lcow.images.errors import ImageError

__all__ = ["ALGORITHM", "chain_id", "chain_ids", "digest_hex", "layer_id", "parse_digest", "sha256"]

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_ANY_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")


def parse_digest(value: object, *, what: str) -> str:
    """Check that ``value`` is a ``sha256:<64 lower-case hex>`` digest and return it.

    Args:
        value: the value found in a manifest, config or index.
        what: where it was found, for the message (``manifest.json: Config``).

    Returns:
        The digest, unchanged.

    Raises:
        ImageError: not a string, not a digest, or another algorithm than sha256.
    """
    if isinstance(value, str) and _DIGEST.fullmatch(value):
        return value
    if isinstance(value, str) and _ANY_DIGEST.fullmatch(value):
        algorithm = value.split(":", 1)[0]
        if algorithm != ALGORITHM:
            raise ImageError(
                f"{what}: unsupported digest algorithm {quoted(algorithm)} (only sha256)",
                subject=what,
            )
    raise ImageError(f"{what}: invalid digest {quoted(str(value))}", subject=what)
