"""Pull an image from a registry into a data root: the layers land exactly as an import's.

:func:`lcow.registry.resolve` fetches and checks the manifest (an index resolved to the
platform) and the config; the config's diff IDs and the manifest's layer descriptors make an
:class:`~lcow.images.model.ImageSpec` like a tarball's, and :mod:`lcow.images.importer` does the
rest: ids are chain IDs, verified layers already there are reused, each blob streams from the
registry into the converter (through the same :class:`~lcow.images.blobstream.LayerFeed` as an
import: gzip, zstd or plain, by magic) while its digest, size and diff ID are checked, and a
layer is renamed into place only once they match. Any failure removes every layer this pull
created. Up to ``parallel`` layers download and convert at once. The image is then recorded
under its name (:mod:`lcow.images.store`).

Unless told not to, a pull first looks for converted layers published for the image
(:mod:`lcow.images.converted`): when an artifact matches, its ``layer.vhd`` blobs are
downloaded instead of the tars; when none matches, or landing them fails for any reason, the
pull warns and converts the tars as above.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, cast

from lcow._util.escape import quoted
from lcow.errors import LcowError
from lcow.images.chainid import chain_ids, layer_id
from lcow.images.converted import find_artifact, land_converted
from lcow.images.errors import ImageError
from lcow.images.importer import ImportedLayer, ImportPlan, ImportResult, plan_layers, run_import
from lcow.images.model import ImageSpec, LayerRef, config_diff_ids
from lcow.images.oci import LAYER_MEDIA_TYPE
from lcow.images.store import ImageRecord, record_image
from lcow.registry.client import BlobReader, RegistryClient
from lcow.registry.errors import Cancelled
from lcow.registry.resolve import Platform, ResolvedImage, resolve

if TYPE_CHECKING:
    from lcow.graphdriver.driver import Driver
    from lcow.registry.reference import Reference

__all__ = [
    "DEFAULT_PARALLEL",
    "REGISTRY_FORMAT",
    "PullResult",
    "RegistryBlobs",
    "image_spec",
    "land_image",
    "pull_image",
]

log = logging.getLogger(__name__)

#: ``ImageSpec.format`` of an image read from a registry.
REGISTRY_FORMAT = "registry"
#: Layers downloaded and converted at once by default.
DEFAULT_PARALLEL = 3


class RegistryBlobs:
    """The layer blobs of one image in a registry, as an importer's blob source (named by
    digest, sized by descriptor, streamed on demand; safe to open from several threads)."""

    def __init__(self, client: RegistryClient, image: ResolvedImage) -> None:
        self.client = client
        self.name = image.reference.name
        self._sizes = {layer.digest: layer.size for layer in image.layers}
        self._open: set[BlobReader] = set()
        self._lock = threading.Lock()
        self._cancelled = False

    def cancel(self) -> None:
        """Stop every download in progress (their readers fail) and refuse new ones: a failed
        parallel pull does not wait for the other layers to arrive before rolling back."""
        with self._lock:
            self._cancelled = True
            readers = list(self._open)
        for reader in readers:
            reader.cancel()

    def size(self, name: str) -> int:
        """The descriptor's size of blob ``name`` (a digest)."""
        return self._sizes[name]

    def member_range(self, name: str) -> None:
        """Never in a local file."""
        return None

    @contextlib.contextmanager
    def open_member(self, name: str) -> Iterator[BinaryIO]:
        """Stream blob ``name`` (a digest); reading past or short of its size fails."""
        with self.client.open_blob(name, self._sizes[name]) as reader:
            with self._lock:
                if self._cancelled:
                    raise Cancelled(f"{self.name}: blob {name}: the pull was cancelled")
                self._open.add(reader)
            try:
                yield cast(BinaryIO, reader)
            finally:
                with self._lock:
                    self._open.discard(reader)


@dataclass(frozen=True)
class PullResult:
    """What a pull did.

    Attributes:
        image: the resolved image (reference, digests, platform).
        record: what was recorded in the data root.
        result: the layers, as an import reports them.
        artifact: the digest of the artifact whose converted layers were used, if one was.
    """

    image: ResolvedImage
    record: ImageRecord
    result: ImportResult
    artifact: str | None = None


def image_spec(image: ResolvedImage) -> ImageSpec:
    """The :class:`ImageSpec` of a resolved image (its layers named by digest).

    Raises:
        ImageError: the config is not JSON or not an image config, its diff IDs do not match
            the manifest's layers, or a layer's media type is not a tar lcow converts.
    """
    where = f"{image.reference.name}: config {image.config.digest}"
    try:
        config = json.loads(image.config_data)
    except (ValueError, RecursionError) as exc:
        raise ImageError(f"{where}: not JSON ({exc})", subject=image.config.digest) from exc
    diff_ids = config_diff_ids(config, where=where)
    what = f"{image.reference.name}@{image.manifest_digest}"
    if len(diff_ids) != len(image.layers):
        raise ImageError(
            f"{what}: lists {len(image.layers)} layers but its config has {len(diff_ids)} diff_ids",
            subject=image.manifest_digest,
        )
    refs = []
    for i, (layer, diff_id) in enumerate(zip(image.layers, diff_ids, strict=True)):
        if layer.media_type and not LAYER_MEDIA_TYPE.fullmatch(layer.media_type):
            raise ImageError(
                f"{what}: layers[{i}] {layer.digest}: unsupported layer media type "
                f"{quoted(layer.media_type)}",
                subject=layer.digest,
            )
        refs.append(LayerRef(member=layer.digest, diff_id=diff_id, digest=layer.digest,
                             size=layer.size, media_type=layer.media_type))  # fmt: skip
    return ImageSpec(format=REGISTRY_FORMAT, config=image.config.digest,
                     tags=(str(image.reference),), layers=tuple(refs))  # fmt: skip


def pull_image(  # noqa: PLR0913 - what to pull, then keyword-only callbacks and parallelism
    driver: Driver,
    client: RegistryClient,
    reference: Reference,
    platform: Platform,
    *,
    parallel: int = DEFAULT_PARALLEL,
    progress: Callable[[int], None] | None = None,
    on_plan: Callable[[ImportPlan], None] | None = None,
    on_layer: Callable[[ImportedLayer], None] | None = None,
    converted: bool = True,
) -> PullResult:
    """Pull ``reference`` through ``client`` into the driver's data root and record it:
    :func:`~lcow.registry.resolve.resolve`, then :func:`land_image`.

    Args:
        driver: the driver of the data root.
        client: a client of the reference's repository.
        reference: what to pull.
        platform: the platform to choose in an index.
        parallel: layers downloaded and converted at once.
        progress: called (from helper threads) with counts of blob bytes downloaded.
        on_plan: called once the plan is known, before any layer is written.
        on_layer: called after each layer, in order, created or skipped.
        converted: look for a published artifact of converted layers first.

    Raises:
        RegistryError, ImageError: unusable documents or blobs (a digest or size mismatch:
            :class:`~lcow.images.errors.DigestMismatch` or
            :class:`~lcow.registry.errors.BlobMismatch`); nothing new is left behind.
        Unauthorized, NotFound, Timeout, RegistryUnavailable: from the registry.
    """
    image = resolve(client, reference, platform)
    return land_image(driver, client, image, parallel=parallel, progress=progress,
                      on_plan=on_plan, on_layer=on_layer, converted=converted)  # fmt: skip


def land_image(  # noqa: PLR0913 - what to land, then keyword-only callbacks and parallelism
    driver: Driver,
    client: RegistryClient,
    image: ResolvedImage,
    *,
    parallel: int = DEFAULT_PARALLEL,
    progress: Callable[[int], None] | None = None,
    on_plan: Callable[[ImportPlan], None] | None = None,
    on_layer: Callable[[ImportedLayer], None] | None = None,
    converted: bool = True,
) -> PullResult:
    """Download the layers of a resolved image, converted ones when ``converted`` and an
    artifact matches, else the tars, converting them; then record it (see :func:`pull_image`
    for the arguments and errors)."""
    spec = image_spec(image)
    artifact = None
    result = None
    if converted:
        artifact = find_artifact(client, image.manifest_digest,
                                 [ref.diff_id for ref in spec.layers],
                                 verity=driver.options.dm_verity)  # fmt: skip
    if artifact is not None:
        try:
            result = land_converted(driver, client, spec, artifact, progress=progress,
                                    on_layer=on_layer, parallel=parallel)  # fmt: skip
        except LcowError as exc:
            log.warning("converted layers refused: artifact %s: %s; pulling the tar layers",
                        artifact.digest, exc)  # fmt: skip
            artifact = None
    if result is None:
        blobs = RegistryBlobs(client, image)
        plan = plan_layers(driver, blobs, REGISTRY_FORMAT, [spec], accept_converted=converted)
        if on_plan is not None:
            on_plan(plan)
        result = run_import(driver, blobs, plan, progress=progress, on_layer=on_layer,
                            parallel=parallel)  # fmt: skip
    record = ImageRecord(
        name=str(image.reference),
        digest=image.digest,
        manifest=image.manifest_digest,
        config=image.config.digest,
        layers=tuple(layer_id(c) for c in chain_ids([r.diff_id for r in spec.layers])),
        platform=None if image.platform is None else str(image.platform),
        source=REGISTRY_FORMAT,
    )
    record_image(driver.root, record)
    return PullResult(image=image, record=record, result=result,
                      artifact=None if artifact is None else artifact.digest)  # fmt: skip
