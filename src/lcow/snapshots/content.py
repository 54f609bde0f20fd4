"""A client of containerd's content store (``containerd.services.content.v1.Content``).

The snapshotter's fast path (:mod:`.fastpath`) reads layer blobs from the containerd that
calls it, over the same gRPC socket containerd serves its own API on. containerd's content
store is namespaced: every call carries the namespace in the ``containerd-namespace`` gRPC
metadata header (containerd's ``namespaces.GRPCHeader``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from lcow.errors import InvalidArgument, NotFound
from lcow.snapshots._proto import content_pb2, content_pb2_grpc

__all__ = ["CONFIG_REF_LABEL", "NAMESPACE_HEADER", "ContentStore", "Ingest", "check_namespace"]

#: The label containerd's fetch handlers put on a manifest naming its config blob.
CONFIG_REF_LABEL = "containerd.io/gc.ref.content.config"

#: The gRPC metadata header containerd reads the namespace of a call from.
NAMESPACE_HEADER = "containerd-namespace"
# containerd's namespace rule (namespaces.Validate): labels of [A-Za-z0-9] joined by . _ -
_NAMESPACE = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")
_MAX_NAMESPACE = 76


def check_namespace(namespace: str) -> str:
    """Return ``namespace`` if containerd could have made it.

    Raises:
        InvalidArgument: it is not a containerd namespace.
    """
    if len(namespace) > _MAX_NAMESPACE or not _NAMESPACE.fullmatch(namespace):
        raise InvalidArgument(
            f"namespace {namespace[:80]}: not a containerd namespace", subject=namespace[:80]
        )
    return namespace


@dataclass(frozen=True)
class Ingest:
    """A write into the content store under way (a blob being fetched).

    Attributes:
        ref: the ingest's reference (``layer-sha256:...`` for a fetched layer).
        offset: bytes written so far.
        total: the expected size (0: unknown).
        updated_ns: when it last moved, nanoseconds since the epoch.
    """

    ref: str
    offset: int
    total: int
    updated_ns: int


class ContentStore:
    """containerd's content service at the unix socket ``address``.

    Args:
        address: containerd's gRPC socket (``containerd --address``).
        timeout: seconds each short call (Info, ListStatuses) may take.
    """

    def __init__(self, address: Path, *, timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            f"unix:{address}",
            options=[("grpc.max_receive_message_length", 32 << 20)],
        )
        self._stub = content_pb2_grpc.ContentStub(self._channel)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    @staticmethod
    def _metadata(namespace: str) -> tuple[tuple[str, str], ...]:
        return ((NAMESPACE_HEADER, check_namespace(namespace)),)

    def size(self, namespace: str, digest: str) -> int | None:
        """The size of the committed blob ``digest``, or ``None`` when the store has none.

        Raises:
            grpc.RpcError: containerd failed otherwise (unreachable, ...).
        """
        request = content_pb2.InfoRequest(digest=digest)
        try:
            reply = self._stub.Info(request, metadata=self._metadata(namespace),
                                    timeout=self.timeout)  # fmt: skip
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return int(reply.info.size)

    def ingest(self, namespace: str, digest: str) -> Ingest | None:
        """The write of blob ``digest`` under way, if any (matched by its expected digest, or
        by a reference ending with the digest as containerd's fetcher names them).

        Raises:
            grpc.RpcError: containerd failed.
        """
        reply = self._stub.ListStatuses(
            content_pb2.ListStatusesRequest(), metadata=self._metadata(namespace),
            timeout=self.timeout,
        )  # fmt: skip
        for status in reply.statuses:
            if status.expected == digest or status.ref.endswith(digest):
                return Ingest(
                    status.ref, int(status.offset), int(status.total),
                    status.updated_at.ToNanoseconds(),
                )  # fmt: skip
        return None

    def manifests(self, namespace: str) -> list[tuple[str, dict[str, str]]]:
        """The digests and labels of the blobs labelled with a config reference (the image
        manifests containerd fetched in ``namespace``).

        Raises:
            grpc.RpcError: containerd failed.
        """
        request = content_pb2.ListContentRequest(filters=[f'labels."{CONFIG_REF_LABEL}"'])
        found: list[tuple[str, dict[str, str]]] = []
        for reply in self._stub.List(request, metadata=self._metadata(namespace),
                                     timeout=self.timeout):  # fmt: skip
            found.extend((info.digest, dict(info.labels)) for info in reply.info)
        return found

    def read_small(self, namespace: str, digest: str, limit: int) -> bytes | None:
        """The whole blob ``digest`` if it is in the store and at most ``limit`` bytes long.

        Raises:
            grpc.RpcError: containerd failed.
        """
        size = self.size(namespace, digest)
        if size is None or size > limit:
            return None
        try:
            return b"".join(self.read(namespace, digest))
        except NotFound:
            return None

    def read(self, namespace: str, digest: str) -> Iterator[bytes]:
        """The bytes of blob ``digest``, in the chunks containerd sends.

        Raises:
            NotFound: the store has no such blob.
            grpc.RpcError: containerd failed otherwise (the stream may end early then).
        """
        stream = self._stub.Read(
            content_pb2.ReadContentRequest(digest=digest), metadata=self._metadata(namespace)
        )
        expected = 0
        try:
            for reply in stream:
                if reply.offset != expected:
                    raise InvalidArgument(
                        f"blob {digest}: containerd sent offset {reply.offset}, expected "
                        f"{expected}",
                        subject=digest,
                    )
                expected += len(reply.data)
                yield reply.data
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"blob {digest}: not in containerd's content store",
                               subject=digest) from exc  # fmt: skip
            raise
        finally:
            stream.cancel()
