"""A fake registry for fault injection: a tiny HTTP server that misbehaves on purpose.

:class:`HostileRegistry` answers every ``GET`` the way its ``mode`` says: a manifest that is not
JSON, one larger than the client's cap (announced by ``Content-Length``, or streamed without
one), a Docker schema 1 manifest, a redirect to itself, a server that accepts the request and
never answers, or 503s before a bad answer (to count the client's retries). It serves plain HTTP
on a free loopback port from a thread and counts the requests it got.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

__all__ = ["MODES", "HostileRegistry"]

MODES = ("not-json", "too-big", "too-big-unannounced", "schema1", "redirect-loop", "stall",
         "flaky")  # fmt: skip
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
        if self.path == "/v2/" or mode == "not-json":
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
        elif mode == "flaky" and count <= 2:
            self._send(503, b"busy", {"Content-Length": "4"})
        else:
            self._send(200, b"still not JSON", {"Content-Type": _MANIFEST_TYPE,
                                                 "Content-Length": "14"})  # fmt: skip


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    mode = ""
    requests = 0
    lock = threading.Lock()
    released = threading.Event()


class HostileRegistry:
    """The fake registry, as a context manager; ``address`` is ``127.0.0.1:PORT``."""

    def __init__(self, mode: str) -> None:
        assert mode in MODES, mode
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.mode = mode
        self._server.lock = threading.Lock()
        self._server.released = threading.Event()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    @property
    def requests(self) -> int:
        """``GET`` requests answered (or accepted) so far."""
        return self._server.requests

    def __enter__(self) -> HostileRegistry:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
