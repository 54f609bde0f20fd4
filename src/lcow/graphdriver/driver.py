"""The LCOW graph driver: Docker's 15 operations over a data root (SPEC §3).

Layers are folders of the data root (:mod:`lcow.storage.dataroot`): a read-only layer holds
``layer.vhd`` (written by :meth:`Driver.apply_diff` with lcow's converter), a writable layer
``sandbox.vhdx`` (:meth:`Driver.create_read_write`), and ``layerchain.json`` names its
ancestors. Views (what :meth:`Driver.get` returns) come from an injected backend and are
reference-counted per id. Diff, Changes and DiffSize read the images directly, whatever the
backend, so the two stubs of the original are real here.

Locking (:mod:`lcow.storage.locks`): every mutation of a layer folder holds that layer's lock,
shared by the threads and processes using the data root, so two writers of one id run one after
the other; an advisory lock on the data root serialises changes to its namespace. Every file is
written under a temporary name and renamed into place, so a crash leaves each layer whole or
absent; Cleanup sweeps what an interrupted Remove or write left behind, skipping layers whose
lock another holder has.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from lcow._util.atomic import atomic_output
from lcow.backends.base import Backend, ContainerFS, LayerDisk
from lcow.backends.registry import BackendRegistry, installed_backends
from lcow.convert.tarwriter import END_OF_ARCHIVE, as_writer
from lcow.errors import AlreadyExists, Busy, LcowError, NoSpace, NotFound, NotSupported
from lcow.graphdriver.deferred import DeferredDeletions
from lcow.graphdriver.diffstream import DiffStream
from lcow.graphdriver.options import parse_driver_options, sandbox_size_bytes
from lcow.graphdriver.staged import StagedLayer
from lcow.sandboxes import copy_sandbox, make_raw_sandbox, make_sandbox
from lcow.storage.dataroot import (
    LAYER_VHD,
    SANDBOX_RAW,
    SANDBOX_VHDX,
    SANDBOXES,
    DataRoot,
    validate_id,
)
from lcow.storage.locks import LayerLocks, RootLock

if TYPE_CHECKING:
    from lcow.convert.input import TarInput
    from lcow.convert.options import ConvertResult
    from lcow.layerdiff.changes import Change, LayerContent

# The converter (ApplyDiff) and the layer reader with the layer comparisons (Diff, Changes,
# DiffSize) are imported in the methods that use them: a process that lands converted layers
# or lists them never needs them, and they are about a fifth of lcow's start-up imports.

__all__ = ["SERVER_LINGER", "Driver"]

log = logging.getLogger(__name__)

# The lock guarding cache/sandbox.vhdx: a name no layer id can take.
_CACHE_LOCK = "cache"

#: Seconds the long-running front ends keep shared helpers after their last use
#: (:meth:`Driver.linger`): longer than the pause between a container's layers, short
#: enough that an idle data root soon holds no process.
SERVER_LINGER = 30.0
#: Called by ApplyDiff once the image is converted and before it is renamed into place (an
#: importer checks the digests there); returns metadata to record with the layer, or raises to
#: discard the image.
Verifier = Callable[[], Mapping[str, object]]


_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def _naming_full_disks(layer_id: str, what: str) -> Iterator[None]:
    """Turn a full file system into :class:`NoSpace` naming the layer and what was being
    written: the converter's entry (``<id>: <entry>: no space left on device``), else ``what``."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _FULL:
            raise
        entry = exc.entry if isinstance(exc, NoSpace) and exc.entry is not None else what
        raise NoSpace(
            f"{layer_id}: {entry}: {os.strerror(exc.errno).lower()}",
            subject=layer_id,
            entry=entry,
            code=exc.errno,
        ) from exc


class Driver:
    """moby's LCOW graph driver (``lcow``), Python names (SPEC §3).

    Args:
        home: the data root.
        options: ``key=value`` strings (SPEC §2); ``None`` = none.
        uid_maps: ignored (as in LCOW).
        gid_maps: ignored.
        backend: a backend instance; by default the one ``lcow.backend`` names, built by its
            factory in ``backends``.
        backends: the registry ``lcow.backend`` is looked up in (default: the built-ins and
            the installed ``lcow.backends`` entry points).

    Raises:
        InvalidArgument: a bad option.
        NotSupported: the backend's prerequisites are missing (``driver not supported``).
    """

    def __init__(  # noqa: PLR0913 - Docker's graphdriver Init(home, options, uidMaps, gidMaps) plus keyword-only backend choice
        self,
        home: str | os.PathLike[str],
        options: Sequence[str] | None = None,
        uid_maps: object = None,
        gid_maps: object = None,
        *,
        backend: Backend | None = None,
        backends: BackendRegistry | None = None,
    ) -> None:
        self.root = DataRoot(home)
        registry = backends if backends is not None else installed_backends()
        self.options = parse_driver_options(options, root=str(self.root.root), backends=registry)
        if backend is None:
            factory = registry.get(self.options.backend)
            factory.check(self.options.backend_options)  # "driver not supported" before
            self.root.create()  # anything is created
            backend = factory.create(self.root.root, self.options.backend_options)
        else:
            self.root.create()
        self.backend = backend
        self._locks = LayerLocks(self.root.root)
        self._root_lock = RootLock(self.root.root)
        self._deletions: DeferredDeletions | None = None  # see linger()

    def __str__(self) -> str:
        return "lcow"

    @property
    def name(self) -> str:
        """The driver name, ``lcow``."""
        return "lcow"

    # -- queries -----------------------------------------------------------------------------

    def status(self) -> list[tuple[str, str]]:
        """``[("LCOW", "")]`` followed by lcow's own pairs."""
        return [
            ("LCOW", ""),
            ("Backend", self.backend.name),
            ("Mode", "global" if self.options.global_mode else "per-id"),
            ("Root", str(self.root.root)),
            ("Layers", str(len(self.root.layer_ids()))),
        ]

    def exists(self, layer_id: str) -> bool:
        """Whether the layer's folder exists (a folder without a disk counts).

        Raises:
            InvalidArgument: ``layer_id`` is not a valid id (no such layer can exist).
        """
        return os.path.lexists(self.root.layer_dir(layer_id))

    def get_metadata(self, layer_id: str) -> dict[str, str]:
        """``{"dir": dir(id)}``; no existence check.

        Raises:
            InvalidArgument: ``layer_id`` is not a valid id.
        """
        return {"dir": str(self.root.layer_dir(layer_id))}

    def get_layer_path(self, layer_id: str) -> str:
        """The layer's folder."""
        return str(self.root.layer_dir(layer_id))

    def parent_chain(self, layer_id: str) -> list[Path]:
        """Ancestor folders of a layer, nearest first."""
        return self.root.read_chain(layer_id)

    @contextlib.contextmanager
    def holding(self, layer_ids: Sequence[str]) -> Iterator[None]:
        """Hold the locks of several layers for a multi-layer change (an import): taken in
        sorted order, so holders of overlapping sets cannot deadlock; the driver's own
        operations on those layers run inside the block (the locks are re-entrant).

        Raises:
            InvalidArgument: one of the ids is not valid.
        """
        for layer_id in layer_ids:
            validate_id(layer_id)
        with self._locks.hold_all(layer_ids):
            yield

    # -- create ------------------------------------------------------------------------------

    def create(
        self, layer_id: str, parent: str | None = None, opts: Mapping[str, str] | None = None
    ) -> None:
        """Make the layer folder and its ``layerchain.json``; no disk yet."""
        validate_id(layer_id)
        with self._locks.hold(layer_id), self._root_lock.hold():
            chain = self._chain_over(parent)
            folder = self.root.layer_dir(layer_id)
            if not folder.exists():
                self.root.new_folder(layer_id, chain)
                return
            if DataRoot.layer_file(folder) is not None:
                raise AlreadyExists(
                    f"lcowdriver: create: layer {layer_id} already exists with content",
                    subject=layer_id,
                )
            self.root.write_chain(layer_id, chain)  # LCOW: an existing folder is fine

    def _chain_over(self, parent: str | None) -> list[Path]:
        """The ``layerchain.json`` of a new layer over ``parent`` (call with the root lock).

        Raises:
            NotFound: ``parent`` does not exist.
        """
        if parent is None:
            return []
        parent_dir = self.root.layer_dir(parent)
        if not parent_dir.is_dir():
            raise NotFound(
                f"lcowdriver: cannot create layer folder with missing parent {parent}",
                subject=parent,
            )
        return [parent_dir, *self.root.read_chain(parent)]

    def create_read_write(
        self,
        layer_id: str,
        parent: str | None = None,
        opts: Mapping[str, str] | None = None,
        *,
        raw: bool = False,
    ) -> None:
        """Create, then give the layer an empty ``sandbox.vhdx`` (with ``raw``: an empty
        ``sandbox.img``, for content that is only ever exported; see
        :attr:`~lcow.storage.dataroot.LayerFile.raw`).

        A failure (a bad option, a full disk, a backend that cannot format) leaves no layer
        behind: options are checked before anything is made, and a folder this call made is
        removed again. A Create-only folder that existed before keeps existing.

        Raises:
            NotSupported: ``raw`` with a backend that cannot mount a raw sandbox.
        """
        validate_id(layer_id)
        size = sandbox_size_bytes(layer_id, opts)
        if raw:
            self._check_raw(layer_id)
        with self._locks.hold(layer_id):
            existed = os.path.lexists(self.root.layer_dir(layer_id))
            self.create(layer_id, parent, opts)
            try:
                if raw:
                    self._materialise_raw_sandbox(layer_id, size)
                else:
                    self._materialise_sandbox(layer_id, size)
            except BaseException:
                if not existed:
                    with self._root_lock.hold():
                        self.root.remove_layer(layer_id)
                raise

    def _materialise_sandbox(self, layer_id: str, size: int | None) -> None:
        """Write ``<id>/sandbox.vhdx``: a copy of the cached template for the default size."""
        target = self.root.layer_dir(layer_id) / SANDBOX_VHDX
        with _naming_full_disks(layer_id, SANDBOX_VHDX):
            if size is not None:
                self.backend.make_sandbox(target, size)  # other sizes are never cached (SPEC §3)
                return
            template = self.root.cache / SANDBOX_VHDX
            with self._locks.hold(_CACHE_LOCK):
                if not template.exists():
                    make_sandbox(template, None)
            copy_sandbox(template, target)

    def _check_raw(self, layer_id: str) -> None:
        if not getattr(self.backend, "raw_sandboxes", False):
            raise NotSupported(
                f"lcowdriver: {layer_id}: the {self.backend.name} backend cannot mount a raw "
                f"sandbox ({SANDBOX_RAW})",
                subject=layer_id,
            )

    def _materialise_raw_sandbox(self, layer_id: str, size: int | None) -> None:
        """Write ``<id>/sandbox.img``: a copy of the cached raw template for the default size."""
        target = self.root.layer_dir(layer_id) / SANDBOX_RAW
        with _naming_full_disks(layer_id, SANDBOX_RAW):
            if size is not None:
                make_raw_sandbox(target, size)
                return
            template = self.root.cache / SANDBOX_RAW
            with self._locks.hold(_CACHE_LOCK):
                if not template.exists():
                    make_raw_sandbox(template, None)
            copy_sandbox(template, target)

    # -- content -----------------------------------------------------------------------------

    def apply_diff(
        self,
        layer_id: str,
        parent: str | None,
        diff: TarInput,
        *,
        verify: Verifier | None = None,
    ) -> int:
        """Convert a tar stream into ``<id>/layer.vhd``; returns the unpacked size.

        The whole stream is read (padding included). On failure no partial file remains and
        earlier content is untouched; on success a sandbox the layer had is replaced. Holds the
        layer's lock throughout, so a concurrent ApplyDiff of the same id (any process) waits
        and then replaces this one's result whole: image and metadata always belong together.

        Args:
            layer_id: the layer (made by Create).
            parent: ignored, as in LCOW.
            diff: the tar (plain, gzip or zstd): a path, descriptor, binary stream or file slice.
            verify: called after the conversion, before the image is renamed into place; if it
                raises, the image is discarded and the error propagates; what it returns is
                added to the layer's metadata once the image is in place.
        """
        with self._locks.hold(layer_id):
            folder = self._existing("applydiff", layer_id)
            own = DataRoot.layer_file(folder)
            if own is not None and self.backend.in_use(own):
                raise Busy(
                    f"lcowdriver: applydiff: {layer_id}: its content is mounted; Put it first",
                    subject=layer_id,
                )
            # Converted under one temporary name, verified, the metadata written, then synced and
            # renamed into place: an image is never visible without its metadata (a verity
            # layer's root hash is what the vm backend mounts it with, an imported layer's diff
            # ID is what makes it trusted). Cleanup sweeps a stage a crash left.
            named = None if isinstance(diff, str | os.PathLike) else f"layer {layer_id}'s tar"
            with _naming_full_disks(layer_id, LAYER_VHD):
                result, meta = self._convert(layer_id, diff, folder / LAYER_VHD, named, verify)
            if verify is not None:
                # Only now, with the verified image in place: a kill before the rename must not
                # leave the old content beside metadata that vouches for the new one.
                with _naming_full_disks(layer_id, "lcow-layer.json"):
                    self.root.write_meta(layer_id, meta)
            if own is not None:
                self._release_idle(layer_id)
            for sandbox in SANDBOXES:
                with contextlib.suppress(FileNotFoundError):
                    (folder / sandbox).unlink()
            return result.content_size

    # -- staged layers (Create and ApplyDiff as one step) -----------------------------------

    def stage(self, layer_id: str, parent: str | None) -> StagedLayer:
        """Start building layer ``layer_id`` over ``parent`` out of sight
        (:mod:`lcow.graphdriver.staged`).

        Fill it with :meth:`apply_diff_staged` or by writing its ``layer.vhd`` and metadata
        into :attr:`StagedLayer.folder` yourself, then :meth:`publish` it (or :meth:`discard`
        it). Hold the layer's lock (:meth:`holding`) from here to the publication: Cleanup
        leaves the folder alone only while the lock is held.

        Raises:
            InvalidArgument: not a valid layer id.
            AlreadyExists: the layer exists already.
        """
        validate_id(layer_id)
        with self._locks.hold(layer_id):
            if self.root.layer_dir(layer_id).exists():
                raise AlreadyExists(
                    f"lcowdriver: create: layer {layer_id} already exists", subject=layer_id
                )
            return StagedLayer(layer_id, parent, self.root.stage_folder(layer_id))

    def apply_diff_staged(
        self,
        staged: StagedLayer,
        diff: TarInput,
        *,
        verify: Verifier | None = None,
    ) -> int:
        """ApplyDiff into a staged layer: the tar converted into its ``layer.vhd``, ``verify``
        called before the image is renamed into place, every metadata written (nobody can see
        the folder yet). Returns the unpacked size. On failure the staged folder holds no
        image; :meth:`discard` it."""
        lid = staged.layer_id
        with self._locks.hold(lid):
            named = None if isinstance(diff, str | os.PathLike) else f"layer {lid}'s tar"
            with _naming_full_disks(lid, LAYER_VHD):
                result, meta = self._convert(lid, diff, staged.folder / LAYER_VHD, named, verify)
            if verify is not None:
                with _naming_full_disks(lid, "lcow-layer.json"):
                    self.root.write_meta(lid, meta, folder=staged.folder)
            return result.content_size

    def publish(self, staged: StagedLayer) -> None:
        """Make a staged layer a layer, whole, in one durable rename.

        Raises:
            NotFound: its parent does not exist (publish a chain bottom-up).
            AlreadyExists: a layer of that id appeared meanwhile (the staged one is discarded).
        """
        lid = staged.layer_id
        with self._locks.hold(lid), self._root_lock.hold():
            chain = self._chain_over(staged.parent)
            try:
                self.root.publish_folder(staged.folder, lid, chain)
            except AlreadyExists:
                self.discard_staged(staged)
                raise

    @staticmethod
    def discard_staged(staged: StagedLayer) -> None:
        """Delete a staged layer that will not be published (never fails)."""
        shutil.rmtree(staged.folder, ignore_errors=True)

    def _release_idle(self, layer_id: str) -> None:
        """Release the layer's disks that the backend keeps mounted, idle (linger): its sandbox
        is about to be deleted, and no mount may keep the old file alive.

        Only after the conversion has read the whole tar: that tar may be this very layer's
        Diff (a snapshotter's Commit), whose producer reads the sandbox under the backend's
        lock until it has written its last byte. Never fails: an idle disk left behind is
        released at the idle stop.
        """
        release_idle = getattr(self.backend, "release_idle", None)
        if release_idle is None:
            return
        try:
            release_idle(layer_id)
        except (OSError, LcowError) as exc:
            log.warning("lcowdriver: applydiff: %s: releasing its idle disks: %s", layer_id, exc)

    def _convert(
        self,
        layer_id: str,
        diff: TarInput,
        target: Path,
        name: str | None,
        verify: Verifier | None,
    ) -> tuple[ConvertResult, dict[str, object]]:
        """ApplyDiff's conversion: the image written under a temporary name beside ``target``
        and verified, the metadata (without what ``verify`` proves) written, the image synced
        and renamed into place durably. Returns the conversion's result and the full metadata;
        nothing is left behind on failure."""
        from lcow.convert.options import ConvertOptions
        from lcow.convert.tar2ext4 import tar2ext4

        with atomic_output(target, fsync=True) as staged:
            result = tar2ext4(
                diff,
                staged,
                ConvertOptions(
                    convert_whiteouts=True,
                    vhd_footer=True,
                    dm_verity=self.options.dm_verity,
                ),
                name=name,
            )
            meta: dict[str, object] = {
                "content_size": result.content_size,
                "vhd_size": result.file_size,
            }
            if result.root_hash is not None:
                meta["root_hash"] = result.root_hash
                meta["hash_offset"] = result.hash_offset
            proof = verify() if verify is not None else {}
            self.root.write_meta(layer_id, meta, folder=target.parent)
        return result, {**meta, **proof}

    @contextlib.contextmanager
    def _contents(self, folders: list[Path]) -> Iterator[list[LayerContent]]:
        """Open the own content of each folder (nearest first) for reading."""
        opened: list[LayerContent] = []
        with contextlib.ExitStack() as stack:
            try:
                yield self._open_contents(folders, opened, stack)
            finally:
                for content in opened:
                    if content.reader is not None:
                        content.reader.close()

    def _open_contents(
        self, folders: list[Path], opened: list[LayerContent], stack: contextlib.ExitStack
    ) -> list[LayerContent]:
        from lcow.formats.ext4.reader import Ext4Reader
        from lcow.formats.source import open_source
        from lcow.layerdiff.changes import LayerContent

        for folder in folders:
            disk = DataRoot.layer_file(folder)
            if disk is None:
                opened.append(LayerContent(None))
                continue
            path = stack.enter_context(self.backend.reading(disk))
            reader = Ext4Reader(open_source(path), close_source=True)
            top = b"/upper" if disk.writable else b"/"
            if disk.writable:
                try:
                    reader.lookup(top)
                except NotFound:
                    reader.close()
                    opened.append(LayerContent(None))
                    continue
            opened.append(LayerContent(reader, top))
        return opened

    def _existing(self, op: str, layer_id: str) -> Path:
        """The layer's folder; NotFound naming ``op`` when it does not exist."""
        folder = self.root.layer_dir(layer_id)
        if not folder.is_dir():
            raise NotFound(f"lcowdriver: {op}: {layer_id}: layer does not exist", subject=layer_id)
        return folder

    def _chain(self, op: str, layer_id: str) -> list[Path]:
        """The layer's ancestor folders, nearest first; NotFound when one of them is gone (a
        view over a missing ancestor would silently show less than the layer holds)."""
        chain = self.root.read_chain(layer_id)
        for ancestor in chain:
            if not ancestor.is_dir():
                raise NotFound(
                    f"lcowdriver: {op}: {layer_id} failed to get layer details for {ancestor}: "
                    "the folder does not exist",
                    subject=layer_id,
                )
        return chain

    def _view_folders(self, op: str, layer_id: str | None) -> list[Path]:
        """The folders whose union is ``layer_id``'s view, nearest first (none for ``None``);
        NotFound naming ``op`` when the layer or one of its ancestors does not exist."""
        if layer_id is None:
            return []
        folder = self.root.layer_dir(layer_id)
        if not folder.is_dir():
            raise NotFound(
                f"lcowdriver: {op}: parent {layer_id}: layer does not exist", subject=layer_id
            )
        return [folder, *self._chain(op, layer_id)]

    def _compare(self, op: str, layer_id: str, parent: str | None) -> tuple[Path, list[Path]]:
        """The layer's folder and its ancestors for comparing it with ``parent``; NotFound when
        the layer, the parent or an ancestor of either does not exist."""
        folder = self._existing(op, layer_id)
        chain = self._chain(op, layer_id)
        self._view_folders(op, parent)
        return folder, chain

    def _is_direct(self, parent: str | None, chain: list[Path]) -> bool:
        """Whether ``parent`` is the layer's direct parent (``None``: the layer is a base)."""
        if parent is None:
            return not chain
        return bool(chain) and chain[0] == self.root.layer_dir(parent)

    def write_diff(
        self, layer_id: str, parent: str | None, out: BinaryIO | int | Callable[[bytes], object]
    ) -> None:
        """Write the tar of ``id``'s changes against ``parent`` to ``out`` (see :meth:`diff`)."""
        from lcow.convert.export import export_layer
        from lcow.layerdiff.changes import MergedView, tree_changes
        from lcow.layerdiff.export_changes import export_changes

        folder, chain = self._compare("diff", layer_id, parent)
        try:
            if self._is_direct(parent, chain):
                with self._contents([folder]) as (own,):
                    if own.reader is None:
                        as_writer(out)(END_OF_ARCHIVE)
                        return
                    export_layer(own.reader, out, top=own.top)
                return
            old_folders = self._view_folders("diff", parent)
            with self._contents([folder, *chain]) as new, self._contents(old_folders) as old:
                new_view, old_view = MergedView.build(new), MergedView.build(old)
                export_changes(new_view, new, tree_changes(new_view, old_view), out)
        except LcowError as exc:
            raise type(exc)(
                f"lcowdriver: diff: {layer_id} failed to export layer to tar stream for id: "
                f"{layer_id}, parent: {parent or ''} : {exc}",
                subject=layer_id,
            ) from exc

    def diff(self, layer_id: str, parent: str | None = None) -> DiffStream:
        """A readable tar stream of ``id``'s changes against ``parent``.

        The direct parent (or none, for a base) gives the layer's own content with AUFS
        whiteouts; any other parent the comparison of the two views, as overlay2 does. Errors
        surface from ``read``; ``close`` never fails.
        """
        self._compare("diff", layer_id, parent)  # bad ids, missing layers: now, not on read
        return DiffStream(lambda out: self.write_diff(layer_id, parent, out))

    def changes(self, layer_id: str, parent: str | None = None) -> list[Change]:
        """Changes of ``id`` against ``parent`` (SPEC §5.6 for the direct parent, else §5.7)."""
        from lcow.layerdiff.changes import MergedView, overlay_changes, tree_changes

        folder, chain = self._compare("changes", layer_id, parent)
        if self._is_direct(parent, chain):
            with self._contents([folder]) as (own,), self._contents(chain) as lower:
                return overlay_changes(own, MergedView.build(lower))
        old_folders = self._view_folders("changes", parent)
        with self._contents([folder, *chain]) as new, self._contents(old_folders) as old:
            return tree_changes(MergedView.build(new), MergedView.build(old))

    def diff_size(self, layer_id: str, parent: str | None = None) -> int:
        """Bytes of changed content (SPEC §3 DiffSize, §5.8)."""
        from lcow.layerdiff.changes import MergedView, change_size, own_diff_size, tree_changes

        folder, chain = self._compare("diffsize", layer_id, parent)
        if self._is_direct(parent, chain):
            with self._contents([folder]) as (own,):
                return own_diff_size(own)
        old_folders = self._view_folders("diffsize", parent)
        with self._contents([folder, *chain]) as new, self._contents(old_folders) as old:
            new_view = MergedView.build(new)
            return change_size(new_view, tree_changes(new_view, MergedView.build(old)))

    # -- views -------------------------------------------------------------------------------

    def get(self, layer_id: str, mount_label: str = "") -> ContainerFS:
        """The layer's view; counted, released by :meth:`put`.

        With a writable backend, a layer without content first gets an empty sandbox (SPEC §3:
        Get on a Create-only layer gives it writable own content).
        """
        with self._locks.hold(layer_id):
            folders = [self._existing("get", layer_id), *self._chain("get", layer_id)]
            if self.backend.writable and DataRoot.layer_file(folders[0]) is None:
                self._materialise_sandbox(layer_id, None)
            disks = [LayerDisk(f, DataRoot.layer_file(f)) for f in folders]
            if any(d.disk is not None and d.disk.raw for d in disks):
                self._check_raw(layer_id)
            return self.backend.acquire(layer_id, disks)

    def put(self, layer_id: str) -> None:
        """Release one :meth:`get`; the view closes at zero. Without a Get it is a no-op."""
        validate_id(layer_id)
        with self._locks.hold(layer_id):
            self.backend.release(layer_id)

    def discard(self, layer_id: str) -> bool:
        """Drop the unwritten data of ``layer_id``'s mounted sandbox, whose content is garbage
        (it is removed next): the host backend shuts its file system down rather than let
        the unmount write it back. Returns whether that was done (other backends: never)."""
        discard = getattr(self.backend, "discard", None)
        return bool(discard(layer_id)) if discard is not None else False

    def linger(self, seconds: float) -> None:
        """For a long-running front end (the plugin, the snapshotter): helpers the backend's
        views share (the host backend's storage daemon) stay up to ``seconds`` after their
        last use rather than stopping at once; :meth:`stop_lingering` ends that."""
        linger = getattr(self.backend, "linger", None)
        if linger is not None:
            linger(seconds)
        # Removed layers' folders are deleted after Remove answers, on a thread of this process.
        if seconds > 0 and self._deletions is None:
            self._deletions = DeferredDeletions()

    def stop_lingering(self) -> None:
        """This process stops using the driver: idle helpers kept by :meth:`linger` stop;
        views and counts stay for their holders. Never fails."""
        deletions, self._deletions = self._deletions, None
        if deletions is not None:
            deletions.close()
        stop = getattr(self.backend, "stop_lingering", None)
        if stop is not None:
            stop()

    def view_count(self, layer_id: str) -> int:
        """Outstanding Gets of a layer (0 when none)."""
        return self.backend.count(layer_id)

    def _drop_views(self, layer_id: str, *, keep_idle: bool = False) -> list[str]:
        """Close the layer's view whatever its count; its disks go too, or with ``keep_idle``
        (a backend that keeps disks idle) stay idle: returns those to release later."""
        release_view = getattr(self.backend, "release_view", None) if keep_idle else None
        try:
            if release_view is not None:
                return list(release_view(layer_id))
            self.backend.release_all(layer_id)
        except (OSError, LcowError) as exc:
            log.warning("lcowdriver: %s: closing its view failed: %s", layer_id, exc)
        return []

    # -- removal -----------------------------------------------------------------------------

    def remove(self, layer_id: str) -> None:
        """Tear down the layer's views and delete its folder (unknown ids succeed).

        Under :meth:`linger` the folder is renamed away (the layer is absent from then on) and
        deleted on a background thread, which :meth:`stop_lingering` and :meth:`cleanup` wait
        for; a crash meanwhile leaves a ``-removing`` folder that Cleanup sweeps.
        """
        validate_id(layer_id)
        deletions = self._deletions
        with self._locks.hold(layer_id):
            idle = self._drop_views(layer_id, keep_idle=deletions is not None)
            with self._root_lock.hold():
                if deletions is None:
                    self.root.remove_layer(layer_id)
                    return
                retired = self.root.retire_layer(layer_id)
        # Absent from here on. In the background: its idle disks are released (a sandbox's
        # unmount writes it home first), then its files deleted.
        release_idle = getattr(self.backend, "release_idle", None)
        if idle and release_idle is not None:
            deletions.submit(retired, functools.partial(release_idle, layer_id, idle))
        elif retired is not None:
            deletions.submit(retired)

    def _lock_held(self, layer_id: str) -> bool:
        """Whether another thread or process holds the layer's lock (it is being written)."""
        with self._locks.try_hold(layer_id) as held:
            return not held

    def cleanup(self, *, release_views: bool = True) -> None:
        """Release every view, sweep ``-removing`` folders and temporaries; never fails.

        A layer (or the sandbox template) whose lock another thread or process holds is being
        written: its folder is left alone, since its temporaries are that writer's work.

        Args:
            release_views: also close every view (dockerd's Cleanup at shutdown); a front end
                whose views outlive its calls (the containerd snapshotter, whose mounts running
                containers use) sweeps without closing them.
        """
        if not self.root.root.exists():
            return
        if self._deletions is not None:
            self._deletions.drain()  # the sweep below would race its deletions
        if release_views:
            try:
                self.backend.cleanup()
            except (OSError, LcowError) as exc:
                log.warning("lcowdriver: cleanup: backend: %s", exc)
        with self._root_lock.hold():
            self.root.sweep_removing()
            self.root.sweep_root_temporaries(in_use=self._lock_held)
        for key, folder in [
            (_CACHE_LOCK, self.root.cache),
            *((i, self.root.layer_dir(i)) for i in self.root.layer_ids()),
        ]:
            with self._locks.try_hold(key) as held:
                if held:
                    self.root.sweep_folder(folder)
