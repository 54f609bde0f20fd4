"""Staged unpacks: a layer converted from its blob while containerd's differ unpacks it.

Stock ``ctr images pull`` (containerd's ``rootfs.ApplyLayers``) fetches every blob, then
prepares each layer under the key ``<namespace>/<n>/extract-<unique> <chain ID>`` without a
layer-digest label, unpacks the layer's tar into the mount with its walking differ and commits
it. The content-store fast path (:mod:`.fastpath`) cannot answer such a Prepare: it has no
blob to go by, and answering AlreadyExists makes ``ApplyLayers`` retry under another key.

But containerd's content store can name the blob: its fetch handlers label every manifest with
``containerd.io/gc.ref.content.config`` (the config blob) and ``containerd.io/gc.ref.content.l.
<i>`` (its i-th layer), and the config's ``rootfs.diff_ids`` give each layer's chain ID. So, at
the Prepare of an unpack key, :class:`StagingSnapshotter` answers as usual (a raw sandbox for
the differ) and starts, on a worker thread, to convert the blob whose chain ID ends the key into
the ``layer.vhd`` of a fresh folder — verified as the fast path verifies: the blob's digest and
size, and ``chainID(parent's chain ID, sha256 of the tar)`` equal to the key's chain ID, where
the parent snapshot's name must end in that parent chain ID. At Commit:

* the conversion succeeded: the committed snapshot is that folder (label
  :data:`~lcow.snapshots.fastpath.FAST_PATH_LABEL`: the blob); the sandbox the differ wrote is
  never exported, and its teardown (unmount, loop device, folder) runs on another worker;
* anything else (no manifest names the chain ID, the blob is missing, a mismatch, an error): the
  ordinary Commit, export of the sandbox and conversion.

A Remove of the active snapshot cancels its conversion and discards the folder.

**Crashes.** A staged folder has no row until Commit swaps the active row for the committed
one in one transaction; a sandbox whose row is gone is garbage. Either kind of folder left by a
crash is removed by the next Cleanup (containerd calls it after its garbage collection), with
the sandbox's view (mount, loop device). No row ever names a folder that is not complete.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from lcow._util.syncfs import syncfs
from lcow.errors import LcowError
from lcow.formats.chainid import chain_ids
from lcow.graphdriver.driver import Driver
from lcow.snapshots.content import CONFIG_REF_LABEL, ContentStore
from lcow.snapshots.fastpath import FAST_PATH_LABEL, BlobLayer, BlobRequest, FastPathSnapshotter
from lcow.snapshots.labels import check_key, check_labels
from lcow.snapshots.metastore import TARGET_LABEL, Kind, Snapshot
from lcow.snapshots.snapshotter import Mount, new_layer_id, unpack_key

__all__ = ["LAYER_REF_LABEL", "MAX_CONFIG", "StagingSnapshotter"]

log = logging.getLogger(__name__)

#: The prefix of the labels containerd's fetch handlers name a manifest's layers with.
LAYER_REF_LABEL = "containerd.io/gc.ref.content.l."
#: The largest image config read, bytes.
MAX_CONFIG = 4 << 20
_CHAIN = re.compile(r"sha256:[0-9a-f]{64}")
_MAX_CACHED = 256  # image configs whose chain IDs are kept


class _Cancelled(LcowError):
    """The snapshot was removed while its layer was being converted."""


@dataclass
class _Staging:
    """One background conversion: its folder and outcome (the blob converted, or ``None``)."""

    layer_id: str
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future[str | None] = field(default_factory=Future)


def _target(key: str) -> str | None:
    """The chain ID an unpack key ends in (``... extract-<unique> <chain ID>``)."""
    if not unpack_key(key) or " " not in key:
        return None
    target = key.rsplit(" ", 1)[1]
    return target if _CHAIN.fullmatch(target) else None


class StagingSnapshotter(FastPathSnapshotter):
    """The fast-path snapshotter, with unpack snapshots converted from their blob meanwhile.

    Args:
        driver: the driver over the data root (host backend).
        content: containerd's content store (the containerd calling this snapshotter).
        workers: conversions that may run at once.
        **options: as :class:`~lcow.snapshots.fastpath.FastPathSnapshotter`.
    """

    def __init__(
        self, driver: Driver, content: ContentStore, *, workers: int = 2, **options: float
    ) -> None:
        self._staged: dict[str, _Staging] = {}
        self._chains: dict[str, list[str]] = {}  # config digest -> chain IDs (immutable)
        self._converting = ThreadPoolExecutor(workers, thread_name_prefix="lcow-stage")
        self._teardown = ThreadPoolExecutor(1, thread_name_prefix="lcow-teardown")
        super().__init__(driver, content, **options)

    def close(self) -> None:
        """Cancel the conversions, finish the teardowns, then close as the base does."""
        with self._mutate:
            staged = list(self._staged.values())
            self._staged.clear()
        for staging in staged:
            staging.cancel.set()
            self._drop(staging)
        self._converting.shutdown(wait=True)  # the cancelled jobs end, their folders go
        self._teardown.shutdown(wait=True)
        super().close()

    # -- Prepare -----------------------------------------------------------------------------

    def prepare(
        self, key: str, parent: str | None, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """As :meth:`FastPathSnapshotter.prepare`; for an unpack key, the conversion of its
        layer's blob starts meanwhile."""
        mounts = super().prepare(key, parent, labels)
        target = _target(key)
        if target is not None and "/" in key:
            staging = _Staging(new_layer_id())
            with self._mutate:
                self._in_flight.add(staging.layer_id)
                self._staged[key] = staging
            try:
                self._converting.submit(self._stage, key, parent, target, staging)
            except RuntimeError:  # shutting down: nothing staged, the ordinary commit
                staging.future.set_result(None)
                self._forget(key, staging)
        return mounts

    def _stage(self, key: str, parent: str | None, target: str, staging: _Staging) -> None:
        """The worker's job: the layer converted into ``staging.layer_id``; the outcome is the
        blob's digest, or ``None`` (the reason logged)."""
        try:
            result = self._convert_staged(key, parent, target, staging)
        except BaseException as exc:  # a job's failure is only ever a fallback
            log.warning("snapshot %s: staged conversion: %s; ordinary commit", key, exc)
            result = None
        staging.future.set_result(result)

    def _convert_staged(
        self, key: str, parent: str | None, target: str, staging: _Staging
    ) -> str | None:
        started = time.monotonic()
        namespace = key.split("/", 1)[0]
        found = self._find_blob(namespace, target)
        if found is None:
            log.info("snapshot %s: staged conversion: no manifest in namespace %s names "
                     "chain ID %s; ordinary commit", key, namespace, target)  # fmt: skip
            return None
        blob, parent_chain = found
        with self.store.transaction() as tx:
            parent_id: str | None = None
            if parent is not None:
                row = tx.get(parent)
                if row is None or row.kind is not Kind.COMMITTED:
                    return None
                named = row.key.endswith(f"/{parent_chain}")
                if not named and row.labels.get(TARGET_LABEL) != parent_chain:
                    log.info("snapshot %s: staged conversion: parent %s is not chain %s; "
                             "ordinary commit", key, parent, parent_chain)  # fmt: skip
                    return None
                parent_id = row.id
            elif parent_chain is not None:
                return None
        size = self.content.size(namespace, blob)
        if size is None:
            log.info("snapshot %s: staged conversion: blob %s is not in the content store; "
                     "ordinary commit", key, blob)  # fmt: skip
            return None
        req = BlobRequest(key, parent, {}, namespace, target, blob)
        layer = BlobLayer(staging.layer_id, parent_id, parent_chain, size)
        self.driver.create(layer.id, parent_id)
        try:
            compression = self._apply(req, layer, f"blob {blob}", self._cancellable(staging))
        except BaseException:
            self._discard(layer.id)
            raise
        log.info("snapshot %s: staged conversion of blob %s (%s, %d bytes) into layer %s: "
                 "%.2f s", key, blob, compression, size, layer.id,
                 time.monotonic() - started)  # fmt: skip
        return blob

    @staticmethod
    def _cancellable(staging: _Staging) -> Callable[[Iterator[bytes]], Iterator[bytes]]:
        def wrap(chunks: Iterator[bytes]) -> Iterator[bytes]:
            for chunk in chunks:
                if staging.cancel.is_set():
                    raise _Cancelled("staged conversion: the snapshot was removed")
                yield chunk

        return wrap

    def _find_blob(self, namespace: str, target: str) -> tuple[str, str | None] | None:
        """The blob of the layer whose chain ID is ``target`` and its parent's chain ID, from
        the manifests and configs in ``namespace``'s content store."""
        try:
            for _digest, labels in self.content.manifests(namespace):
                config = labels.get(CONFIG_REF_LABEL)
                if config is None:
                    continue
                chains = self._config_chains(namespace, config)
                if chains is None or target not in chains:
                    continue
                index = chains.index(target)
                blob = labels.get(f"{LAYER_REF_LABEL}{index}")
                if blob is not None and _CHAIN.fullmatch(blob):
                    return blob, chains[index - 1] if index else None
        except grpc.RpcError as exc:
            log.warning("staged conversion: containerd's content store: %s",
                        exc.details() if hasattr(exc, "details") else exc)  # fmt: skip
        return None

    def _config_chains(self, namespace: str, config: str) -> list[str] | None:
        """The chain IDs of the image config ``config`` (cached: a digest names one content);
        ``None``: not in the store, too big or not an image config.

        Raises:
            grpc.RpcError: containerd failed.
        """
        chains = self._chains.get(config)
        if chains is not None:
            return chains
        raw = self.content.read_small(namespace, config, MAX_CONFIG)
        if raw is None:
            return None
        try:
            diff_ids = json.loads(raw)["rootfs"]["diff_ids"]
            chains = chain_ids([str(d) for d in diff_ids])
        except (ValueError, KeyError, TypeError, UnicodeEncodeError):
            return None
        if len(self._chains) >= _MAX_CACHED:
            self._chains.clear()
        self._chains[config] = chains
        return chains

    # -- Commit and Remove -------------------------------------------------------------------

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """As :meth:`Snapshotter.commit`, with the staged layer taking the sandbox's place when
        its conversion succeeded."""
        with self._mutate:
            staging = self._staged.get(key)
        if staging is None:
            return super().commit(name, key, labels)
        try:
            blob = staging.future.result(timeout=self.max_wait)
        except TimeoutError:
            log.warning("snapshot %s: staged conversion still running after %.0f s; cancelled, "
                        "ordinary commit", key, self.max_wait)  # fmt: skip
            staging.cancel.set()
            blob = None
        if blob is not None and self._swap(name, key, labels, staging, blob):
            return None
        self._forget(key, staging)
        return super().commit(name, key, labels)

    def _swap(
        self, name: str, key: str, labels: Mapping[str, str] | None, staging: _Staging, blob: str
    ) -> bool:
        """Replace the active row by the committed ``name`` over the staged folder; the sandbox
        is torn down on a worker. ``False``: the ordinary commit's checks apply (the staged
        folder is then discarded)."""
        check_key(name, "name")
        check_key(key)
        given = check_labels(labels or {}, name)
        with self._mutate, self.store.transaction() as tx:
            snap = tx.get(key)
            if (
                snap is None or snap.kind is not Kind.ACTIVE or snap.pending_name is not None
                or tx.name_taken(name)
                or (snap.parent is not None and tx.get(snap.parent) is None)
            ):  # fmt: skip
                return False
            blob_labels = check_labels({**given, FAST_PATH_LABEL: blob}, name)
            now = time.time_ns()
            tx.delete(key)
            tx.insert(
                Snapshot(name, staging.layer_id, Kind.COMMITTED, snap.parent, blob_labels,
                         now, now)
            )  # fmt: skip
            self._staged.pop(key, None)
            self._in_flight.discard(staging.layer_id)
        log.info("snapshot %s: committed as %s from its staged layer %s (sandbox %s torn down "
                 "in the background)", key, name, staging.layer_id, snap.id)  # fmt: skip
        self._teardown.submit(self._tear_down, snap.id, snap.source)
        return True

    def _tear_down(self, layer_id: str, source: str | None) -> None:
        """Remove a sandbox no row names any more. Its content is garbage: its ext4 is shut
        down first without writing back (the unmount would write its page cache back into
        ``sandbox.img``, and on to the disk, holding the host backend's mount table, so that
        every Prepare meanwhile waited for it); where that is not possible, it is written back
        by ``syncfs`` on the view, outside the mount table's lock."""
        try:
            if self.driver.discard(layer_id):
                log.info("snapshotter: layer %s: sandbox shut down, not written back", layer_id)
                source = None
        except OSError as exc:
            log.info("snapshotter: layer %s: cannot shut its sandbox down: %s", layer_id, exc)
        if source is not None:
            try:
                syncfs(source)
            except OSError as exc:
                log.warning("snapshotter: layer %s: syncfs before its teardown: %s", layer_id, exc)
        self._remove_folder(layer_id)

    def remove(self, key: str) -> None:
        """As :meth:`Snapshotter.remove`; a conversion staged for ``key`` is cancelled."""
        super().remove(key)
        with self._mutate:
            staging = self._staged.pop(key, None)
        if staging is not None:
            staging.cancel.set()
            self._drop(staging)

    def _forget(self, key: str, staging: _Staging) -> None:
        with self._mutate:
            if self._staged.get(key) is staging:
                del self._staged[key]
        self._drop(staging)

    def _drop(self, staging: _Staging) -> None:
        """Discard the folder of a staged conversion no one will use, once it has ended (on
        the worker that ends it, or here when it has)."""

        def discard(_: Future[str | None]) -> None:
            self._discard(staging.layer_id)
            with self._mutate:
                self._in_flight.discard(staging.layer_id)

        staging.future.add_done_callback(discard)
