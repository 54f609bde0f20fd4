"""lcow's converted-layers artifact: an OCI 1.1 image manifest that refers to an image.

``lcow publish`` pushes, and ``lcow pull`` looks for, one manifest per converted image::

    {"schemaVersion": 2,
     "mediaType": "application/vnd.oci.image.manifest.v1+json",
     "artifactType": "application/vnd.lcow.layers.v1+json",
     "config": <the OCI empty descriptor: application/vnd.oci.empty.v1+json, "{}">,
     "layers": [{"mediaType": "application/vnd.lcow.layer.vhd.v1+zstd", "digest": ..., "size": ...,
                 "annotations": {"io.lcow.layer.diff-id": ..., "io.lcow.layer.chain-id": ...,
                                 "io.lcow.layer.content-size": ...,
                                 "io.lcow.layer.uncompressed-digest": ...,  (+zstd only)
                                 "io.lcow.layer.uncompressed-size": ...,    (+zstd only)
                                 "io.lcow.layer.verity-root-hash": ...,      (dm-verity only)
                                 "io.lcow.layer.verity-hash-offset": ...}}, (dm-verity only)
                ...],                                                    (base layer first)
     "subject": <the image manifest's descriptor>}

It is found through the referrers API (``GET /v2/<name>/referrers/<digest>``) or, on registries
without it, through the OCI 1.1 fallback tag ``sha256-<hex of the image manifest digest>``, an
OCI image index listing the artifacts that refer to that manifest. Every field is checked here
for shape; whether an artifact *matches* an image is :mod:`lcow.images.converted`'s question.
The manifest carries no time and no host fact: publishing the same layers twice gives the same
bytes, hence the same digest.

A layer blob is either the ``layer.vhd`` itself (:data:`LAYER_VHD_MEDIA_TYPE`, what the first
publishes pushed; still read) or one zstd frame of it (:data:`LAYER_VHD_ZSTD_MEDIA_TYPE`, what
``lcow publish`` pushes now), which names the ``layer.vhd``'s own digest and size in two more
annotations: the blob digest depends on the zstd library's version, the uncompressed digest
only on the layer image.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lcow._util.escape import quoted
from lcow.registry.client import Document
from lcow.registry.errors import RegistryError
from lcow.registry.resolve import OCI_INDEX, OCI_MANIFEST, BlobRef, descriptor

__all__ = [
    "ANNOTATION_CHAIN_ID",
    "ANNOTATION_CONTENT_SIZE",
    "ANNOTATION_DIFF_ID",
    "ANNOTATION_HASH_OFFSET",
    "ANNOTATION_ROOT_HASH",
    "ANNOTATION_UNCOMPRESSED_DIGEST",
    "ANNOTATION_UNCOMPRESSED_SIZE",
    "ARTIFACT_TYPE",
    "EMPTY_CONFIG",
    "EMPTY_MEDIA_TYPE",
    "LAYER_VHD_MEDIA_TYPE",
    "LAYER_VHD_ZSTD_MEDIA_TYPE",
    "MAX_CANDIDATES",
    "Artifact",
    "ArtifactLayer",
    "artifact_manifest",
    "candidates",
    "fallback_tag",
    "merge_fallback_index",
    "parse_artifact",
]

#: The ``artifactType`` of lcow's converted layers.
ARTIFACT_TYPE = "application/vnd.lcow.layers.v1+json"
#: The media type of a ``layer.vhd`` blob (a fixed VHD holding an ext4 image).
LAYER_VHD_MEDIA_TYPE = "application/vnd.lcow.layer.vhd.v1"
#: The media type of a zstd-compressed ``layer.vhd`` blob (one zstd frame).
LAYER_VHD_ZSTD_MEDIA_TYPE = "application/vnd.lcow.layer.vhd.v1+zstd"
#: OCI 1.1's empty descriptor's media type; the config of an artifact without one.
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
#: The empty config's bytes.
EMPTY_CONFIG = b"{}"
_EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

ANNOTATION_DIFF_ID = "io.lcow.layer.diff-id"
ANNOTATION_CHAIN_ID = "io.lcow.layer.chain-id"
ANNOTATION_CONTENT_SIZE = "io.lcow.layer.content-size"
ANNOTATION_ROOT_HASH = "io.lcow.layer.verity-root-hash"
ANNOTATION_HASH_OFFSET = "io.lcow.layer.verity-hash-offset"
ANNOTATION_UNCOMPRESSED_DIGEST = "io.lcow.layer.uncompressed-digest"
ANNOTATION_UNCOMPRESSED_SIZE = "io.lcow.layer.uncompressed-size"

#: Artifacts of ours tried per image at most (each costs a manifest request).
MAX_CANDIDATES = 8

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_ROOT_HASH = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ArtifactLayer:
    """One converted layer: its ``layer.vhd`` blob and what the publisher says it holds.

    Attributes:
        digest: the blob's digest.
        size: the blob's size.
        diff_id: the diff ID of the tar it was converted from (a claim of the publisher).
        chain_id: its chain ID (likewise).
        content_size: ApplyDiff's size of that tar (the unpacked bytes).
        root_hash: the dm-verity root hash (hex) when the image carries a hash tree.
        hash_offset: where the hash tree starts, with ``root_hash``.
        vhd_digest: the ``layer.vhd``'s digest when the blob is zstd-compressed.
        vhd_size: its size, likewise (``None`` both: the blob is the ``layer.vhd``).
    """

    digest: str
    size: int
    diff_id: str
    chain_id: str
    content_size: int
    root_hash: str | None = None
    hash_offset: int | None = None
    vhd_digest: str | None = None
    vhd_size: int | None = None

    @property
    def compressed(self) -> bool:
        """Whether the blob is a zstd frame of the ``layer.vhd`` (else the file itself)."""
        return self.vhd_digest is not None

    @property
    def media_type(self) -> str:
        """The blob's media type."""
        return LAYER_VHD_ZSTD_MEDIA_TYPE if self.compressed else LAYER_VHD_MEDIA_TYPE

    @property
    def image_digest(self) -> str:
        """The ``layer.vhd``'s digest."""
        return self.vhd_digest if self.vhd_digest is not None else self.digest

    @property
    def image_size(self) -> int:
        """The ``layer.vhd``'s size."""
        return self.vhd_size if self.vhd_size is not None else self.size


@dataclass(frozen=True)
class Artifact:
    """A parsed artifact manifest.

    Attributes:
        digest: the manifest's digest.
        subject: the digest of the image manifest it refers to.
        layers: the converted layers, base first.
    """

    digest: str
    subject: str
    layers: tuple[ArtifactLayer, ...]


def fallback_tag(digest: str) -> str:
    """The OCI 1.1 referrers fallback tag of a manifest: ``sha256-<hex>``."""
    algorithm, _, hex_digest = digest.partition(":")
    return f"{algorithm}-{hex_digest}"


def _empty_config() -> dict[str, object]:
    return {"mediaType": EMPTY_MEDIA_TYPE, "digest": _EMPTY_DIGEST, "size": len(EMPTY_CONFIG)}


def _ref(ref: BlobRef) -> dict[str, object]:
    return {"mediaType": ref.media_type, "digest": ref.digest, "size": ref.size}


def artifact_manifest(subject: BlobRef, layers: Sequence[ArtifactLayer]) -> bytes:
    """The artifact manifest's bytes (deterministic: sorted keys, no times)."""
    entries = []
    for layer in layers:
        annotations = {
            ANNOTATION_DIFF_ID: layer.diff_id,
            ANNOTATION_CHAIN_ID: layer.chain_id,
            ANNOTATION_CONTENT_SIZE: str(layer.content_size),
        }
        if layer.root_hash is not None:
            annotations[ANNOTATION_ROOT_HASH] = layer.root_hash
            annotations[ANNOTATION_HASH_OFFSET] = str(layer.hash_offset)
        if layer.compressed:
            annotations[ANNOTATION_UNCOMPRESSED_DIGEST] = layer.image_digest
            annotations[ANNOTATION_UNCOMPRESSED_SIZE] = str(layer.image_size)
        entries.append({"mediaType": layer.media_type, "digest": layer.digest,
                        "size": layer.size, "annotations": annotations})  # fmt: skip
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": _empty_config(),
        "layers": entries,
        "subject": _ref(subject),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _index_entries(document: Document, what: str) -> list[Any]:
    """The ``manifests`` of an OCI image index, checked for shape."""
    parsed = document.json(what)
    if not isinstance(parsed, Mapping):
        raise RegistryError(f"{what}: not a JSON object", subject=what)
    declared = parsed.get("mediaType")
    kind = declared if isinstance(declared, str) and declared else document.media_type
    if kind != OCI_INDEX:
        raise RegistryError(f"{what}: not an OCI image index (media type {quoted(str(kind))})",
                            subject=what)  # fmt: skip
    entries = parsed.get("manifests", [])
    if not isinstance(entries, list):
        raise RegistryError(f"{what}: 'manifests' is not a list", subject=what)
    return entries


def candidates(document: Document, what: str) -> list[BlobRef]:
    """The entries of a referrers answer or fallback index whose ``artifactType`` is lcow's
    (at most :data:`MAX_CANDIDATES`, in the index's order).

    Raises:
        RegistryError: not an OCI image index, or a malformed entry of ours.
    """
    found = []
    for i, entry in enumerate(_index_entries(document, what)):
        if not isinstance(entry, Mapping) or entry.get("artifactType") != ARTIFACT_TYPE:
            continue
        ref = descriptor(entry, f"{what}: manifests[{i}]")
        if ref.media_type != OCI_MANIFEST:
            raise RegistryError(f"{what}: manifests[{i}]: media type {quoted(ref.media_type)}, "
                                f"not {OCI_MANIFEST}", subject=what)  # fmt: skip
        found.append(ref)
        if len(found) == MAX_CANDIDATES:
            break
    return found


def merge_fallback_index(existing: Document | None, artifact: BlobRef, what: str) -> bytes:
    """The fallback tag's index with ``artifact`` listed once: every other entry of
    ``existing`` is kept as it was, an entry with the same digest is replaced.

    Raises:
        RegistryError: ``existing`` is not an OCI image index.
    """
    entries: list[Any] = [] if existing is None else _index_entries(existing, what)
    kept = [
        entry
        for entry in entries
        if not (isinstance(entry, Mapping) and entry.get("digest") == artifact.digest)
    ]
    kept.append({"mediaType": artifact.media_type, "digest": artifact.digest,
                 "size": artifact.size, "artifactType": ARTIFACT_TYPE})  # fmt: skip
    document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": kept}
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _annotation(annotations: Mapping[str, Any], key: str, what: str) -> str:
    value = annotations.get(key)
    if not isinstance(value, str) or not value:
        raise RegistryError(f"{what}: annotation {key} is missing or not a string", subject=what)
    return value


def _count(text: str, key: str, what: str) -> int:
    if not text.isdigit() or len(text) > 20:
        raise RegistryError(f"{what}: annotation {key} is not a byte count", subject=what)
    return int(text)


def _layer(value: Any, what: str) -> ArtifactLayer:
    ref = descriptor(value, what)
    if ref.media_type not in (LAYER_VHD_MEDIA_TYPE, LAYER_VHD_ZSTD_MEDIA_TYPE):
        raise RegistryError(f"{what}: media type {quoted(ref.media_type)}, not "
                            f"{LAYER_VHD_ZSTD_MEDIA_TYPE} or {LAYER_VHD_MEDIA_TYPE}",
                            subject=what)  # fmt: skip
    annotations = value.get("annotations")
    if not isinstance(annotations, Mapping):
        raise RegistryError(f"{what}: no annotations", subject=what)
    diff_id = _annotation(annotations, ANNOTATION_DIFF_ID, what)
    chain = _annotation(annotations, ANNOTATION_CHAIN_ID, what)
    for key, digest in ((ANNOTATION_DIFF_ID, diff_id), (ANNOTATION_CHAIN_ID, chain)):
        if not _DIGEST.fullmatch(digest):
            raise RegistryError(f"{what}: annotation {key} is not a sha256 digest", subject=what)
    content = _count(_annotation(annotations, ANNOTATION_CONTENT_SIZE, what),
                     ANNOTATION_CONTENT_SIZE, what)  # fmt: skip
    root_hash = offset = None
    if ANNOTATION_ROOT_HASH in annotations:
        root_hash = _annotation(annotations, ANNOTATION_ROOT_HASH, what)
        if not _ROOT_HASH.fullmatch(root_hash):
            raise RegistryError(f"{what}: annotation {ANNOTATION_ROOT_HASH} is not 64 hex digits",
                                subject=what)  # fmt: skip
        offset = _count(_annotation(annotations, ANNOTATION_HASH_OFFSET, what),
                        ANNOTATION_HASH_OFFSET, what)  # fmt: skip
    vhd_digest = vhd_size = None
    if ref.media_type == LAYER_VHD_ZSTD_MEDIA_TYPE:
        vhd_digest = _annotation(annotations, ANNOTATION_UNCOMPRESSED_DIGEST, what)
        if not _DIGEST.fullmatch(vhd_digest):
            raise RegistryError(f"{what}: annotation {ANNOTATION_UNCOMPRESSED_DIGEST} is not a "
                                "sha256 digest", subject=what)  # fmt: skip
        vhd_size = _count(_annotation(annotations, ANNOTATION_UNCOMPRESSED_SIZE, what),
                          ANNOTATION_UNCOMPRESSED_SIZE, what)  # fmt: skip
    return ArtifactLayer(ref.digest, ref.size, diff_id, chain, content, root_hash, offset,
                         vhd_digest, vhd_size)  # fmt: skip


def parse_artifact(document: Document, what: str) -> Artifact:
    """Parse an artifact manifest of lcow's.

    Raises:
        RegistryError: not JSON, not an OCI image manifest of ``artifactType``
            :data:`ARTIFACT_TYPE`, no subject, or a layer without the annotations.
    """
    parsed = document.json(what)
    if not isinstance(parsed, Mapping):
        raise RegistryError(f"{what}: not a JSON object", subject=what)
    declared = parsed.get("mediaType")
    if declared != OCI_MANIFEST:
        raise RegistryError(f"{what}: media type {quoted(str(declared))}, not {OCI_MANIFEST}",
                            subject=what)  # fmt: skip
    if parsed.get("artifactType") != ARTIFACT_TYPE:
        raise RegistryError(f"{what}: artifactType {quoted(str(parsed.get('artifactType')))}, "
                            f"not {ARTIFACT_TYPE}", subject=what)  # fmt: skip
    subject = descriptor(parsed.get("subject"), f"{what}: subject")
    layers = parsed.get("layers")
    if not isinstance(layers, list):
        raise RegistryError(f"{what}: 'layers' is not a list", subject=what)
    return Artifact(
        digest=document.digest,
        subject=subject.digest,
        layers=tuple(_layer(v, f"{what}: layers[{i}]") for i, v in enumerate(layers)),
    )
