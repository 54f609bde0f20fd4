"""OCI image layout tarballs: ``oci-layout``, ``index.json`` and content-addressed ``blobs/``.

``index.json`` lists manifests (or nested indexes, one per multi-platform image); every document
is fetched from ``blobs/sha256/<hex>`` and checked against its descriptor's digest and size before
it is parsed. A nested index contributes the manifest for this host's platform (``linux`` and the
host's architecture, else the first ``linux`` one, else the first); attestation manifests
(platform ``unknown``) are never chosen. Layer blobs are checked later, while they are converted.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lcow._util.escape import quoted
from lcow.images.archive import ImageArchive
from lcow.images.chainid import digest_hex, parse_digest
from lcow.images.errors import ImageError
from lcow.images.model import OCI_LAYOUT, ImageSpec, LayerRef, config_diff_ids, read_verified

__all__ = ["INDEX", "LAYER_MEDIA_TYPE", "LAYOUT_FILE", "is_oci_layout", "read_oci_layout"]

LAYOUT_FILE = "oci-layout"
INDEX = "index.json"
_INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
_MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
}
#: The layer media types lcow converts: tar, gzip or zstd tars, OCI and Docker names.
LAYER_MEDIA_TYPE = re.compile(
    r"application/vnd\.(?:oci\.image\.layer(?:\.nondistributable)?\.v1\.tar(?:\+gzip|\+zstd)?"
    r"|docker\.image\.rootfs\.(?:foreign\.)?diff\.tar(?:\.gzip)?)"
)
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "i386": "386"}
_NAME_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")
_MAX_DEPTH = 8


@dataclass(frozen=True)
class _Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Mapping[str, Any] | None
    annotations: Mapping[str, Any]

    @property
    def member(self) -> str:
        return f"blobs/sha256/{digest_hex(self.digest)}"


def is_oci_layout(archive: ImageArchive) -> bool:
    """Whether the archive has ``oci-layout`` and ``index.json``."""
    return archive.has(LAYOUT_FILE) and archive.has(INDEX)


def _descriptor(value: Any, *, what: str) -> _Descriptor:
    if not isinstance(value, Mapping):
        raise ImageError(f"{what}: descriptor is not a JSON object", subject=what)
    media_type = value.get("mediaType", "")
    size = value.get("size")
    if not isinstance(media_type, str):
        raise ImageError(f"{what}: 'mediaType' is not a string", subject=what)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(f"{what}: 'size' is not a non-negative integer", subject=what)
    found = value.get("platform")
    annotations = value.get("annotations") or {}
    if not isinstance(annotations, Mapping):
        raise ImageError(f"{what}: 'annotations' is not a JSON object", subject=what)
    return _Descriptor(
        media_type=media_type,
        digest=parse_digest(value.get("digest"), what=f"{what}: digest"),
        size=size,
        platform=found if isinstance(found, Mapping) else None,
        annotations=annotations,
    )


def _descriptors(document: Any, key: str, *, what: str) -> list[_Descriptor]:
    if not isinstance(document, Mapping):
        raise ImageError(f"{what}: expected a JSON object", subject=what)
    items = document.get(key)
    if not isinstance(items, list):
        raise ImageError(f"{what}: '{key}' is not a list", subject=what)
    return [_descriptor(item, what=f"{what}: {key}[{i}]") for i, item in enumerate(items)]


def _host_arch() -> str:
    machine = platform.machine().lower()
    return _ARCH.get(machine, machine)


def _best(candidates: list[_Descriptor]) -> _Descriptor | None:
    """The descriptor for this host among those of one multi-platform image."""
    usable = [d for d in candidates if (d.platform or {}).get("os", "linux") != "unknown"]
    linux = [d for d in usable if (d.platform or {}).get("os", "linux") == "linux"]
    native = [d for d in linux if (d.platform or {}).get("architecture") == _host_arch()]
    for group in (native, linux, usable):
        if group:
            return group[0]
    return None


def _tags(descriptor: _Descriptor, inherited: tuple[str, ...]) -> tuple[str, ...]:
    for key in _NAME_ANNOTATIONS:
        value = descriptor.annotations.get(key)
        if isinstance(value, str) and value:
            return (value,)
    return inherited


def read_oci_layout(archive: ImageArchive) -> list[ImageSpec]:
    """Read every image ``index.json`` reaches, verifying each document against its descriptor.

    Args:
        archive: an archive for which :func:`is_oci_layout` holds.

    Returns:
        The images, in index order (each manifest once).

    Raises:
        ImageError: a malformed ``oci-layout``, index, manifest or config, an unsupported media
            type, or a layer count that differs from the config's diff IDs.
        MissingBlob: a referenced blob is missing.
        DigestMismatch: a document does not match its descriptor.
    """
    layout = archive.read_json(LAYOUT_FILE)
    version = layout.get("imageLayoutVersion") if isinstance(layout, Mapping) else None
    if not isinstance(version, str) or not version.startswith("1."):
        raise ImageError(
            f"{archive.name}: {LAYOUT_FILE}: unsupported imageLayoutVersion {quoted(str(version))}",
            subject=LAYOUT_FILE,
        )
    index = archive.read_json(INDEX)
    top = _descriptors(index, "manifests", what=f"{archive.name}: {INDEX}")
    if not top:
        raise ImageError(f"{archive.name}: {INDEX}: lists no manifests", subject=INDEX)
    with_platform = [d for d in top if d.platform is not None]
    chosen = [d for d in top if d.platform is None]
    best = _best(with_platform)
    if best is not None:
        chosen.append(best)
    chosen.sort(key=top.index)
    images: dict[str, ImageSpec] = {}
    for descriptor in chosen:
        _collect(archive, descriptor, _tags(descriptor, ()), images, depth=0)
    if not images:
        raise ImageError(f"{archive.name}: {INDEX}: no image for this platform", subject=INDEX)
    return list(images.values())


def _collect(
    archive: ImageArchive,
    descriptor: _Descriptor,
    tags: tuple[str, ...],
    images: dict[str, ImageSpec],
    *,
    depth: int,
) -> None:
    if depth > _MAX_DEPTH:
        raise ImageError(f"{archive.name}: indexes nested too deeply", subject=descriptor.digest)
    if descriptor.digest in images:
        return
    if descriptor.media_type and descriptor.media_type not in _INDEX_TYPES | _MANIFEST_TYPES:
        raise ImageError(
            f"{archive.name}: {descriptor.member}: unsupported media type "
            f"{quoted(descriptor.media_type)} in an index",
            subject=descriptor.member,
        )
    data = read_verified(archive, descriptor.member, digest=descriptor.digest, size=descriptor.size)
    document = archive.read_json(descriptor.member, data=data)
    is_index = descriptor.media_type in _INDEX_TYPES or (
        not descriptor.media_type and isinstance(document, Mapping) and "manifests" in document
    )
    what = f"{archive.name}: {descriptor.member}"
    if is_index:
        best = _best(_descriptors(document, "manifests", what=what))
        if best is None:
            raise ImageError(f"{what}: index lists no usable manifest", subject=descriptor.member)
        _collect(archive, best, _tags(best, tags), images, depth=depth + 1)
        return
    images[descriptor.digest] = _read_manifest(archive, document, what=what, tags=tags)


def _read_manifest(
    archive: ImageArchive, manifest: Any, *, what: str, tags: tuple[str, ...]
) -> ImageSpec:
    if not isinstance(manifest, Mapping):
        raise ImageError(f"{what}: manifest is not a JSON object", subject=what)
    config = _descriptor(manifest.get("config"), what=f"{what}: config")
    layers = _descriptors(manifest, "layers", what=what)
    data = read_verified(archive, config.member, digest=config.digest, size=config.size)
    diff_ids = config_diff_ids(
        archive.read_json(config.member, data=data), where=f"{archive.name}: {config.member}"
    )
    if len(diff_ids) != len(layers):
        raise ImageError(
            f"{what}: lists {len(layers)} layers but its config has {len(diff_ids)} diff_ids",
            subject=what,
        )
    refs = []
    for i, (layer, diff_id) in enumerate(zip(layers, diff_ids, strict=True)):
        if layer.media_type and not LAYER_MEDIA_TYPE.fullmatch(layer.media_type):
            raise ImageError(
                f"{what}: layers[{i}]: unsupported layer media type {quoted(layer.media_type)}",
                subject=layer.member,
            )
        archive.size(layer.member)  # a missing layer fails now, before anything is imported
        refs.append(
            LayerRef(
                member=layer.member,
                diff_id=diff_id,
                digest=layer.digest,
                size=layer.size,
                media_type=layer.media_type,
            )
        )
    return ImageSpec(format=OCI_LAYOUT, config=config.digest, tags=tags, layers=tuple(refs))
