"""Import an image tarball into a data root: one read-only layer per chain ID (issue 4 item 7).

1. **Plan** (nothing written): index the archive (:mod:`lcow.images.archive`), read it as a
   ``docker save`` archive (``manifest.json``) or an OCI image layout (``oci-layout``,
   ``index.json``), verify every manifest, index and config against its digest, check that every
   layer blob is present, and compute each layer's chain ID. Its hex is the layer id; a layer
   the data root already has is skipped only when it is *verified*: a ``layer.vhd`` whose
   metadata records the diff ID and chain ID an import checked (and the same parent). Anything
   else under that id (a layer made by hand, one an interrupted import left) is converted again.
2. **Apply**, bottom-up, holding the locks of all the image's layers (so concurrent imports of
   images sharing layers convert each once and never undo each other's): Create, then ApplyDiff
   from the blob while both of its digests are checked in the same pass
   (:mod:`lcow.images.blobstream`); the digests are compared *before* the image is renamed into
   place, so an unverified image is never visible under a chain ID, and the diff and chain IDs
   are recorded once it is. A mismatch, or any other failure or interruption, removes every
   layer this import created and re-raises, so an import leaves either all of its new layers or
   none.

The plugin and the CLI share this module; it never prints.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, as_completed, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, BinaryIO, Protocol, runtime_checkable

from lcow.convert.limits import max_conversions
from lcow.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LcowError,
    LimitExceeded,
)
from lcow.images.archive import ImageArchive
from lcow.images.blobstream import FeedResult, FileRange, LayerFeed
from lcow.images.chainid import chain_id, layer_id
from lcow.images.dockerarchive import is_docker_archive, read_docker_archive
from lcow.images.errors import DigestMismatch, ImageError
from lcow.images.holders import LayerHolder, holding_each
from lcow.images.model import ImageSpec, LayerRef
from lcow.images.oci import is_oci_layout, read_oci_layout
from lcow.storage.dataroot import DataRoot

if TYPE_CHECKING:
    from lcow.graphdriver.driver import Driver
    from lcow.graphdriver.staged import StagedLayer

__all__ = [
    "BlobSource",
    "Cancellable",
    "ImportPlan",
    "ImportResult",
    "ImportedImage",
    "ImportedLayer",
    "PlannedLayer",
    "import_image",
    "layer_present",
    "plan_import",
    "plan_layers",
    "read_images",
    "run_import",
]

log = logging.getLogger(__name__)


class BlobSource(Protocol):
    """Where layer blobs come from: an :class:`ImageArchive`, or a registry
    (:mod:`lcow.images.pull`); blobs are named by :attr:`LayerRef.member`."""

    name: str

    def size(self, name: str) -> int:
        """The blob's size as stored."""
        ...

    def member_range(self, name: str) -> tuple[int, int, int] | None:
        """``(fd, offset, size)`` of the blob inside a file, when it is in one."""
        ...

    def open_member(self, name: str) -> AbstractContextManager[BinaryIO]:
        """The blob as stored, as a stream."""
        ...


@runtime_checkable
class Cancellable(Protocol):
    """A blob source whose reads in progress can be stopped (a registry's downloads)."""

    def cancel(self) -> None:
        """Make every read in progress, and every later open, fail."""
        ...


@dataclass(frozen=True)
class PlannedLayer:
    """A layer the image needs.

    Attributes:
        ref: the blob and its digests.
        chain_id: ``sha256:<hex>`` over this layer and all below it.
        layer_id: the data-root id (the chain ID's hex).
        parent: the layer id below, ``None`` for a base.
        present: the data root already has it, verified (it will be skipped, unless that changes
            before the import takes the layer's lock).
        blob_size: bytes of the blob as stored in the archive.
    """

    ref: LayerRef
    chain_id: str
    layer_id: str
    parent: str | None
    present: bool
    blob_size: int


@dataclass(frozen=True)
class ImportPlan:
    """What an import will do.

    Attributes:
        format: ``docker-archive`` or ``oci-layout``.
        images: the images of the archive.
        layers: every distinct layer, bottom-up (parents before children).
        accept_converted: layers that came converted from a registry artifact count as
            present (only a pull that allows converted layers says so).
    """

    format: str
    images: tuple[ImageSpec, ...]
    layers: tuple[PlannedLayer, ...]
    accept_converted: bool = False

    @property
    def bytes_to_apply(self) -> int:
        """Stored bytes of the layers that will be converted (for a progress bar)."""
        return sum(layer.blob_size for layer in self.layers if not layer.present)


@dataclass(frozen=True)
class ImportedLayer:
    """One layer of the result.

    Attributes:
        layer_id: the data-root id.
        parent: the id below, ``None`` for a base.
        diff_id: ``sha256:<hex>`` of its uncompressed tar.
        chain_id: ``sha256:<hex>``; ``layer_id`` is its hex.
        created: made by this import (``False``: it was already there).
        size: ApplyDiff's size (the tar's unpack size) for created layers; the recorded one for
            existing layers, when known.
        compression: how the blob was stored (``gzip``, ``zstd``, ``none``; ``""`` if skipped).
        converted: downloaded already converted (a registry artifact's ``layer.vhd``,
            :mod:`lcow.images.converted`), not converted from its tar here.
    """

    layer_id: str
    parent: str | None
    diff_id: str
    chain_id: str
    created: bool
    size: int | None
    compression: str = ""
    converted: bool = False


@dataclass(frozen=True)
class ImportedImage:
    """One image of the result.

    Attributes:
        tags: repository tags or reference names from the archive.
        config: the config digest (Docker's image ID).
        layer_ids: its layers, bottom first; the last is the image's top layer.
    """

    tags: tuple[str, ...]
    config: str
    layer_ids: tuple[str, ...]

    @property
    def top(self) -> str | None:
        """The top layer id (``None`` for an image without layers)."""
        return self.layer_ids[-1] if self.layer_ids else None


@dataclass(frozen=True)
class ImportResult:
    """What an import did.

    Attributes:
        format: ``docker-archive`` or ``oci-layout``.
        images: each image with its layer ids.
        layers: every distinct layer, bottom-up.
    """

    format: str
    images: tuple[ImportedImage, ...]
    layers: tuple[ImportedLayer, ...] = field(default=())

    @property
    def created(self) -> list[str]:
        """Ids of the layers this import created."""
        return [layer.layer_id for layer in self.layers if layer.created]


def read_images(archive: ImageArchive) -> tuple[str, list[ImageSpec]]:
    """Detect the archive's format and read its images (metadata verified, blobs not read).

    Returns:
        The format name and the images.

    Raises:
        ImageError: neither format, or malformed metadata (see the format readers).
    """
    if is_docker_archive(archive):
        images = read_docker_archive(archive)
    elif is_oci_layout(archive):
        images = read_oci_layout(archive)
    else:
        raise ImageError(
            f"{archive.name}: not an image archive: no manifest.json (docker save) and no "
            "oci-layout + index.json (OCI image layout)",
            subject=archive.name,
        )
    return images[0].format, images


def _recorded_parent(root: DataRoot, layer: str) -> str | None:
    chain = root.read_chain(layer)
    return chain[0].name if chain else None


def plan_import(driver: Driver, archive: ImageArchive) -> ImportPlan:
    """Work out which layers an import needs and which the data root already has.

    Raises:
        ImageError: the archive is not a usable image (nothing has been written).
        AlreadyExists: a layer id is taken by a writable layer.
        FailedPrecondition: an existing layer with the id has another parent.
    """
    fmt, images = read_images(archive)
    return plan_layers(driver, archive, fmt, images)


def plan_layers(
    driver: Driver,
    source: BlobSource,
    fmt: str,
    images: Sequence[ImageSpec],
    *,
    accept_converted: bool = False,
) -> ImportPlan:
    """:func:`plan_import` for images already read (from an archive or a registry);
    ``accept_converted`` as in :class:`ImportPlan`.

    Raises:
        AlreadyExists: a layer id is taken by a writable layer.
        FailedPrecondition: an existing layer with the id has another parent.
    """
    planned: dict[str, PlannedLayer] = {}
    for image in images:
        parent: str | None = None
        parent_chain: str | None = None
        for ref in image.layers:
            chain = chain_id(parent_chain, ref.diff_id)
            lid = layer_id(chain)
            if lid not in planned:
                planned[lid] = PlannedLayer(
                    ref=ref,
                    chain_id=chain,
                    layer_id=lid,
                    parent=parent,
                    present=layer_present(
                        driver,
                        lid,
                        parent,
                        diff_id=ref.diff_id,
                        chain=chain,
                        accept_converted=accept_converted,
                    ),
                    blob_size=source.size(ref.member),
                )
            parent, parent_chain = lid, chain
    return ImportPlan(format=fmt, images=tuple(images), layers=tuple(planned.values()),
                      accept_converted=accept_converted)  # fmt: skip


def layer_present(  # noqa: PLR0913 - the layer, then keyword-only facts to check
    driver: Driver,
    lid: str,
    parent: str | None,
    *,
    diff_id: str,
    chain: str,
    accept_converted: bool = False,
) -> bool:
    """Whether the data root already has the layer, verified by an import: a ``layer.vhd``
    whose metadata records the expected diff ID and chain ID. A folder without content, or a
    ``layer.vhd`` nobody verified, is not present: it is converted again. So is a layer that
    came converted from a registry artifact (its metadata names it in ``converted_from``)
    unless ``accept_converted``: its diff ID is the publisher's claim, not a digest of a tar
    checked here, and an import or a ``--no-converted`` pull must not inherit that trust.

    Raises:
        AlreadyExists: the id is a writable layer.
        FailedPrecondition: the layer has another parent.
    """
    if not driver.exists(lid):
        return False
    disk = DataRoot.layer_file(driver.root.layer_dir(lid))
    if disk is None:
        return False  # an empty folder (an interrupted import): apply into it
    if disk.writable:
        raise AlreadyExists(
            f"layer {lid} already exists as a writable layer; remove it to import the image",
            subject=lid,
        )
    recorded = _recorded_parent(driver.root, lid)
    if recorded != parent:
        raise FailedPrecondition(
            f"layer {lid} already exists with parent {recorded or '(none)'}, but the image puts "
            f"it on {parent or '(none)'}",
            subject=lid,
        )
    meta = driver.root.read_meta(lid)
    if meta.get("diff_id") != diff_id or meta.get("chain_id") != chain:
        log.warning("import: layer %s has no verified diff ID: converting it again", lid)
        return False
    if meta.get("converted_from") and not accept_converted:
        log.info("import: layer %s came converted from %s: converting its tar again", lid,
                 meta["converted_from"])  # fmt: skip
        return False
    return True


def run_import(  # noqa: PLR0913 - the plan, then keyword-only callbacks and parallelism
    driver: Driver,
    archive: BlobSource,
    plan: ImportPlan,
    *,
    progress: Callable[[int], None] | None = None,
    on_layer: Callable[[ImportedLayer], None] | None = None,
    parallel: int = 1,
) -> ImportResult:
    """Create and apply the layers of ``plan`` bottom-up; all-or-nothing for new layers.

    With ``parallel`` above 1, the layer folders are still created bottom-up, and then up to
    ``parallel`` layers convert at once (ApplyDiff does not read the parent), each on the
    thread that holds its lock (:mod:`lcow.images.holders`); the locks of all the plan's
    layers are held until the import is decided, as in the sequential case.

    Args:
        driver: the driver of the data root.
        archive: the archive (or other blob source) the plan was made from.
        plan: from :func:`plan_import` or :func:`plan_layers`.
        progress: called (from helper threads) with counts of stored bytes read.
        on_layer: called after each layer, created or skipped: in order when one layer
            converts at a time, else as each finishes.
        parallel: how many layers may convert at once, at most the process's conversion
            slots (:func:`lcow.convert.limits.max_conversions`); the source must allow
            concurrent :meth:`BlobSource.open_member` calls when it is more than 1.

    Returns:
        What was imported.

    Raises:
        DigestMismatch: a layer does not hash to its digest or diff ID.
        ImageError: a layer blob is corrupt or not a valid tar.
    """
    ids = [layer.layer_id for layer in plan.layers]
    # More at once than the process's conversion slots would leave downloads open and idle.
    parallel = min(parallel, max_conversions())
    if parallel > 1:
        with holding_each(driver, ids) as holders:
            done = _run_parallel(driver, archive, plan, holders, progress=progress,
                                 on_layer=on_layer, parallel=parallel)  # fmt: skip
    else:
        with driver.holding(ids):
            done = _run_locked(driver, archive, plan, progress, on_layer)
    images = tuple(
        ImportedImage(
            tags=image.tags,
            config=image.config,
            layer_ids=tuple(_layer_ids(image.layers)),
        )
        for image in plan.images
    )
    return ImportResult(format=plan.format, images=images, layers=tuple(done))


def _run_locked(
    driver: Driver,
    archive: BlobSource,
    plan: ImportPlan,
    progress: Callable[[int], None] | None,
    on_layer: Callable[[ImportedLayer], None] | None,
) -> list[ImportedLayer]:
    """:func:`run_import`'s work, with every layer of the plan locked: presence is decided
    again here, since another process may have imported or removed a layer since the plan."""
    created: list[str] = []
    done: list[ImportedLayer] = []
    try:
        for planned in plan.layers:
            layer = _existing_layer(driver, planned, plan.accept_converted)
            if layer is None:
                staged = _stage(driver, planned)
                try:
                    layer = _apply(driver, archive, planned, progress, staged)
                    if staged is not None:
                        driver.publish(staged)
                        created.append(planned.layer_id)
                except BaseException:
                    if staged is not None:
                        driver.discard_staged(staged)
                    raise
            done.append(layer)
            if on_layer is not None:
                on_layer(layer)
    except BaseException:
        _roll_back(driver, created)
        raise
    return done


def _run_parallel(  # noqa: PLR0913 - run_import's arguments and the lock holders, keyword-only
    driver: Driver,
    archive: BlobSource,
    plan: ImportPlan,
    holders: Mapping[str, LayerHolder],
    *,
    progress: Callable[[int], None] | None,
    on_layer: Callable[[ImportedLayer], None] | None,
    parallel: int,
) -> list[ImportedLayer]:
    """:func:`_run_locked` with up to ``parallel`` conversions at once, every operation on a
    layer run by the thread holding its lock. Layers convert in any order but are published
    bottom-up (a layer never shows before the layers below it)."""
    created: list[str] = []
    futures: list[Future[ImportedLayer]] = []
    staging: list[StagedLayer | None] = []  # per layer of the plan, until it is published
    try:
        todo: list[PlannedLayer | ImportedLayer] = []
        for planned in plan.layers:  # presence and stages bottom-up, one at a time
            holder = holders[planned.layer_id]
            existing = holder.run(partial(_existing_layer, driver, planned,
                                          plan.accept_converted))  # fmt: skip
            staging.append(None if existing else holder.run(partial(_stage, driver, planned)))
            todo.append(existing or planned)
        slots = threading.BoundedSemaphore(parallel)
        for item, staged in zip(todo, staging, strict=True):
            if isinstance(item, ImportedLayer):
                futures.append(_resolved(item))
                continue
            slots.acquire()
            if _first_failure(futures) is not None:
                slots.release()
                break
            future = holders[item.layer_id].submit(
                partial(_apply, driver, archive, item, progress, staged)
            )
            future.add_done_callback(lambda _: slots.release())
            futures.append(future)
        published = 0
        for _ in as_completed(futures):  # a failure anywhere ends the wait at once
            failed = _first_failure(futures)
            if failed is not None:
                raise failed
            published = _publish_bottom_up(driver, holders, futures, staging, published,
                                           created=created, on_layer=on_layer)  # fmt: skip
        return [future.result() for future in futures]
    except BaseException:
        for future in futures:
            future.cancel()
        if isinstance(archive, Cancellable):
            archive.cancel()  # the downloads still running fail now instead of finishing
        wait(futures)  # running conversions end before their layers are removed
        for staged in staging:
            if staged is not None:
                holders[staged.layer_id].run(partial(driver.discard_staged, staged))
        for lid in reversed(created):
            holders[lid].run(partial(_roll_back, driver, [lid]))
        raise


def _publish_bottom_up(  # noqa: PLR0913 - the state of _run_parallel, then its outputs
    driver: Driver,
    holders: Mapping[str, LayerHolder],
    futures: Sequence[Future[ImportedLayer]],
    staging: list[StagedLayer | None],
    published: int,
    *,
    created: list[str],
    on_layer: Callable[[ImportedLayer], None] | None,
) -> int:
    """Publish the converted layers from position ``published`` up to the first one still
    converting; returns the new position."""
    while published < len(futures) and futures[published].done():
        layer = futures[published].result()
        staged = staging[published]
        if staged is not None:
            holders[layer.layer_id].run(partial(driver.publish, staged))
            staging[published] = None
            created.append(layer.layer_id)
        if on_layer is not None:
            on_layer(layer)
        published += 1
    return published


def _first_failure(futures: Sequence[Future[ImportedLayer]]) -> BaseException | None:
    for future in futures:
        if future.done() and not future.cancelled() and future.exception() is not None:
            return future.exception()
    return None


def _resolved(layer: ImportedLayer) -> Future[ImportedLayer]:
    future: Future[ImportedLayer] = Future()
    future.set_result(layer)
    return future


def _existing_layer(
    driver: Driver, planned: PlannedLayer, accept_converted: bool
) -> ImportedLayer | None:
    """The layer as the data root already has it, verified; ``None`` if it must be converted."""
    if not layer_present(
        driver, planned.layer_id, planned.parent, diff_id=planned.ref.diff_id,
        chain=planned.chain_id, accept_converted=accept_converted,
    ):  # fmt: skip
        return None
    size = driver.root.read_meta(planned.layer_id).get("content_size")
    return ImportedLayer(
        layer_id=planned.layer_id,
        parent=planned.parent,
        diff_id=planned.ref.diff_id,
        chain_id=planned.chain_id,
        created=False,
        size=size if isinstance(size, int) else None,
    )


def _layer_ids(layers: Sequence[LayerRef]) -> list[str]:
    out: list[str] = []
    parent: str | None = None
    for ref in layers:
        parent = chain_id(parent, ref.diff_id)
        out.append(layer_id(parent))
    return out


def _stage(driver: Driver, planned: PlannedLayer) -> StagedLayer | None:
    """Where a layer about to be converted is built: a staged folder, published once whole
    (:mod:`lcow.graphdriver.staged`); ``None`` for a folder that exists (an empty one an
    older lcow's interrupted import left, or an image no import verified), converted into in
    place."""
    lid = planned.layer_id
    if not driver.exists(lid):
        return driver.stage(lid, planned.parent)
    if DataRoot.layer_file(driver.root.layer_dir(lid)) is None:
        driver.create(lid, planned.parent)  # an empty leftover folder: rewrite its chain
    return None  # ApplyDiff replaces an unverified image whole


def _apply(
    driver: Driver,
    archive: BlobSource,
    planned: PlannedLayer,
    progress: Callable[[int], None] | None,
    staged: StagedLayer | None,
) -> ImportedLayer:
    """Convert the layer's blob into ``staged`` (or into its existing empty folder)."""
    lid = planned.layer_id
    name = f"{archive.name}: {planned.ref.member}"
    found = archive.member_range(planned.ref.member)
    where = None if found is None else FileRange(*found)
    verified: list[FeedResult] = []

    def verify() -> dict[str, object]:
        """Both digests and the size, checked before the image is renamed into place."""
        got = feed.finish()
        verified.append(got)
        _check(name, "digest", planned.ref.digest, got.digest)
        if planned.ref.size is not None and planned.ref.size != got.size:
            raise DigestMismatch(
                f"{name}: size {got.size} does not match the descriptor's {planned.ref.size}",
                subject=planned.ref.member,
                expected=str(planned.ref.size),
                got=str(got.size),
            )
        _check(name, "diff ID", planned.ref.diff_id, got.diff_id)
        return {"diff_id": got.diff_id, "chain_id": planned.chain_id}

    with archive.open_member(planned.ref.member) as blob:
        feed = LayerFeed(blob, name=name, progress=progress, where=where)
        try:
            if staged is None:
                size = driver.apply_diff(lid, planned.parent, feed.source, verify=verify)
            else:
                size = driver.apply_diff_staged(staged, feed.source, verify=verify)
        except BaseException as exc:
            if verified:  # the feed finished: the verification itself failed
                raise
            cause = feed.abort()
            if cause is not None and cause is not exc:
                raise cause from exc
            if isinstance(exc, InvalidArgument) and not isinstance(exc, ImageError | LimitExceeded):
                raise ImageError(
                    f"{name}: not a valid layer tar: {exc}", subject=planned.ref.member
                ) from exc
            raise
    got = verified[0]
    return ImportedLayer(
        layer_id=lid,
        parent=planned.parent,
        diff_id=got.diff_id,
        chain_id=planned.chain_id,
        created=True,
        size=size,
        compression=got.compression,
    )


def _check(name: str, what: str, expected: str | None, got: str) -> None:
    if expected is not None and expected != got:
        raise DigestMismatch(
            f"{name}: {what} mismatch: expected {expected}, got {got}",
            subject=name,
            expected=expected,
            got=got,
        )


def _roll_back(driver: Driver, created: list[str]) -> None:
    for lid in reversed(created):
        try:
            driver.remove(lid)
        except (OSError, LcowError) as exc:
            log.warning("import: could not remove layer %s after a failure: %s", lid, exc)


def import_image(
    driver: Driver,
    source: str | os.PathLike[str] | BinaryIO,
    *,
    progress: Callable[[int], None] | None = None,
    on_plan: Callable[[ImportPlan], None] | None = None,
    on_layer: Callable[[ImportedLayer], None] | None = None,
) -> ImportResult:
    """Import a ``docker save`` or OCI image-layout tarball (plain, gzip or zstd).

    Args:
        driver: the driver of the data root to import into.
        source: the tarball's path, or a readable binary stream (spooled to a temporary file
            in the data root's ``scratch/`` when it cannot seek or is compressed).
        progress: called with counts of stored layer bytes read (from a helper thread).
        on_plan: called once the plan is known, before any layer is written.
        on_layer: called after each layer, created or skipped.

    Returns:
        The images and layers, bottom-up.

    Raises:
        ImageError: malformed, hostile or incomplete archive, or a digest mismatch
            (:class:`~lcow.images.errors.DigestMismatch`); no new layer is left behind.
        NotFound: the path does not exist.
    """
    with ImageArchive.open(source, spool_dir=driver.root.scratch) as archive:
        plan = plan_import(driver, archive)
        if on_plan is not None:
            on_plan(plan)
        return run_import(driver, archive, plan, progress=progress, on_layer=on_layer)
