"""``containerd.services.snapshots.v1.Snapshots`` over gRPC on a unix socket (SPEC §9.9).

containerd 1.6 reaches a proxy snapshotter through ``[proxy_plugins.<name>] type = "snapshot"``
and ``address = "<socket>"``. Each call maps to one :class:`~lcow.snapshots.snapshotter.
Snapshotter` method; lcow's errors map to the gRPC codes containerd's ``errdefs`` turns back
into its own (:func:`status_for`), with the message escaped (keys and labels are client text).
Malformed requests that protobuf cannot decode are refused by grpcio itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from lcow._util.escape import printable
from lcow.errors import (
    AlreadyExists,
    Busy,
    CorruptImage,
    FailedPrecondition,
    InvalidArgument,
    LcowError,
    NoSpace,
    NotFound,
    NotSupported,
    Timeout,
)
from lcow.snapshots._proto import mount_pb2, snapshots_pb2, snapshots_pb2_grpc
from lcow.snapshots.metastore import Kind, Snapshot
from lcow.snapshots.snapshotter import Mount, Snapshotter

__all__ = ["SnapshotsService", "serve", "status_for"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Snapshots per List message (containerd's own service sends them in batches too).
LIST_BATCH = 100

_KINDS = {
    Kind.VIEW: snapshots_pb2.VIEW,
    Kind.ACTIVE: snapshots_pb2.ACTIVE,
    Kind.COMMITTED: snapshots_pb2.COMMITTED,
}

# Most specific first: LimitExceeded is an InvalidArgument, NoSpace an OSError.
_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (CorruptImage, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (Busy, grpc.StatusCode.UNAVAILABLE),
    (Timeout, grpc.StatusCode.UNAVAILABLE),
    (NotSupported, grpc.StatusCode.UNIMPLEMENTED),
    (NoSpace, grpc.StatusCode.RESOURCE_EXHAUSTED),
)


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The gRPC code containerd's errdefs reads ``exc`` as (UNKNOWN for anything else)."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.UNKNOWN


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(ns)
    return stamp


def _info(snap: Snapshot) -> snapshots_pb2.Info:
    return snapshots_pb2.Info(
        name=snap.key,
        parent=snap.parent or "",
        kind=_KINDS[snap.kind],
        created_at=_timestamp(snap.created_ns),
        updated_at=_timestamp(snap.updated_ns),
        labels=snap.labels,
    )


def _mounts(mounts: list[Mount]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, options=list(m.options)) for m in mounts]


class SnapshotsService(snapshots_pb2_grpc.SnapshotsServicer):
    """The servicer: requests in, :class:`Snapshotter` calls, responses or error codes out."""

    def __init__(self, snapshotter: Snapshotter) -> None:
        self.snapshotter = snapshotter

    def _call(self, context: grpc.ServicerContext, what: str, work: Callable[[], T]) -> T:
        """Run ``work``; an error aborts the call with its code and escaped message."""
        try:
            return work()
        except (LcowError, OSError) as exc:
            code = status_for(exc)
            level = logging.ERROR if code is grpc.StatusCode.UNKNOWN else logging.INFO
            log.log(level, "%s: %s: %s", what, code.name, exc,
                    exc_info=code is grpc.StatusCode.UNKNOWN)  # fmt: skip
            context.abort(code, printable(str(exc)))
            raise  # abort raises; for the type checker

    def Prepare(  # noqa: N802 - gRPC's method names
        self, request: snapshots_pb2.PrepareSnapshotRequest, context: grpc.ServicerContext
    ) -> snapshots_pb2.PrepareSnapshotResponse:
        """Create an active snapshot."""
        mounts = self._call(
            context, f"prepare {request.key}",
            lambda: self.snapshotter.prepare(
                request.key, request.parent or None, dict(request.labels)
            ),
        )  # fmt: skip
        return snapshots_pb2.PrepareSnapshotResponse(mounts=_mounts(mounts))

    def View(  # noqa: N802
        self, request: snapshots_pb2.ViewSnapshotRequest, context: grpc.ServicerContext
    ) -> snapshots_pb2.ViewSnapshotResponse:
        """Create a read-only view."""
        mounts = self._call(
            context, f"view {request.key}",
            lambda: self.snapshotter.view(
                request.key, request.parent or None, dict(request.labels)
            ),
        )  # fmt: skip
        return snapshots_pb2.ViewSnapshotResponse(mounts=_mounts(mounts))

    def Mounts(  # noqa: N802
        self, request: snapshots_pb2.MountsRequest, context: grpc.ServicerContext
    ) -> snapshots_pb2.MountsResponse:
        """The mounts of an active snapshot or view."""
        mounts = self._call(
            context, f"mounts {request.key}", lambda: self.snapshotter.mounts(request.key)
        )
        return snapshots_pb2.MountsResponse(mounts=_mounts(mounts))

    def Commit(  # noqa: N802
        self, request: snapshots_pb2.CommitSnapshotRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        """Commit an active snapshot under a name."""
        self._call(
            context, f"commit {request.key} as {request.name}",
            lambda: self.snapshotter.commit(request.name, request.key, dict(request.labels)),
        )  # fmt: skip
        return empty_pb2.Empty()

    def Remove(  # noqa: N802
        self, request: snapshots_pb2.RemoveSnapshotRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        """Remove a snapshot."""
        self._call(context, f"remove {request.key}", lambda: self.snapshotter.remove(request.key))
        return empty_pb2.Empty()

    def Stat(  # noqa: N802
        self, request: snapshots_pb2.StatSnapshotRequest, context: grpc.ServicerContext
    ) -> snapshots_pb2.StatSnapshotResponse:
        """A snapshot's info."""
        snap = self._call(
            context, f"stat {request.key}", lambda: self.snapshotter.stat(request.key)
        )
        return snapshots_pb2.StatSnapshotResponse(info=_info(snap))

    def Update(  # noqa: N802
        self, request: snapshots_pb2.UpdateSnapshotRequest, context: grpc.ServicerContext
    ) -> snapshots_pb2.UpdateSnapshotResponse:
        """Change a snapshot's labels."""
        snap = self._call(
            context, f"update {request.info.name}",
            lambda: self.snapshotter.update(
                request.info.name, dict(request.info.labels), list(request.update_mask.paths)
            ),
        )  # fmt: skip
        return snapshots_pb2.UpdateSnapshotResponse(info=_info(snap))

    def List(  # noqa: N802
        self, request: snapshots_pb2.ListSnapshotsRequest, context: grpc.ServicerContext
    ) -> Iterator[snapshots_pb2.ListSnapshotsResponse]:
        """Every snapshot passing the filters, in batches."""
        found = self._call(context, "list", lambda: self.snapshotter.walk(list(request.filters)))
        for start in range(0, len(found), LIST_BATCH):
            batch = found[start : start + LIST_BATCH]
            yield snapshots_pb2.ListSnapshotsResponse(info=[_info(s) for s in batch])

    def Usage(  # noqa: N802
        self, request: snapshots_pb2.UsageRequest, context: grpc.ServicerContext
    ) -> snapshots_pb2.UsageResponse:
        """Bytes and inodes of a snapshot's own content."""
        usage = self._call(
            context, f"usage {request.key}", lambda: self.snapshotter.usage(request.key)
        )
        return snapshots_pb2.UsageResponse(size=usage.size, inodes=usage.inodes)

    def Cleanup(  # noqa: N802
        self, request: snapshots_pb2.CleanupRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        """Remove the folders of no snapshot."""
        self._call(context, "cleanup", self.snapshotter.cleanup)
        return empty_pb2.Empty()


def serve(
    snapshotter: Snapshotter,
    address: Path,
    *,
    workers: int = 16,
    stop: threading.Event,
    grace: float = 30.0,
) -> None:
    """Serve ``snapshotter`` on the unix socket ``address`` until ``stop`` is set.

    A stale socket file left by a killed server is replaced; anything else at ``address`` is
    an error. The socket is 0600 (containerd runs as root) and removed at the end.

    Raises:
        AlreadyExists: ``address`` exists and is not a socket.
    """
    address.parent.mkdir(parents=True, exist_ok=True)
    try:
        if not stat.S_ISSOCK(os.lstat(address).st_mode):
            raise AlreadyExists(f"{address}: exists and is not a socket", subject=str(address))
        address.unlink()
    except FileNotFoundError:
        pass
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lcow-snapshots")
    )
    snapshots_pb2_grpc.add_SnapshotsServicer_to_server(  # type: ignore[no-untyped-call]
        SnapshotsService(snapshotter), server
    )
    old_umask = os.umask(0o177)
    try:
        server.add_insecure_port(f"unix:{address}")
    finally:
        os.umask(old_umask)
    server.start()
    log.info("snapshotter: serving on %s", address)
    try:
        while not stop.wait(1.0):  # a timed wait: signal handlers get to run
            pass
    finally:
        log.info("snapshotter: stopping")
        server.stop(grace).wait()
        with contextlib.suppress(FileNotFoundError):
            address.unlink()
