"""What an image tarball describes, whatever its format: images made of verified layer blobs.

:mod:`lcow.images.dockerarchive` and :mod:`lcow.images.oci` read their formats into these value
objects; :mod:`lcow.images.importer` turns them into layers of a data root.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lcow._util.escape import quoted
from lcow.images.archive import ImageArchive
from lcow.images.chainid import parse_digest, sha256
from lcow.images.errors import DigestMismatch, ImageError

__all__ = [
    "DOCKER_ARCHIVE",
    "OCI_LAYOUT",
    "ImageSpec",
    "LayerRef",
    "config_diff_ids",
    "read_verified",
]

#: ``ImageSpec.format`` of a ``docker save`` tarball (manifest.json).
DOCKER_ARCHIVE = "docker-archive"
#: ``ImageSpec.format`` of an OCI image layout tarball (oci-layout, index.json).
OCI_LAYOUT = "oci-layout"


@dataclass(frozen=True)
class LayerRef:
    """One layer of an image as the archive stores it.

    Attributes:
        member: the blob's name inside the archive (``<id>/layer.tar``, ``blobs/sha256/<hex>``).
        diff_id: ``sha256:<hex>`` of the uncompressed tar, from the image config.
        digest: ``sha256:<hex>`` of the blob as stored, when the format names one.
        size: the blob's size as stored, when a descriptor gives it.
        media_type: the descriptor's media type (``""`` when the format has none).
    """

    member: str
    diff_id: str
    digest: str | None = None
    size: int | None = None
    media_type: str = ""


@dataclass(frozen=True)
class ImageSpec:
    """One image of an archive.

    Attributes:
        format: :data:`DOCKER_ARCHIVE` or :data:`OCI_LAYOUT`.
        config: ``sha256:<hex>`` of the image config (Docker's image ID).
        tags: repository tags or reference names the archive gives the image.
        layers: the layers, bottom first.
    """

    format: str
    config: str
    tags: tuple[str, ...]
    layers: tuple[LayerRef, ...]


def read_verified(
    archive: ImageArchive, member: str, *, digest: str | None, size: int | None = None
) -> bytes:
    """Read a small blob and check it against its digest (and size) when one is known.

    Args:
        archive: the archive.
        member: the blob's name.
        digest: the expected ``sha256:<hex>``, or ``None``.
        size: the expected size, or ``None``.

    Returns:
        The blob's bytes.

    Raises:
        MissingBlob: no such member.
        DigestMismatch: the content does not match.
    """
    data = archive.read_bytes(member)
    if size is not None and len(data) != size:
        raise DigestMismatch(
            f"{archive.name}: {member}: size {len(data)} does not match the descriptor's {size}",
            subject=member,
            expected=str(size),
            got=str(len(data)),
        )
    if digest is not None:
        got = sha256(data)
        if got != digest:
            raise DigestMismatch(
                f"{archive.name}: {member}: digest mismatch: expected {digest}, got {got}",
                subject=member,
                expected=digest,
                got=got,
            )
    return data


def config_diff_ids(config: Any, *, where: str) -> list[str]:
    """The ``rootfs.diff_ids`` of an image config.

    Args:
        config: the parsed config JSON.
        where: the config's name, for messages.

    Returns:
        The diff IDs, bottom first.

    Raises:
        ImageError: the config is not an object or has no usable ``rootfs``.
    """
    if not isinstance(config, Mapping):
        raise ImageError(f"{where}: image config is not a JSON object", subject=where)
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, Mapping):
        raise ImageError(f"{where}: image config has no 'rootfs' object", subject=where)
    kind = rootfs.get("type", "layers")
    if kind != "layers":
        raise ImageError(f"{where}: unsupported rootfs type {quoted(kind)}", subject=where)
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list):
        raise ImageError(f"{where}: 'rootfs.diff_ids' is not a list", subject=where)
    return [parse_digest(d, what=f"{where}: rootfs.diff_ids[{i}]") for i, d in enumerate(diff_ids)]
