"""A fake registry WITH the OCI 1.1 referrers API, for the one path Docker's registry 2.8 cannot
exercise: a tiny in-memory implementation of the distribution API (manifests by tag or digest,
blobs, monolithic uploads, ``HEAD``; blobs can be answered late, counting the requests in
flight) plus ``GET /v2/<name>/referrers/<digest>``, which answers an
OCI image index of the stored manifests whose ``subject`` is that digest (filtered by
``artifactType`` when asked). No auth, plain HTTP on a free loopback port, served from a thread;
every request is recorded as ``(method, path)``.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from tests.registry.loopback import LoopbackServer

__all__ = ["MemoryRegistry", "TestImage"]

_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_INDEX = "application/vnd.oci.image.index.v1+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class TestImage:
    """A two-layer OCI image of plain tars (``layers``: the tar bytes, base first)."""

    __test__ = False  # not a pytest class

    def __init__(self, tag: str) -> None:
        self.layers: list[bytes] = []
        for n in range(2):
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
                data = f"{tag} layer {n}\n".encode() * 3000
                info = tarfile.TarInfo(f"{tag}{n}.txt")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            self.layers.append(buffer.getvalue())
        self.config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
            "type": "layers", "diff_ids": [_digest(t) for t in self.layers]}}).encode()  # fmt: skip
        self.manifest = json.dumps({
            "schemaVersion": 2, "mediaType": _MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": _digest(self.config), "size": len(self.config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": _digest(t), "size": len(t)} for t in self.layers],
        }).encode()  # fmt: skip
        self.digest = _digest(self.manifest)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _record(self) -> tuple[str, str]:
        with self.server.lock:
            self.server.requests.append((self.command, self.path))
        url = urlsplit(self.path)
        return url.path, url.query

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def do_GET(self) -> None:
        path, query = self._record()
        store = self.server
        if path == "/v2/":
            self._send(200, b"{}")
        elif "/referrers/sha256:" in path:
            subject = path.rsplit("/", 1)[-1]
            wanted = parse_qs(query).get("artifactType")
            entries = []
            for digest, (kind, data) in store.manifests.items():
                document = json.loads(data)
                if document.get("subject", {}).get("digest") != subject:
                    continue
                if wanted and document.get("artifactType") not in wanted:
                    continue
                entries.append({"mediaType": kind, "digest": digest, "size": len(data),
                                "artifactType": document.get("artifactType")})  # fmt: skip
            body = json.dumps({"schemaVersion": 2, "mediaType": _INDEX,
                               "manifests": entries}).encode()  # fmt: skip
            self._send(200, body, {"Content-Type": _INDEX})
        elif "/manifests/" in path:
            reference = path.rsplit("/", 1)[-1]
            digest = store.tags.get(reference, reference)
            if digest not in store.manifests:
                self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
                return
            kind, data = store.manifests[digest]
            self._send(200, data, {"Content-Type": kind, "Docker-Content-Digest": digest})
        elif "/blobs/" in path:
            digest = path.rsplit("/", 1)[-1]
            if digest not in store.blobs:
                self._send(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
                return
            if self.command == "GET" and digest in store.slow:
                self._slowly(store.blobs[digest], digest)
                return
            self._send(200, store.blobs[digest], {"Docker-Content-Digest": digest})
        else:
            self._send(404)

    def _slowly(self, blob: bytes, digest: str) -> None:
        """Answer after a pause, counting the slow blob requests in flight meanwhile."""
        with self.server.lock:
            self.server.in_flight += 1
            self.server.most_in_flight = max(self.server.most_in_flight, self.server.in_flight)
        try:
            time.sleep(1.0)
            self._send(200, blob, {"Docker-Content-Digest": digest})
        finally:
            with self.server.lock:
                self.server.in_flight -= 1

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        path, _ = self._record()
        self._body()
        if path.endswith("/blobs/uploads/"):
            location = f"{path}{uuid.uuid4().hex}?_state=x"
            self._send(202, headers={"Location": location})
        else:
            self._send(404)

    def do_PUT(self) -> None:
        path, query = self._record()
        data = self._body()
        store = self.server
        if "/blobs/uploads/" in path:
            digest = parse_qs(query).get("digest", [""])[0]
            if _digest(data) != digest or "_state=x" not in query:
                self._send(400, b'{"errors":[{"code":"DIGEST_INVALID"}]}')
                return
            store.blobs[digest] = data
            self._send(201, headers={"Docker-Content-Digest": digest})
        elif "/manifests/" in path:
            reference = path.rsplit("/", 1)[-1]
            digest = _digest(data)
            kind = self.headers.get("Content-Type", "")
            store.manifests[digest] = (kind, data)
            if not reference.startswith("sha256:"):
                store.tags[reference] = digest
            elif reference != digest:
                self._send(400, b'{"errors":[{"code":"DIGEST_INVALID"}]}')
                return
            self._send(201, headers={"Docker-Content-Digest": digest})
        else:
            self._send(404)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    lock: threading.Lock
    requests: list[tuple[str, str]]
    manifests: dict[str, tuple[str, bytes]]
    blobs: dict[str, bytes]
    tags: dict[str, str]
    slow: set[str]
    in_flight: int
    most_in_flight: int


class MemoryRegistry(LoopbackServer[_Server]):
    """The fake registry, as a context manager; ``address`` is ``127.0.0.1:PORT``."""

    def __init__(self) -> None:
        super().__init__(_Server, _Handler)
        self._server.lock = threading.Lock()
        self._server.requests = []
        self._server.manifests = {}
        self._server.blobs = {}
        self._server.tags = {}
        self._server.slow = set()
        self._server.in_flight = 0
        self._server.most_in_flight = 0

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Every request so far, as ``(method, path with query)``."""
        with self._server.lock:
            return list(self._server.requests)

    @property
    def tags(self) -> dict[str, str]:
        """Tag → manifest digest."""
        return dict(self._server.tags)

    def slow_down(self, digests: set[str]) -> None:
        """Answer ``GET`` of these blobs one second late, counting them (``most_in_flight``)."""
        self._server.slow = set(digests)

    @property
    def most_in_flight(self) -> int:
        """The most slowed-down blob requests that were in flight at once."""
        return self._server.most_in_flight

    def put_image(self, image: TestImage, tag: str) -> None:
        """Store ``image`` under ``tag`` (as a push would)."""
        for blob in (*image.layers, image.config):
            self._server.blobs[_digest(blob)] = blob
        self._server.manifests[image.digest] = (_MANIFEST, image.manifest)
        self._server.tags[tag] = image.digest
