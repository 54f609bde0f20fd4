"""Content digests and Docker's layer chain IDs (moby ``layer.CreateChainID``).

A layer's *diff ID* is the sha256 of its uncompressed tar. Its *chain ID* names the layer together
with everything below it::

    chainID(L1) = diffID(L1)
    chainID(Ln) = sha256(chainID(Ln-1) + " " + diffID(Ln))      # the text of both digests

lcow uses the chain ID's hex (no ``sha256:`` prefix, one path component) as the layer id, so
importing the same image twice finds its layers, and two images sharing a base share its layers.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from lcow._util.escape import quoted
from lcow.images.errors import ImageError

__all__ = ["ALGORITHM", "chain_id", "chain_ids", "digest_hex", "layer_id", "parse_digest", "sha256"]

#: the only digest algorithm lcow verifies (what Docker and OCI images use in practice).
ALGORITHM = "sha256"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_ANY_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")


def sha256(data: bytes) -> str:
    """The ``sha256:<hex>`` digest of ``data``."""
    return f"{ALGORITHM}:{hashlib.sha256(data).hexdigest()}"


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


def digest_hex(digest: str) -> str:
    """The hex part of ``sha256:<hex>``."""
    return digest.split(":", 1)[1]


def chain_id(parent: str | None, diff_id: str) -> str:
    """The chain ID of a layer with diff ID ``diff_id`` over the layer whose chain ID is ``parent``.

    Args:
        parent: the chain ID below (``None`` for a base layer).
        diff_id: this layer's ``sha256:<hex>`` diff ID.

    Returns:
        ``sha256:<hex>``.
    """
    if parent is None:
        return diff_id
    return sha256(f"{parent} {diff_id}".encode("ascii"))


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """Chain IDs of every layer of an image, bottom first.

    Args:
        diff_ids: the image config's ``rootfs.diff_ids``, bottom first.

    Returns:
        One ``sha256:<hex>`` per layer.
    """
    out: list[str] = []
    parent: str | None = None
    for diff_id in diff_ids:
        parent = chain_id(parent, diff_id)
        out.append(parent)
    return out


def layer_id(chain: str) -> str:
    """The lcow layer id of a chain ID: its hex."""
    return digest_hex(chain)
