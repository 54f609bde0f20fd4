"""The content-store fast path: a layer converted from its blob at Prepare (issue 15).

containerd's unpacker (``client.Pull`` with ``WithPullUnpack``: CRI, nerdctl) tells the
snapshotter which layer a Prepare is for: the label ``containerd.io/snapshot.ref`` carries the
layer's chain ID (the *target*) and, with CRI's image handler, the label
``containerd.io/snapshot/cri.layer-digest`` the blob's digest. When both are there and the blob
is in containerd's content store, :class:`FastPathSnapshotter` reads it over containerd's
content service, decompresses and converts it in one pass into the ``layer.vhd`` of a fresh
folder (the converter and the staging of ApplyDiff: never half visible), records a committed
snapshot with the Prepare's labels and parent, and answers AlreadyExists — as remote
snapshotters do; containerd then finds that snapshot by its target label and skips its differ.
Anything else (no labels, ``ctr images pull``, a blob not there, a blob that fails) takes the
ordinary path: an active snapshot the differ unpacks into, converted at Commit.

**When the blob is used.** The unpacker starts fetching the layers only after its first
Prepare *succeeds*, and only from that layer on; so a Prepare must never wait for a blob that
is not yet being fetched (it would wait for itself). The rule:

* the blob is committed in the content store: use it;
* it is being written (an ingest whose expected digest, or reference, names it): wait while
  the ingest moves, at most :data:`MAX_WAIT` seconds, giving up after :data:`STALL` seconds
  without progress (an abandoned ingest) — the unpacker would wait for the same fetch before
  applying the layer;
* otherwise: the ordinary path at once.

So with a fresh pull the first layer always takes the ordinary path, and the later ones take
the fast path when their fetch has begun by the time of their Prepare; with the blobs already
in the store (``ctr content fetch``, a second namespace, a re-unpack) every layer does.

**What is trusted.** The blob's bytes are hashed as they are converted: the blob must have the
digest the layer-digest label names, and ``chainID(parent's chain ID, sha256 of the tar)`` must
equal the target, else the layer is discarded, the reason logged, and the ordinary path taken.
The parent's chain ID is its own ``containerd.io/snapshot.ref`` label (containerd set it when
it committed or fast-pathed that layer, after verifying it).

**Names and namespaces.** The committed snapshot is named ``<namespace>/lcow-fastpath/<target>``
(containerd names its own ``<namespace>/<number>/<name>``): one per namespace and target, never
shared across namespaces. An existing committed snapshot of this namespace with the same target
label and parent is answered AlreadyExists without converting again.

**Crashes.** The folder is complete (``layer.vhd`` renamed into place with its metadata) before
the row is written; a crash before the row leaves a folder without a row, which the next
Cleanup removes. No other state exists.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import grpc

from lcow.convert.input import Pump, tar_work
from lcow.errors import AlreadyExists, InvalidArgument, LcowError, NoSpace
from lcow.formats.chainid import chain_id
from lcow.graphdriver.driver import Driver
from lcow.snapshots.content import ContentStore, check_namespace
from lcow.snapshots.labels import check_key, check_labels
from lcow.snapshots.metastore import TARGET_LABEL, Kind, Snapshot, Transaction
from lcow.snapshots.snapshotter import Mount, Snapshotter, new_layer_id

__all__ = [
    "FAST_PATH_LABEL",
    "LAYER_DIGEST_LABEL",
    "MAX_WAIT",
    "STALL",
    "TARGET_LABEL",
    "BlobLayer",
    "BlobRequest",
    "FastPathSnapshotter",
]

log = logging.getLogger(__name__)

#: The digest of the layer's blob (CRI's image handler, ``pkg/snapshotters``).
LAYER_DIGEST_LABEL = "containerd.io/snapshot/cri.layer-digest"
#: Set by lcow on a snapshot converted from its blob: that blob's digest.
FAST_PATH_LABEL = "lcow.fastpath.blob"
#: Longest wait, in seconds, for a blob being fetched.
MAX_WAIT = 600.0
#: Seconds without progress after which an ingest counts as abandoned.
STALL = 10.0
_POLL = 0.05
_SETTLE = 1.0  # an ingest just finished: seconds until its blob shows in the namespace
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BlobRequest:
    """A Prepare the fast path may serve."""

    key: str
    parent: str | None
    labels: dict[str, str]
    namespace: str
    target: str
    blob: str

    @property
    def name(self) -> str:
        return f"{self.namespace}/lcow-fastpath/{self.target}"


@dataclass(frozen=True)
class BlobLayer:
    """The folder the fast path converts a blob into, and what the blob must prove."""

    id: str
    parent_id: str | None
    parent_chain: str | None
    size: int


class _Mismatch(InvalidArgument):
    """The blob is not the layer the labels name."""


def _digest(value: str, label: str, key: str) -> str:
    if not _DIGEST.fullmatch(value):
        raise InvalidArgument(
            f"snapshot {key}: label {label}: {value[:100]!r} is not a sha256 digest",
            subject=key,
        )
    return value


class _BlobFeed:
    """The blob's chunks into a pump that decompresses them into a pipe for the converter,
    hashing the blob as stored and the tar as written."""

    def __init__(self, chunks: Iterator[bytes], name: str) -> None:
        self._chunks = chunks
        self._pending = b""
        self._blob = hashlib.sha256()
        self._tar: hashlib._Hash | None = None  # None: a plain tar, the blob's own hash
        self.size = 0
        self.compression = "none"
        self._pump = Pump(tar_work(name, on_kind=self._found), self._read, name,
                          pipe_size=_CHUNK)  # fmt: skip
        self.source = self._pump.read_fd

    def _read(self, n: int) -> bytes:
        if not self._pending:
            self._pending = next(self._chunks, b"")
        if len(self._pending) <= n:
            data, self._pending = self._pending, b""
        else:
            data, self._pending = self._pending[:n], self._pending[n:]
        self._blob.update(data)
        self.size += len(data)
        return data

    def _found(self, kind: str | None) -> Callable[[bytes], object] | None:
        if kind is None:
            return None
        self.compression = kind
        self._tar = hashlib.sha256()
        return self._tar.update

    def finish(self) -> tuple[str, str]:
        """Read what is left, stop the pump; the blob's digest and the tar's (diff ID).

        Raises:
            InvalidArgument: the blob could not be decompressed.
        """
        try:
            self._pump.drain()
        finally:
            self._pump.close()
        if self._pump.error is not None:
            raise self._pump.error
        while self._read(_CHUNK):  # whatever follows a compressed stream is the blob's too
            pass
        blob = "sha256:" + self._blob.hexdigest()
        return blob, blob if self._tar is None else "sha256:" + self._tar.hexdigest()

    def abort(self) -> BaseException | None:
        """Stop the pump after the converter failed; its own error, if any."""
        self._pump.close()
        return self._pump.error


class FastPathSnapshotter(Snapshotter):
    """The snapshotter, with Prepare served from containerd's content store where it can be.

    Args:
        driver: the driver over the data root (host backend).
        content: containerd's content store (the containerd calling this snapshotter).
        max_wait: longest wait for a blob being fetched, seconds.
        stall: seconds without progress after which an ingest counts as abandoned.
    """

    def __init__(
        self,
        driver: Driver,
        content: ContentStore,
        *,
        max_wait: float = MAX_WAIT,
        stall: float = STALL,
    ) -> None:
        self._in_flight: set[str] = set()  # folders being converted, not yet rows
        super().__init__(driver)
        self.content = content
        self.max_wait = max_wait
        self.stall = stall

    def close(self) -> None:
        """Close the metastore and the content store's channel."""
        super().close()
        self.content.close()

    def prepare(
        self, key: str, parent: str | None, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """As :meth:`Snapshotter.prepare`, or, for a layer whose blob is in containerd's
        content store, that layer converted and committed.

        Raises:
            AlreadyExists: the target snapshot exists now (the fast path committed it, or
                found it committed), or ``key`` is taken.
            InvalidArgument: a target or layer-digest label that is not a sha256 digest, a key
                whose namespace containerd could not have made; as :meth:`Snapshotter.prepare`.
        """
        request = self._request(key, parent, labels or {})
        if request is not None and self._serve(request):
            raise AlreadyExists(
                f"snapshot {key}: target {request.target} is committed (lcow's content-store "
                f"fast path, blob {request.blob})",
                subject=request.target,
            )
        return super().prepare(key, parent, labels)

    # -- deciding ----------------------------------------------------------------------------

    @staticmethod
    def _request(key: str, parent: str | None, labels: Mapping[str, str]) -> BlobRequest | None:
        """The fast path's view of a Prepare, or ``None`` when it does not apply."""
        target, blob = labels.get(TARGET_LABEL), labels.get(LAYER_DIGEST_LABEL)
        if not target or not blob:
            return None
        check_key(key)
        if parent is not None:
            check_key(parent, "parent")
        checked = check_labels(labels, key)
        _digest(target, TARGET_LABEL, key)
        _digest(blob, LAYER_DIGEST_LABEL, key)
        if "/" not in key:  # not a key containerd's metadata made: no namespace to read in
            return None
        namespace = check_namespace(key.split("/", 1)[0])
        return BlobRequest(key, parent, checked, namespace, target, blob)

    def _serve(self, req: BlobRequest) -> bool:
        """Whether the target is committed now (converted here, or found); ``False``: take the
        ordinary path (the reason is logged)."""
        with self.store.transaction() as tx:
            known, parent_chain = self._parent_chain(tx, req)
            if not known or tx.name_taken(req.key):  # the ordinary path's errors
                return False
            if self._found(tx, req):
                log.info("snapshot %s: fast path: target %s is committed already",
                         req.key, req.target)  # fmt: skip
                return True
            if tx.name_taken(req.name):
                log.warning("snapshot %s: fast path: %s is taken by another parent; "
                            "ordinary path", req.key, req.name)  # fmt: skip
                return False
            parent_id = None if req.parent is None else tx.require(req.parent).id
        try:
            size = self._blob_size(req)
        except grpc.RpcError as exc:
            log.warning("snapshot %s: fast path: containerd's content store: %s; ordinary path",
                        req.key, exc.details() if hasattr(exc, "details") else exc)  # fmt: skip
            return False
        if size is None:
            return False
        return self._convert_blob(req, BlobLayer(new_layer_id(), parent_id, parent_chain, size))

    @staticmethod
    def _parent_chain(tx: Transaction, req: BlobRequest) -> tuple[bool, str | None]:
        """Whether the parent's chain ID is known, and it (``None``: no parent). Unknown for a
        missing or uncommitted parent (the ordinary path gives the usual errors) and for a
        parent without a chain ID label."""
        if req.parent is None:
            return True, None
        found = tx.get(req.parent)
        if found is None or found.kind is not Kind.COMMITTED:
            return False, None
        chain = found.labels.get(TARGET_LABEL, "")
        if not _DIGEST.fullmatch(chain):
            log.info("snapshot %s: fast path: parent %s has no chain ID label; ordinary path",
                     req.key, req.parent)  # fmt: skip
            return False, None
        return True, chain

    @staticmethod
    def _found(tx: Transaction, req: BlobRequest) -> bool:
        """Whether this namespace has the target committed over the same parent already."""
        return tx.committed_target(req.target, req.parent, req.namespace + "/") is not None

    def _blob_size(self, req: BlobRequest) -> int | None:
        """The blob's size once it is committed in the content store; ``None``: it is not,
        and no fetch of it is under way, or that fetch stalled or took too long."""
        start = last_move = time.monotonic()
        seen_offset: int | None = None
        gone_at: float | None = None
        while True:
            size = self.content.size(req.namespace, req.blob)
            if size is not None:
                return size
            now = time.monotonic()
            ingest = self.content.ingest(req.namespace, req.blob)
            if ingest is None:
                if seen_offset is None:
                    log.info("snapshot %s: fast path: blob %s is neither in the content store "
                             "nor being fetched; ordinary path", req.key, req.blob)  # fmt: skip
                    return None
                gone_at = gone_at or now  # just committed: let it show in the namespace
                if now - gone_at > _SETTLE:
                    log.info("snapshot %s: fast path: the fetch of blob %s ended without it; "
                             "ordinary path", req.key, req.blob)  # fmt: skip
                    return None
            else:
                gone_at = None
                if seen_offset is None:
                    log.info("snapshot %s: fast path: waiting for the fetch of blob %s (%s, "
                             "%d of %d bytes)", req.key, req.blob, ingest.ref, ingest.offset,
                             ingest.total)  # fmt: skip
                if ingest.offset != seen_offset:
                    seen_offset, last_move = ingest.offset, now
                if now - last_move > self.stall:
                    log.warning("snapshot %s: fast path: the fetch of blob %s (%s) stalled at "
                                "%d bytes; ordinary path", req.key, req.blob, ingest.ref,
                                ingest.offset)  # fmt: skip
                    return None
            if now - start > self.max_wait:
                log.warning("snapshot %s: fast path: blob %s still not fetched after %.0f s; "
                            "ordinary path", req.key, req.blob, self.max_wait)  # fmt: skip
                return None
            time.sleep(_POLL)

    # -- converting --------------------------------------------------------------------------

    def _convert_blob(self, req: BlobRequest, layer: BlobLayer) -> bool:
        with self._mutate:  # Cleanup lists folders under this lock: it sees the id first
            self._in_flight.add(layer.id)
        try:
            return self._convert_into(req, layer)
        finally:
            with self._mutate:
                self._in_flight.discard(layer.id)

    def _convert_into(self, req: BlobRequest, layer: BlobLayer) -> bool:
        started = time.monotonic()
        layer_id = layer.id
        name = f"blob {req.blob}"
        self.driver.create(layer_id, layer.parent_id)
        try:
            compression = self._apply(req, layer, name)
        except NoSpace:
            self._discard(layer_id)
            raise
        except (LcowError, grpc.RpcError) as exc:
            self._discard(layer_id)
            reason = exc.details() if isinstance(exc, grpc.RpcError) and hasattr(
                exc, "details") else exc  # fmt: skip
            log.warning("snapshot %s: fast path: %s: %s; ordinary path", req.key, name, reason)
            return False
        except BaseException:
            self._discard(layer_id)
            raise
        if not self._record(req, layer_id):
            self._discard(layer_id)
            with self.store.transaction() as tx:
                return self._found(tx, req)
        log.info("snapshot %s: fast path: committed %s as %s from %s (%s, %d bytes) in "
                 "layer %s, %.2f s", req.key, req.target, req.name, name, compression,
                 layer.size, layer_id, time.monotonic() - started)  # fmt: skip
        return True

    def _apply(
        self,
        req: BlobRequest,
        layer: BlobLayer,
        name: str,
        wrap: Callable[[Iterator[bytes]], Iterator[bytes]] | None = None,
    ) -> str:
        """Convert the blob into ``layer_id``'s ``layer.vhd``, verified before it is in place;
        returns the blob's compression. ``wrap`` sees the blob's chunks on their way (it may
        stop the conversion by raising)."""
        chunks = self.content.read(req.namespace, req.blob)
        feed = _BlobFeed(chunks if wrap is None else wrap(chunks), name)
        finished: list[str] = []

        def verify() -> dict[str, object]:
            blob, diff_id = feed.finish()
            finished.append(diff_id)
            if blob != req.blob or feed.size != layer.size:
                raise _Mismatch(
                    f"{name}: read {feed.size} bytes with digest {blob}, expected "
                    f"{layer.size} bytes with digest {req.blob}",
                    subject=name,
                )
            chain = chain_id(layer.parent_chain, diff_id)
            if chain != req.target:
                raise _Mismatch(
                    f"{name}: diff ID {diff_id} over parent chain {layer.parent_chain or '(none)'} "
                    f"makes chain ID {chain}, not the target {req.target}",
                    subject=name,
                )
            return {"diff_id": diff_id, "chain_id": chain, "blob": req.blob}

        try:
            self.driver.apply_diff(layer.id, layer.parent_id, feed.source, verify=verify)
        except BaseException as exc:
            if finished:  # the feed finished: the verification itself failed
                raise
            cause = feed.abort()
            if cause is not None and cause is not exc:
                raise cause from exc
            raise
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return feed.compression

    def _record(self, req: BlobRequest, layer_id: str) -> bool:
        """Write the committed row; ``False`` when the parent went or the name was taken
        meanwhile."""
        labels = check_labels({**req.labels, FAST_PATH_LABEL: req.blob}, req.name)
        with self._mutate, self.store.transaction() as tx:
            if req.parent is not None:
                parent = tx.get(req.parent)
                if parent is None or parent.kind is not Kind.COMMITTED:
                    log.warning("snapshot %s: fast path: parent %s went meanwhile",
                                req.key, req.parent)  # fmt: skip
                    return False
            if tx.name_taken(req.name):
                return False
            now = time.time_ns()
            tx.insert(Snapshot(req.name, layer_id, Kind.COMMITTED, req.parent, labels, now, now))
        return True

    def _unlisted_ids(self) -> set[str]:
        """The folders being converted: Cleanup leaves them."""
        return set(self._in_flight)

    def _discard(self, layer_id: str) -> None:
        try:
            self.driver.remove(layer_id)
        except (OSError, LcowError) as exc:
            log.warning("snapshotter: layer %s: removing its folder: %s (cleanup retries)",
                        layer_id, exc)  # fmt: skip
