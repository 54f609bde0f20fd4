"""Converted pulls: land an image's layers from a published artifact (issue 16 part 4).

:func:`find_artifact` looks for an artifact of lcow's referring to the image manifest being
pulled (the referrers API, else the fallback tag; a 404 means none) and keeps the first whose
facts match the image the user asked for:

* its ``subject`` is the manifest's digest;
* it has as many layers as the image config has diff IDs, and each layer's diff-ID annotation
  equals the config's at that position, its chain-ID annotation the chain ID computed here;
* its layers carry a dm-verity hash tree exactly when this data root makes them
  (``lcow.dmverity``: the option is part of a layer image's bytes).

:func:`land_converted` then downloads each missing layer's blob into a temporary file in the
layer's folder while hashing it — decompressing it on the way when it is zstd, whose result
must have the uncompressed size and digest the annotations name — checks the digest and size
the artifact names, that the file is a lcow layer image (VHD footer of a fixed disk of the right
size, an ext4 superblock lcow reads, the verity superblock where the annotation says), and only
then renames it into place with the metadata an import writes (diff ID, chain ID, sizes, verity
root hash) plus ``converted_from`` (``registry/repository@artifact-digest``). Verified layers
already there are reused; a failure removes the layers this attempt created, and the caller
falls back to the tar layers.

What this proves and what it does not: the bytes are the ones the artifact names, and the
artifact is about this image. That ``layer.vhd`` holds the tar whose diff ID it is annotated
with is the publisher's claim — nothing here can check it without the tar, whose conversion is
what a converted pull saves. See docs/registry.md, "Trust".
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING

from lcow._util.atomic import atomic_output
from lcow._util.bghash import BackgroundHash
from lcow._util.decompress import decompress
from lcow._util.hashwriter import HashingWriter
from lcow.errors import CorruptImage, InvalidArgument, LcowError, NotFound
from lcow.formats.ext4.read_super import parse_superblock
from lcow.formats.verity import content_uuid, read_verity_superblock
from lcow.formats.vhd.footer import DISK_TYPE_FIXED, FOOTER_SIZE, parse_footer
from lcow.images.chainid import chain_ids, layer_id
from lcow.images.errors import DigestMismatch
from lcow.images.importer import ImportedImage, ImportedLayer, ImportResult, layer_present
from lcow.images.model import ImageSpec
from lcow.registry.artifact import (
    Artifact,
    ArtifactLayer,
    candidates,
    fallback_tag,
    parse_artifact,
)
from lcow.registry.client import BlobReader, RegistryClient
from lcow.registry.errors import BlobMismatch
from lcow.registry.resolve import OCI_INDEX, OCI_MANIFEST
from lcow.storage.dataroot import LAYER_VHD, DataRoot

if TYPE_CHECKING:
    from lcow.graphdriver.driver import Driver
    from lcow.graphdriver.staged import StagedLayer

__all__ = ["CONVERTED_FORMAT", "artifact_mismatch", "find_artifact", "land_converted"]

log = logging.getLogger(__name__)

#: ``ImportResult.format`` of a converted pull.
CONVERTED_FORMAT = "registry-converted"
_CHUNK = 1 << 20
# Decompressed bytes per piece. Each piece is a fresh bytes object: at 4 MiB the allocator
# maps and unmaps it anew, and the page faults cost 3-5x the system time of 1 MiB pieces.
_ZSTD_CHUNK = 1 << 20
# The image is fsynced before it is renamed into place: its writeback starts every this many
# bytes while it streams, so that fsync waits for the last few MiB, not for the whole image
# (0.09 s for a 211 MB image here, nearly all of it then overlapped with the download).
_WRITE_BEHIND = 16 << 20
_SUPERBLOCK_AT = 1024
_SUPERBLOCK_SIZE = 1024


def artifact_mismatch(
    artifact: Artifact, manifest_digest: str, diff_ids: Sequence[str], *, verity: bool
) -> str | None:
    """Why ``artifact`` does not fit the image (``None`` when it does)."""
    if artifact.subject != manifest_digest:
        return f"its subject is {artifact.subject}, not the image manifest {manifest_digest}"
    if len(artifact.layers) != len(diff_ids):
        return f"it has {len(artifact.layers)} layers, the image config {len(diff_ids)} diff IDs"
    for i, (layer, diff_id, chain) in enumerate(
        zip(artifact.layers, diff_ids, chain_ids(list(diff_ids)), strict=True)
    ):
        if layer.diff_id != diff_id:
            return (f"layers[{i}]: diff ID annotation {layer.diff_id}, the image config says "
                    f"{diff_id}")  # fmt: skip
        if layer.chain_id != chain:
            return f"layers[{i}]: chain ID annotation {layer.chain_id}, computed {chain}"
        if (layer.root_hash is not None) != verity:
            made = "with" if layer.root_hash is not None else "without"
            root = "makes" if verity else "does not make"
            return (f"layers[{i}] was converted {made} dm-verity; this data root {root} "
                    "verity layers (lcow.dmverity)")  # fmt: skip
    return None


def find_artifact(
    client: RegistryClient, manifest_digest: str, diff_ids: Sequence[str], *, verity: bool
) -> Artifact | None:
    """The first artifact of lcow's that matches the image, or ``None``.

    Artifacts that do not match, and answers that are not usable (not JSON, too big, not an
    index), are logged as warnings naming them and skipped: a converted pull is an
    optimisation, and the tar layers remain.
    """
    where = f"{client.registry}/{client.repository}"
    try:
        listing = client.referrers(manifest_digest, OCI_INDEX)
        what = f"{where}: referrers of {manifest_digest}"
        if listing is None:
            what = f"{where}: fallback index {fallback_tag(manifest_digest)}"
            try:
                listing = client.manifest(fallback_tag(manifest_digest), (OCI_INDEX,))
            except NotFound:
                return None
        refs = candidates(listing, what)
    except LcowError as exc:
        log.warning("%s; not using converted layers", exc)
        return None
    for ref in refs:
        what = f"{where}@{ref.digest}"
        try:
            document = client.manifest(ref.digest, (OCI_MANIFEST,))
            if len(document.data) != ref.size:
                raise BlobMismatch(f"{what}: {len(document.data)} bytes, its descriptor says "
                                   f"{ref.size}", digest=ref.digest)  # fmt: skip
            artifact = parse_artifact(document, f"artifact {what}")
        except LcowError as exc:
            log.warning("converted layers refused: %s", exc)
            continue
        why = artifact_mismatch(artifact, manifest_digest, diff_ids, verity=verity)
        if why is None:
            return artifact
        log.warning("converted layers refused: artifact %s: %s", what, why)
    return None


def _check_image(fd: int, layer: ArtifactLayer, name: str) -> None:
    """Whether the downloaded file is a lcow layer image: the footer of a fixed VHD whose
    disk is the rest of the file, an ext4 superblock lcow reads, and the verity superblock
    at the annotated offset (its UUID derived from the root hash, as lcow writes it).

    Raises:
        CorruptImage: it is not.
    """
    disk = layer.image_size - FOOTER_SIZE
    if disk < _SUPERBLOCK_AT + _SUPERBLOCK_SIZE:
        raise CorruptImage(f"{name}: {layer.image_size} bytes is too small for a layer image",
                           subject=layer.digest)  # fmt: skip
    try:
        footer = parse_footer(os.pread(fd, FOOTER_SIZE, disk))
    except CorruptImage as exc:
        raise CorruptImage(f"{name}: not a VHD: {exc}", subject=layer.digest) from exc
    if footer.disk_type != DISK_TYPE_FIXED or footer.current_size != disk:
        raise CorruptImage(f"{name}: not a fixed VHD of {disk} bytes", subject=layer.digest)
    data = disk if layer.hash_offset is None else layer.hash_offset
    if data > disk:
        raise CorruptImage(f"{name}: the verity hash offset is past the disk's end",
                           subject=layer.digest)  # fmt: skip
    parse_superblock(os.pread(fd, _SUPERBLOCK_SIZE, _SUPERBLOCK_AT), disk_size=data, name=name,
                     verify=True)  # fmt: skip
    if layer.root_hash is not None:
        verity = read_verity_superblock(os.pread(fd, 512, data))
        if verity.data_size != data or verity.uuid != content_uuid(bytes.fromhex(layer.root_hash)):
            raise CorruptImage(f"{name}: its dm-verity superblock does not match the "
                               "annotations", subject=layer.digest)  # fmt: skip


def _digest_error(name: str, what: str, expected: str, got: str) -> DigestMismatch:
    return DigestMismatch(f"{name}: {what} mismatch: got {got}", subject=expected,
                          expected=expected, got=got)  # fmt: skip


def _copy_plain(reader: BlobReader, fd: int, layer: ArtifactLayer, name: str,
                progress: Callable[[int], None] | None) -> None:  # fmt: skip
    """An uncompressed ``layer.vhd`` blob (the first publishes' media type)."""
    with HashingWriter(fd, layer.digest, write_behind=_WRITE_BEHIND) as writer:
        while chunk := reader.read(_CHUNK):
            writer.write(chunk)
            if progress is not None:
                progress(len(chunk))
    if writer.digest != layer.digest:
        raise _digest_error(name, "digest", layer.digest, writer.digest)


def _copy_zstd(reader: BlobReader, fd: int, layer: ArtifactLayer, name: str,
               progress: Callable[[int], None] | None) -> None:  # fmt: skip
    """A zstd-compressed blob: the blob's digest (and size, by the reader) checked as it
    streams, its decompressed bytes' size and digest against the annotations. Receiving and
    decompressing run here (zstandard holds the GIL while it decompresses, so this thread is
    the pipeline's critical path), hashing the blob on a helper thread, hashing and writing the
    output on another."""
    blob = BackgroundHash(f"lcow-sha256 {layer.digest}")

    def read(n: int) -> bytes:
        data = reader.read(n)
        blob.update(data)
        if progress is not None:
            progress(len(data))
        return data

    written = 0
    try:
        try:
            with HashingWriter(fd, layer.digest, write_behind=_WRITE_BEHIND) as writer:
                for piece in decompress("zstd", read, name=name, chunk=_ZSTD_CHUNK):
                    written += len(piece)
                    if written > layer.image_size:  # a bomb ends here, not when the disk is full
                        raise CorruptImage(f"{name}: decompresses to more than its annotated "
                                           f"{layer.image_size} bytes",
                                           subject=layer.digest)  # fmt: skip
                    writer.write(piece)
        except InvalidArgument as exc:
            # Damaged on the way, or published so? Only the rest of the blob can tell.
            got = None
            with contextlib.suppress(LcowError, OSError):
                while read(_CHUNK):
                    pass
                got = blob.digest()
            if got is not None and got != layer.digest:
                raise _digest_error(name, "digest", layer.digest, got) from exc
            raise CorruptImage(str(exc), subject=layer.digest) from exc
        got = blob.digest()
    finally:
        blob.close()
    if got != layer.digest:
        raise _digest_error(name, "digest", layer.digest, got)
    if written != layer.image_size:
        raise CorruptImage(f"{name}: decompresses to {written} bytes, its annotation says "
                           f"{layer.image_size}", subject=layer.digest)  # fmt: skip
    if writer.digest != layer.image_digest:
        raise _digest_error(name, "uncompressed digest", layer.image_digest, writer.digest)


def _download(  # noqa: PLR0913 - the layer and its folder, then keyword-only provenance, progress
    driver: Driver,
    client: RegistryClient,
    folder: Path,
    layer: ArtifactLayer,
    *,
    origin: str,
    progress: Callable[[int], None] | None,
    staged: bool,
) -> None:
    """Stream ``layer``'s blob into ``folder/layer.vhd`` (decompressed when it is zstd),
    renamed into place once checked, with its metadata. ``folder`` is a staged one nobody
    sees yet (``staged``: all the metadata is written at once, before the rename), or the
    layer's own (an older lcow's empty leftover: the IDs only once the image is in place)."""
    name = f"{client.registry}/{client.repository}: layer.vhd {layer.digest}"
    lid = layer_id(layer.chain_id)
    meta: dict[str, object] = {"content_size": layer.content_size, "vhd_size": layer.image_size}
    if layer.root_hash is not None:
        meta["root_hash"] = layer.root_hash
        meta["hash_offset"] = layer.hash_offset
    proof = {"diff_id": layer.diff_id, "chain_id": layer.chain_id, "converted_from": origin}
    copy = _copy_zstd if layer.compressed else _copy_plain
    with (
        client.open_blob(layer.digest, layer.size) as reader,
        atomic_output(folder / LAYER_VHD, fsync=True) as fd,
    ):
        copy(reader, fd, layer, name, progress)
        _check_image(fd, layer, name)
        # never an image without its sizes and root hash
        driver.root.write_meta(lid, {**meta, **proof} if staged else meta, folder=folder)
    if not staged:
        driver.root.write_meta(lid, {**meta, **proof}, folder=folder)


def land_converted(  # noqa: PLR0913 - what to land, then keyword-only callbacks
    driver: Driver,
    client: RegistryClient,
    spec: ImageSpec,
    artifact: Artifact,
    *,
    progress: Callable[[int], None] | None = None,
    on_layer: Callable[[ImportedLayer], None] | None = None,
    parallel: int = 1,
) -> ImportResult:
    """Land the image's layers from ``artifact`` (found by :func:`find_artifact`), holding all
    their locks; all-or-nothing for the layers it creates.

    Presence is decided and folders are created bottom-up on this thread (which holds the
    locks); up to ``parallel`` blobs then download at once on helper threads, which only write
    files inside their own layer's folder. After a failure the downloads still running finish
    (or time out) before the created layers are removed; ``on_layer`` is called in order once
    every layer is in place.

    Raises:
        BlobMismatch, DigestMismatch: a blob is not what the artifact names.
        CorruptImage: a blob is not a lcow layer image.
        Unauthorized, NotFound, Timeout, RegistryUnavailable: from the registry.
    """
    diff_ids = [ref.diff_id for ref in spec.layers]
    chains = chain_ids(diff_ids)
    ids = [layer_id(c) for c in chains]
    origin = f"{client.registry}/{client.repository}@{artifact.digest}"
    created: list[str] = []
    staging: list[StagedLayer] = []
    futures: list[Future[ImportedLayer]] = []
    with driver.holding(ids), ThreadPoolExecutor(max(1, parallel), "lcow-converted") as pool:
        try:
            parent: str | None = None
            for layer, lid, chain in zip(artifact.layers, ids, chains, strict=True):
                futures.append(_land(driver, client, layer, pool, lid=lid, chain=chain,
                                     parent=parent, origin=origin, staging=staging,
                                     progress=progress))  # fmt: skip
                parent = lid
            wait(futures, return_when=FIRST_EXCEPTION)
            done = [future.result() for future in futures]
            for staged in staging:  # bottom-up: no layer shows before the layers below it
                driver.publish(staged)
                created.append(staged.layer_id)
        except BaseException:
            for future in futures:
                future.cancel()
            wait(futures)  # running downloads end before their folders are removed
            for staged in staging:
                if staged.layer_id not in created:
                    driver.discard_staged(staged)
            for lid in reversed(created):
                try:
                    driver.remove(lid)
                except (OSError, LcowError) as exc:
                    log.warning("pull: could not remove layer %s after a failure: %s", lid, exc)
            raise
    for item in done:
        if on_layer is not None:
            on_layer(item)
    image = ImportedImage(tags=spec.tags, config=spec.config, layer_ids=tuple(ids))
    return ImportResult(format=CONVERTED_FORMAT, images=(image,), layers=tuple(done))


def _land(  # noqa: PLR0913 - one layer of land_converted, with its state
    driver: Driver,
    client: RegistryClient,
    layer: ArtifactLayer,
    pool: ThreadPoolExecutor,
    *,
    lid: str,
    chain: str,
    parent: str | None,
    origin: str,
    staging: list[StagedLayer],
    progress: Callable[[int], None] | None,
) -> Future[ImportedLayer]:
    """One layer: reused (a finished future), or its staged folder made here (added to
    ``staging``, for the caller to publish) and its download submitted to ``pool``."""
    if layer_present(driver, lid, parent, diff_id=layer.diff_id, chain=chain,
                     accept_converted=True):  # fmt: skip
        size = driver.root.read_meta(lid).get("content_size")
        reused: Future[ImportedLayer] = Future()
        reused.set_result(ImportedLayer(lid, parent, layer.diff_id, chain, created=False,
                                        size=size if isinstance(size, int) else None))  # fmt: skip
        return reused
    staged = None if driver.exists(lid) else driver.stage(lid, parent)
    if staged is not None:
        staging.append(staged)
        folder = staged.folder
    else:  # an empty leftover folder, or an image nobody verified: replaced in place
        if DataRoot.layer_file(driver.root.layer_dir(lid)) is None:
            driver.create(lid, parent)  # rewrite its chain
        folder = driver.root.layer_dir(lid)

    def download() -> ImportedLayer:
        _download(driver, client, folder, layer, origin=origin, progress=progress,
                  staged=staged is not None)  # fmt: skip
        return ImportedLayer(lid, parent, layer.diff_id, chain, created=True,
                             size=layer.content_size, converted=True)  # fmt: skip

    return pool.submit(download)
