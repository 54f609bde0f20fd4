"""``docker save`` tarballs: ``manifest.json`` naming a config and layer files per image.

Two generations exist. Docker before 25 writes ``<config hex>.json`` and ``<v1 id>/layer.tar``
(plus ``<v1 id>/json``, ``VERSION`` and ``repositories``, which lcow ignores); Docker 25 and later
writes an OCI image layout and a ``manifest.json`` whose names are ``blobs/sha256/<hex>``. Both
read the same way: the config's ``rootfs.diff_ids`` give each layer's uncompressed digest, and a
name of the ``blobs/sha256/<hex>`` or ``<hex>.json`` form also fixes the stored file's digest.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from lcow.images.archive import ImageArchive, normalize_member
from lcow.images.chainid import sha256
from lcow.images.errors import ImageError
from lcow.images.model import DOCKER_ARCHIVE, ImageSpec, LayerRef, config_diff_ids, read_verified

__all__ = ["MANIFEST", "is_docker_archive", "read_docker_archive"]

MANIFEST = "manifest.json"
_BLOB_NAME = re.compile(r"blobs/sha256/([0-9a-f]{64})")
_CONFIG_NAME = re.compile(r"([0-9a-f]{64})\.json")


def is_docker_archive(archive: ImageArchive) -> bool:
    """Whether the archive has a ``manifest.json`` (what ``docker load`` reads)."""
    return archive.has(MANIFEST)


def _name_digest(member: str) -> str | None:
    """The digest a member's name states (``blobs/sha256/<hex>``, ``<hex>.json``), if any."""
    match = _BLOB_NAME.fullmatch(member) or _CONFIG_NAME.fullmatch(member)
    return f"sha256:{match.group(1)}" if match else None


def _string_list(value: Any, *, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageError(f"{what}: expected a list of strings", subject=what)
    return list(value)


def read_docker_archive(archive: ImageArchive) -> list[ImageSpec]:
    """Read every image ``manifest.json`` lists, verifying each config against its name.

    Layer blobs are not read here (the importer verifies them while converting).

    Args:
        archive: an archive for which :func:`is_docker_archive` holds.

    Returns:
        The images, in manifest order.

    Raises:
        ImageError: ``manifest.json`` or a config is malformed, names escape, or the layer count
            differs from the config's diff IDs.
        MissingBlob: a config or layer file is missing.
        DigestMismatch: a config does not hash to its name.
    """
    where = f"{archive.name}: {MANIFEST}"
    manifest = archive.read_json(MANIFEST)
    if not isinstance(manifest, list) or not manifest:
        raise ImageError(f"{where}: expected a non-empty JSON array of images", subject=MANIFEST)
    images = []
    for index, entry in enumerate(manifest):
        what = f"{where}[{index}]"
        if not isinstance(entry, Mapping):
            raise ImageError(f"{what}: expected a JSON object", subject=MANIFEST)
        config_ref = entry.get("Config")
        if not isinstance(config_ref, str):
            raise ImageError(f"{what}: 'Config' is not a string", subject=MANIFEST)
        config_name = normalize_member(config_ref, what=f"{what}: Config")
        layer_names = [
            normalize_member(name, what=f"{what}: Layers[{i}]")
            for i, name in enumerate(_string_list(entry.get("Layers"), what=f"{what}: Layers"))
        ]
        tags = tuple(_string_list(entry.get("RepoTags"), what=f"{what}: RepoTags"))
        name_digest = _name_digest(config_name)
        data = read_verified(archive, config_name, digest=name_digest)
        config = archive.read_json(config_name, data=data)
        diff_ids = config_diff_ids(config, where=f"{archive.name}: {config_name}")
        if len(diff_ids) != len(layer_names):
            raise ImageError(
                f"{what}: lists {len(layer_names)} layers but its config {config_name} has "
                f"{len(diff_ids)} diff_ids",
                subject=MANIFEST,
            )
        layers = []
        for name, diff_id in zip(layer_names, diff_ids, strict=True):
            archive.size(name)  # a missing layer fails now, before anything is imported
            layers.append(LayerRef(member=name, diff_id=diff_id, digest=_name_digest(name)))
        images.append(
            ImageSpec(
                format=DOCKER_ARCHIVE,
                config=name_digest or sha256(data),
                tags=tags,
                layers=tuple(layers),
            )
        )
    return images
