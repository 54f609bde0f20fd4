"""Content digests and Docker's layer chain IDs (moby ``layer.CreateChainID``, the OCI image
spec's ``ChainID``).

A layer's *diff ID* is the sha256 of its uncompressed tar. Its *chain ID* names the layer together
with everything below it::

    chainID(L1) = diffID(L1)
    chainID(Ln) = sha256(chainID(Ln-1) + " " + diffID(Ln))      # the text of both digests

lcow uses the chain ID's hex (no ``sha256:`` prefix, one path component) as the layer id, so
importing the same image twice finds its layers, and two images sharing a base share its layers.
Every front end (image imports and pulls, the containerd snapshotter) names layers this way, so
the rule lives here, below them all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["ALGORITHM", "chain_id", "chain_ids", "digest_hex", "layer_id", "sha256"]

#: the only digest algorithm lcow verifies (what Docker and OCI images use in practice).
ALGORITHM = "sha256"


def sha256(data: bytes) -> str:
    """The ``sha256:<hex>`` digest of ``data``."""
    return f"{ALGORITHM}:{hashlib.sha256(data).hexdigest()}"


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
