"""A fake registry for fault injection: a tiny HTTP server that misbehaves on purpose.

:class:`HostileRegistry` answers every ``GET`` the way its ``mode`` says: a manifest that is not
JSON, one larger than the client's cap (announced by ``Content-Length``, or streamed without
one), a Docker schema 1 manifest, a redirect to itself, a server that accepts the request and
never answers, 503s before a bad answer (to count the client's retries), or a valid one-layer
image whose layer blob is served longer or shorter than its descriptor says (with or without
``Content-Length``), or a valid
three-layer image whose blobs are answered after a pause while the requests in flight are
counted (``most_in_flight``), or one whose first layer ends early while the others stall
mid-body (``one-fails``), or a valid one-layer image whose referrers API answers badly: a
5 MiB index (``referrers-huge``), not JSON (``referrers-not-json``), a manifest where an index
belongs (``referrers-wrong-type``); in those modes ``HEAD`` says every blob is there and
``PUT`` of a manifest succeeds, so that ``lcow publish`` reaches the referrers request. It
serves plain HTTP on a free loopback port from a thread and counts the ``GET`` requests it got.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from tests.registry.loopback import LoopbackServer

__all__ = ["MODES", "HostileRegistry", "hostile_layers", "layer_digest"]

MODES = ("not-json", "too-big", "too-big-unannounced", "schema1", "redirect-loop", "stall",
         "flaky", "long-blob", "short-blob", "long-blob-unannounced", "short-blob-unannounced",
         "parallel", "one-fails", "referrers-huge", "referrers-not-json",
         "referrers-wrong-type")  # fmt: skip
_REFERRER_MODES = ("referrers-huge", "referrers-not-json", "referrers-wrong-type")
_IMAGE_MODES = ("long-blob", "short-blob", "long-blob-unannounced", "short-blob-unannounced",
                "parallel", "one-fails", *_REFERRER_MODES)  # fmt: skip
_INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
_MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
_BIG = 5 << 20  # more than lcow's 4 MiB cap on manifests


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.requests += 1
            count = self.server.requests
        mode = self.server.mode
        if mode in _REFERRER_MODES and "/referrers/" in self.path:
            self._referrers(mode)
        elif self.path == "/v2/" or mode == "not-json":
            self._send(200, b"<html>this is not a manifest</html>",
                       {"Content-Type": _MANIFEST_TYPE, "Content-Length": "35"})  # fmt: skip
        elif mode == "too-big":
            self.send_response(200)
            self.send_header("Content-Type", _MANIFEST_TYPE)
            self.send_header("Content-Length", str(_BIG))
            self.end_headers()
            self.wfile.write(b"{" + b" " * (_BIG - 2) + b"}")
        elif mode == "too-big-unannounced":  # HTTP/1.0: the body ends when the connection does
            self.send_response(200)
            self.send_header("Content-Type", _MANIFEST_TYPE)
            self.end_headers()
            self.wfile.write(b"{" + b" " * (_BIG - 2) + b"}")
        elif mode == "schema1":
            body = json.dumps({"schemaVersion": 1, "name": "hostile/img", "fsLayers": []}).encode()
            kind = "application/vnd.docker.distribution.manifest.v1+prettyjws"
            self._send(200, body, {"Content-Length": str(len(body)), "Content-Type": kind})
        elif mode == "redirect-loop":
            self._send(302, b"", {"Location": self.path, "Content-Length": "0"})
        elif mode == "stall":
            self.server.released.wait(120)  # accepted, never answered
        elif mode in _IMAGE_MODES:
            self._image(mode)
        elif mode == "flaky" and count <= 2:
            self._send(503, b"busy", {"Content-Length": "4"})
        else:
            self._send(200, b"still not JSON", {"Content-Type": _MANIFEST_TYPE,
                                                 "Content-Length": "14"})  # fmt: skip

    def _referrers(self, mode: str) -> None:
        if mode == "referrers-huge":
            self.send_response(200)
            self.send_header("Content-Type", _INDEX_TYPE)
            self.end_headers()  # no Content-Length: the cap must stop the read
            self.wfile.write(b'{"manifests": [' + b" " * _BIG + b"]}")
        elif mode == "referrers-not-json":
            self._send(200, b"<html>no</html>", {"Content-Type": _INDEX_TYPE,
                                                  "Content-Length": "15"})  # fmt: skip
        else:
            body = _Image.get(1).manifest
            self._send(200, body, {"Content-Type": _MANIFEST_TYPE,
                                   "Content-Length": str(len(body))})  # fmt: skip

    def do_HEAD(self) -> None:
        if self.server.mode in _REFERRER_MODES and "/blobs/" in self.path:
            self._send(200, b"", {"Content-Length": "0"})  # "the registry has it"
        else:
            self._send(404, b"", {"Content-Length": "0"})

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.server.mode in _REFERRER_MODES and "/manifests/" in self.path:
            self._send(201, b"", {"Content-Length": "0"})
        else:
            self._send(405, b"", {"Content-Length": "0"})

    def _image(self, mode: str) -> None:
        image = _Image.get(3 if mode in ("parallel", "one-fails") else 1)
        if self.path.endswith(("/manifests/v1", f"/manifests/{_digest(image.manifest)}")):
            body = image.manifest
            self._send(200, body, {"Content-Type": _MANIFEST_TYPE,
                                   "Content-Length": str(len(body))})  # fmt: skip
        elif self.path.endswith(f"/blobs/{image.config_digest}"):
            self._send(200, image.config, {"Content-Length": str(len(image.config))})
        elif self.path.rsplit("/", 1)[-1] in image.layers:
            layer = image.layers[self.path.rsplit("/", 1)[-1]]
            if mode == "parallel":
                self._slowly(layer)
                return
            if mode == "one-fails":
                self._one_fails(layer, first=layer is next(iter(image.layers.values())))
                return
            if mode in _REFERRER_MODES:
                self._send(200, layer, {"Content-Length": str(len(layer))})
                return
            blob = layer + b"x" * 4096 if mode.startswith("long") else layer[:-4096]
            if mode.endswith("-unannounced"):  # HTTP/1.0: the body ends when the connection does
                self.send_response(200)
                self.end_headers()
                self.wfile.write(blob)
            else:
                self._send(200, blob, {"Content-Length": str(len(blob))})
        else:
            self._send(404, b"", {"Content-Length": "0"})

    def _slowly(self, blob: bytes) -> None:
        """Answer after a pause, counting the blob requests in flight meanwhile."""
        with self.server.lock:
            self.server.in_flight += 1
            self.server.most_in_flight = max(self.server.most_in_flight, self.server.in_flight)
        try:
            time.sleep(1.5)
            self._send(200, blob, {"Content-Length": str(len(blob))})
        finally:
            with self.server.lock:
                self.server.in_flight -= 1

    def _one_fails(self, blob: bytes, *, first: bool) -> None:
        """The first layer ends early; the others send half, then stall until released."""
        if first:
            time.sleep(0.5)  # the others are downloading by now
            self._send(200, blob[:-4096], {"Content-Length": str(len(blob))})
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(blob)))
        self.end_headers()
        self.wfile.write(blob[: len(blob) // 2])
        self.wfile.flush()
        self.server.released.wait(120)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Image:
    """A valid OCI image of ``count`` plain tar layers (made once per count)."""

    _made: ClassVar[dict[int, _Image]] = {}

    def __init__(self, count: int) -> None:
        self.layers: dict[str, bytes] = {}
        for n in range(count):
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
                data = f"hostile layer {n}\n".encode() * 1000
                info = tarfile.TarInfo(f"file{n}.txt")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            self.layers[_digest(buffer.getvalue())] = buffer.getvalue()
        self.config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
            "type": "layers", "diff_ids": list(self.layers)}}).encode()  # fmt: skip
        self.config_digest = _digest(self.config)
        self.manifest = json.dumps({
            "schemaVersion": 2, "mediaType": _MANIFEST_TYPE,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": self.config_digest, "size": len(self.config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": digest, "size": len(blob)}
                       for digest, blob in self.layers.items()],
        }).encode()  # fmt: skip

    @classmethod
    def get(cls, count: int) -> _Image:
        if count not in cls._made:
            cls._made[count] = cls(count)
        return cls._made[count]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    mode = ""
    requests = 0
    in_flight = 0
    most_in_flight = 0
    lock = threading.Lock()
    released = threading.Event()


class HostileRegistry(LoopbackServer[_Server]):
    """The fake registry, as a context manager; ``address`` is ``127.0.0.1:PORT``."""

    def __init__(self, mode: str) -> None:
        assert mode in MODES, mode
        super().__init__(_Server, _Handler)
        self._server.mode = mode
        self._server.lock = threading.Lock()
        self._server.released = threading.Event()

    @property
    def most_in_flight(self) -> int:
        """The most blob requests that were in flight at once (``parallel`` mode)."""
        return self._server.most_in_flight

    @property
    def requests(self) -> int:
        """``GET`` requests answered (or accepted) so far."""
        return self._server.requests

    def _before_stop(self) -> None:
        self._server.released.set()  # handlers made to wait let go


def hostile_layers(count: int) -> list[str]:
    """The layer digests of the ``count``-layer image the image modes serve, base first."""
    return list(_Image.get(count).layers)


def layer_digest() -> str:
    """The digest of the one layer the ``long-blob`` and ``short-blob`` modes serve."""
    return next(iter(_Image.get(1).layers))
