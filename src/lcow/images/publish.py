"""Publish the converted layers of a pulled image to its repository (issue 16 part 3).

The image must be one this data root holds by name (:mod:`lcow.images.store`), every layer a
verified one (its ``lcow-layer.json`` records the diff ID and chain ID an import or pull
checked). Steps:

1. the image manifest is fetched by the digest recorded at pull (it becomes the ``subject``;
   its media type and size come from the registry, and it must still be there);
2. each ``layer.vhd`` is hashed and compressed, in one pass, into one zstd frame (level
   :data:`ZSTD_LEVEL`, a checksum, the content size; a temporary file in the data root's
   ``scratch/``), which is uploaded unless the repository has it already (``HEAD``),
   as one monolithic ``POST`` + ``PUT ?digest=`` streamed from the file — layer images are
   local files of known length, so chunked ``PATCH`` uploads would add round trips and buy
   only resumption, which a failed publish does not need (running it again uploads what is
   missing);
3. the OCI empty config (``{}``), then the artifact manifest (:mod:`lcow.registry.artifact`),
   are pushed, the manifest by digest;
4. registries with the referrers API list it on their own; on others the fallback tag
   ``sha256-<hex>`` is read, the artifact put into its index (other entries kept, an entry of
   the same digest replaced) and the index pushed back. Read-modify-write: two publishers
   racing on one image can drop each other's entry (the OCI fallback scheme has no lock).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast

from lcow.errors import FailedPrecondition, NotFound
from lcow.images.chainid import layer_id
from lcow.images.store import ImageRecord
from lcow.registry.artifact import (
    EMPTY_CONFIG,
    Artifact,
    ArtifactLayer,
    artifact_manifest,
    candidates,
    fallback_tag,
    merge_fallback_index,
)
from lcow.registry.client import RegistryClient
from lcow.registry.resolve import ACCEPT, OCI_INDEX, OCI_MANIFEST, BlobRef
from lcow.storage.dataroot import LAYER_VHD

if TYPE_CHECKING:
    from lcow.graphdriver.driver import Driver

__all__ = ["ZSTD_LEVEL", "ZSTD_THREADS", "PublishResult", "PublishedLayer", "publish_image"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_COMPRESS_CHUNK = 4 << 20
#: zstd's level for layer blobs: fast (hundreds of MB/s), about the size of the gzip tar.
ZSTD_LEVEL = 3
#: zstd worker threads. Any count >= 1 gives the same bytes (libzstd's multi-threaded mode is
#: deterministic whatever the count; single-threaded mode, 0, would give other bytes).
ZSTD_THREADS = 2


@dataclass(frozen=True)
class PublishedLayer:
    """One layer of a publish.

    Attributes:
        layer: what the artifact says about it.
        layer_id: the data-root id.
        uploaded: sent by this publish (``False``: the repository had the blob).
    """

    layer: ArtifactLayer
    layer_id: str
    uploaded: bool


@dataclass(frozen=True)
class PublishResult:
    """What a publish did.

    Attributes:
        artifact: the artifact manifest's digest.
        subject: the image manifest's digest.
        index: how pullers find it: ``referrers`` (the registry's API) or the fallback tag.
        layers: the layers, base first.
    """

    artifact: str
    subject: str
    index: str
    layers: tuple[PublishedLayer, ...]


class _HashingSink:
    """Where the compressor writes: the temporary file, hashed and counted on the way."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.file.write(data)


def _compress(path: Path, out: IO[bytes]) -> tuple[str, int, str, int]:
    """Compress ``path`` into ``out`` as one zstd frame: its digest and size, then the blob's."""
    import zstandard

    size = path.stat().st_size
    digest = hashlib.sha256()
    sink = _HashingSink(out)
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=ZSTD_THREADS,
                                          write_checksum=True, write_content_size=True)  # fmt: skip
    with (
        path.open("rb") as file,
        compressor.stream_writer(cast("IO[bytes]", sink), size=size, closefd=False) as z,
    ):
        read = 0
        while chunk := file.read(_COMPRESS_CHUNK):
            digest.update(chunk)
            z.write(chunk)
            read += len(chunk)
    if read != size:
        raise FailedPrecondition(f"{path}: changed size while it was compressed", subject=str(path))
    out.flush()
    return f"sha256:{digest.hexdigest()}", size, f"sha256:{sink.digest.hexdigest()}", sink.size


def _reader(file: IO[bytes]) -> Callable[[], Iterator[bytes]]:
    def chunks() -> Iterator[bytes]:
        file.seek(0)
        while chunk := file.read(_CHUNK):
            yield chunk

    return chunks


def _layer(
    driver: Driver, record: ImageRecord, lid: str, out: IO[bytes]
) -> tuple[ArtifactLayer, IO[bytes]]:
    """The artifact's description of a verified layer, its image compressed into ``out``."""
    path = driver.root.layer_dir(lid) / LAYER_VHD
    meta = driver.root.read_meta(lid)
    diff_id, chain = meta.get("diff_id"), meta.get("chain_id")
    if not path.is_file():
        raise NotFound(f"{record.name}: layer {lid} is missing from the data root (pull the "
                       "image again)", subject=lid)  # fmt: skip
    if not isinstance(diff_id, str) or not isinstance(chain, str) or layer_id(chain) != lid:
        raise FailedPrecondition(f"{record.name}: layer {lid} is not a verified layer (no diff "
                                 "ID recorded by an import or pull)", subject=lid)  # fmt: skip
    content = meta.get("content_size")
    root_hash, offset = meta.get("root_hash"), meta.get("hash_offset")
    with_verity = isinstance(root_hash, str) and isinstance(offset, int)
    vhd_digest, vhd_size, digest, size = _compress(path, out)
    return (
        ArtifactLayer(
            digest=digest,
            size=size,
            diff_id=diff_id,
            chain_id=chain,
            content_size=content if isinstance(content, int) else 0,
            root_hash=root_hash if with_verity else None,
            hash_offset=offset if with_verity else None,
            vhd_digest=vhd_digest,
            vhd_size=vhd_size,
        ),
        out,
    )


def publish_image(driver: Driver, client: RegistryClient, record: ImageRecord) -> PublishResult:
    """Push the converted layers of ``record`` as an artifact referring to its manifest.

    Args:
        driver: the driver of the data root holding the image.
        client: a push client (``push=True``) of the image's repository.
        record: the image, as :func:`lcow.images.store.read_records` gives it.

    Raises:
        NotFound: a layer, or the image manifest in the registry, is missing.
        FailedPrecondition: a layer was not verified by an import or a pull.
        RegistryError, Unauthorized, Timeout, RegistryUnavailable: from the registry.
    """
    with ExitStack() as stack:
        layers = [
            _layer(driver, record, lid, stack.enter_context(
                tempfile.TemporaryFile(dir=driver.root.scratch, prefix="publish-")))
            for lid in record.layers
        ]  # fmt: skip
        return _push(client, record, layers)


def _push(
    client: RegistryClient, record: ImageRecord, layers: list[tuple[ArtifactLayer, IO[bytes]]]
) -> PublishResult:
    """Push the compressed layers, the config and the artifact; list it."""
    manifest = client.manifest(record.manifest, ACCEPT)
    kind = manifest.media_type or OCI_MANIFEST
    subject = BlobRef(record.manifest, len(manifest.data), kind)
    done = []
    for (layer, blob), lid in zip(layers, record.layers, strict=True):
        uploaded = not client.blob_exists(layer.digest)
        if uploaded:
            log.info("%s: uploading layer %s (%d bytes, zstd of %d)", record.name, lid,
                     layer.size, layer.image_size)  # fmt: skip
            client.push_blob(layer.digest, layer.size, _reader(blob))
        done.append(PublishedLayer(layer, lid, uploaded))
    empty = f"sha256:{hashlib.sha256(EMPTY_CONFIG).hexdigest()}"
    if not client.blob_exists(empty):
        client.push_blob(empty, len(EMPTY_CONFIG), EMPTY_CONFIG)
    data = artifact_manifest(subject, [layer for layer, _ in layers])
    digest = client.put_manifest(f"sha256:{hashlib.sha256(data).hexdigest()}", data, OCI_MANIFEST)
    artifact = Artifact(digest, record.manifest, tuple(layer for layer, _ in layers))
    index = _list(client, artifact, BlobRef(digest, len(data), OCI_MANIFEST))
    return PublishResult(artifact=digest, subject=record.manifest, index=index,
                         layers=tuple(done))  # fmt: skip


def _list(client: RegistryClient, artifact: Artifact, ref: BlobRef) -> str:
    """Make the artifact findable: nothing to do with the referrers API, else the fallback
    tag's index (read, merged, written back). Returns ``referrers`` or the tag."""
    listing = client.referrers(artifact.subject, OCI_INDEX)
    if listing is not None:  # checked, so that a broken answer is not taken for the API
        candidates(listing, f"{client.registry}/{client.repository}: referrers of "
                   f"{artifact.subject}")  # fmt: skip
        return "referrers"
    tag = fallback_tag(artifact.subject)
    what = f"{client.registry}/{client.repository}: fallback index {tag}"
    try:
        existing = client.manifest(tag, (OCI_INDEX,))
    except NotFound:
        existing = None
    client.put_manifest(tag, merge_fallback_index(existing, ref, what), OCI_INDEX)
    return tag
