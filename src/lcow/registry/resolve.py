"""From a reference to one image manifest: indexes resolved to a platform, documents checked.

A tag (or digest) names a Docker schema 2 manifest or an OCI image manifest, or a Docker
manifest list or OCI image index, whose entry for the platform is then fetched by digest (as
``docker pull`` does, strictly: no entry for the platform is an error listing those there are;
attestation entries, platform ``unknown/unknown``, never match). Every document is capped in
size (:data:`~lcow.registry.client.MAX_DOCUMENT`), must be JSON, and is checked against the
digest and size its descriptor gives; Docker schema 1 manifests are refused with a clear
message. The config is fetched (capped, verified); layers are only described here.
"""

from __future__ import annotations

import logging
import platform as _platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lcow._util.escape import quoted
from lcow.errors import InvalidArgument, NotFound
from lcow.registry.client import Document, RegistryClient
from lcow.registry.errors import BlobMismatch, RegistryError
from lcow.registry.reference import Reference

__all__ = [
    "ACCEPT",
    "BlobRef",
    "Platform",
    "ResolvedImage",
    "descriptor",
    "host_platform",
    "parse_platform",
    "resolve",
]

log = logging.getLogger(__name__)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
_INDEXES = (OCI_INDEX, DOCKER_LIST)
_MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
#: The ``Accept`` header of manifest requests, most wanted first.
ACCEPT = (OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "i386": "386"}
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_MAX_DEPTH = 4


@dataclass(frozen=True)
class Platform:
    """``os/architecture[/variant]`` as in an index's ``platform`` object."""

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        tail = f"/{self.variant}" if self.variant else ""
        return f"{self.os}/{self.architecture}{tail}"

    def matches(self, entry: Mapping[str, Any]) -> bool:
        """Whether an index entry's ``platform`` is this one (a missing variant matches
        ``arm64``'s default ``v8`` and any variant when none is asked for)."""
        if entry.get("os") != self.os or entry.get("architecture") != self.architecture:
            return False
        if self.variant is None:
            return True
        variant = entry.get("variant") or ("v8" if self.architecture == "arm64" else None)
        return variant == self.variant


def host_platform() -> Platform:
    """``linux/<this machine's architecture>`` (Linux containers, whatever the host)."""
    machine = _platform.machine().lower()
    return Platform("linux", _ARCH.get(machine, machine))


def parse_platform(text: str) -> Platform:
    """Parse ``os/arch[/variant]`` (``linux/arm64/v8``).

    Raises:
        InvalidArgument: not of that form.
    """
    parts = text.split("/")
    if not 2 <= len(parts) <= 3 or not all(re.fullmatch(r"[a-z0-9_.-]+", p) for p in parts):
        raise InvalidArgument(f"{quoted(text)}: not a platform (os/arch[/variant])", subject=text)
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


@dataclass(frozen=True)
class BlobRef:
    """A descriptor: ``digest`` (sha256), ``size`` and ``media_type`` of a blob."""

    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class ResolvedImage:
    """The image a reference names, for one platform.

    Attributes:
        reference: what was asked for.
        digest: the digest of what the reference names (the index's, for a multi-platform
            image: what ``docker pull`` prints as the image's digest).
        manifest_digest: the image manifest's own digest.
        media_type: the image manifest's media type.
        platform: the platform chosen in an index, or ``None`` for a single-manifest image.
        config: the config's descriptor.
        config_data: the config's bytes (verified).
        layers: the layer descriptors, base first.
    """

    reference: Reference
    digest: str
    manifest_digest: str
    media_type: str
    platform: Platform | None
    config: BlobRef
    config_data: bytes
    layers: tuple[BlobRef, ...]


def descriptor(value: Any, what: str) -> BlobRef:
    """Parse a descriptor (``digest``, ``size``, ``mediaType``) of a manifest or index.

    Raises:
        RegistryError: not an object, a digest that is not sha256, a bad size or media type.
    """
    if not isinstance(value, Mapping):
        raise RegistryError(f"{what}: descriptor is not a JSON object", subject=what)
    digest, size, media_type = value.get("digest"), value.get("size"), value.get("mediaType", "")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise RegistryError(f"{what}: unsupported or invalid digest {quoted(str(digest))} "
                            "(only sha256)", subject=what)  # fmt: skip
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RegistryError(f"{what}: 'size' is not a non-negative integer", subject=what)
    if not isinstance(media_type, str):
        raise RegistryError(f"{what}: 'mediaType' is not a string", subject=what)
    return BlobRef(digest, size, media_type)


def _kind(document: Document, parsed: Any, what: str) -> str:
    if not isinstance(parsed, Mapping):
        raise RegistryError(f"{what}: not a JSON object", subject=what)
    declared = parsed.get("mediaType")
    kind = declared if isinstance(declared, str) and declared else document.media_type
    if kind in _SCHEMA1 or parsed.get("schemaVersion") == 1:
        raise RegistryError(
            f"{what}: a Docker schema 1 manifest; only schema 2 and OCI images are supported "
            "(re-push the image with a current client)",
            subject=what,
        )
    if kind not in _INDEXES and kind not in _MANIFESTS:
        if "manifests" in parsed:
            return OCI_INDEX
        if "layers" in parsed and "config" in parsed:
            return OCI_MANIFEST
        raise RegistryError(f"{what}: unsupported media type {quoted(str(kind))}", subject=what)
    return kind


def _choose(index: Any, wanted: Platform, what: str) -> BlobRef:
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise RegistryError(f"{what}: 'manifests' is not a list", subject=what)
    seen = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise RegistryError(f"{what}: manifests[{i}] is not a JSON object", subject=what)
        found = entry.get("platform")
        if not isinstance(found, Mapping):
            continue
        if found.get("os") == "unknown":
            continue  # an attestation (buildx's provenance and SBOMs)
        seen.append(str(Platform(str(found.get("os")), str(found.get("architecture")),
                                 found.get("variant") or None)))  # fmt: skip
        if wanted.matches(found):
            return descriptor(entry, f"{what}: manifests[{i}]")
    raise NotFound(
        f"{what}: no manifest for {wanted} (it has: {', '.join(seen) or 'none'})", subject=what
    )


def resolve(client: RegistryClient, reference: Reference, platform: Platform) -> ResolvedImage:
    """Fetch and check what ``reference`` names, down to the manifest for ``platform``.

    Raises:
        RegistryError: a document that is not JSON, too big, of an unsupported kind, or that
            does not match its digest.
        NotFound: no such tag or digest, or no entry for the platform.
    """
    name = f"{reference.name}"
    document = client.manifest(reference.lookup, ACCEPT)
    top_digest = document.digest
    chosen: Platform | None = None
    expected: BlobRef | None = None
    for _ in range(_MAX_DEPTH):
        what = f"{name}@{document.digest}"
        if expected is not None and len(document.data) != expected.size:
            raise BlobMismatch(f"{what}: {len(document.data)} bytes, its descriptor says "
                               f"{expected.size}", digest=expected.digest)  # fmt: skip
        parsed = document.json(what)
        kind = _kind(document, parsed, what)
        if kind in _MANIFESTS:
            break
        expected = _choose(parsed, platform, what)
        chosen = platform
        document = client.manifest(expected.digest, ACCEPT)
    else:
        raise RegistryError(f"{name}: indexes nested too deeply", subject=name)
    config = descriptor(parsed.get("config"), f"{what}: config")
    layers = parsed.get("layers")
    if not isinstance(layers, list):
        raise RegistryError(f"{what}: 'layers' is not a list", subject=what)
    refs = tuple(descriptor(layer, f"{what}: layers[{i}]") for i, layer in enumerate(layers))
    config_data = client.blob_bytes(config.digest, config.size, "config")
    return ResolvedImage(
        reference=reference,
        digest=top_digest,
        manifest_digest=document.digest,
        media_type=kind,
        platform=chosen,
        config=config,
        config_data=config_data,
        layers=refs,
    )
