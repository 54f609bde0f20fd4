"""A minimal plugin client over a real unix socket, speaking as dockerd does (SPEC §9.1).

``http.client`` over ``AF_UNIX``: POST, ``Accept: application/vnd.docker.plugins.v1.2+json``,
JSON bodies with a newline; ApplyDiff bodies chunked. :func:`raw_request` sends hand-made bytes
for the cases a well-behaved client cannot produce (truncated bodies, half-sent chunks).
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterable
from typing import Any

__all__ = [
    "ACCEPT",
    "PluginClient",
    "Reply",
    "UnixHTTPConnection",
    "chunked",
    "raw_request",
    "read_reply",
    "stalled_request",
]

ACCEPT = "application/vnd.docker.plugins.v1.2+json"


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection whose transport is a unix socket."""

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        super().__init__("plugin", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class Reply:
    """Status, headers and body of one answer."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body[:200]!r})"


class PluginClient:
    """Calls on one kept-alive connection (a fresh one after a failure)."""

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        self.path = path
        self.timeout = timeout
        self._conn: UnixHTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(
        self,
        method: str,
        body: bytes | Iterable[bytes] | None = None,
        *,
        http_method: str = "POST",
        headers: dict[str, str] | None = None,
        encode_chunked: bool = False,
    ) -> Reply:
        if self._conn is None:
            self._conn = UnixHTTPConnection(self.path, self.timeout)
        all_headers = {"Accept": ACCEPT, **(headers or {})}
        if encode_chunked:
            all_headers["Transfer-Encoding"] = "chunked"
        try:
            self._conn.request(
                http_method,
                "/" + method,
                body=body,
                headers=all_headers,
                encode_chunked=encode_chunked,
            )
            response = self._conn.getresponse()
            data = response.read()
        except BaseException:
            self.close()
            raise
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)

    def call(self, method: str, payload: Any = None) -> Reply:
        """A JSON call (``{}`` when ``payload`` is ``None``, as dockerd sends)."""
        body = json.dumps({} if payload is None else payload).encode() + b"\n"
        return self.request(method, body)

    def ok(self, method: str, payload: Any = None) -> Any:
        """A JSON call that must succeed: its decoded answer."""
        reply = self.call(method, payload)
        assert reply.status == 200, reply
        value = reply.json
        assert "Err" not in value, value
        return value

    def apply_diff(self, layer_id: str, parent: str, data: bytes, chunk: int = 65536) -> Reply:
        """ApplyDiff as dockerd sends it: query not escaped, body chunked."""
        parts = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
        return self.request(
            f"GraphDriver.ApplyDiff?id={layer_id}&parent={parent}",
            iter(parts),
            encode_chunked=True,
        )


def chunked(data: bytes, size: int = 4096) -> bytes:
    """``data`` in HTTP/1.1 chunked encoding, with the final empty chunk."""
    out = bytearray()
    for i in range(0, len(data), size):
        part = data[i : i + size]
        out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    return bytes(out + b"0\r\n\r\n")


def raw_request(
    path: str, head: str, body: bytes, *, close_write: bool = True, pause: float = 0.0
) -> bytes:
    """Send ``head`` (request line and headers, without the blank line) and ``body`` verbatim,
    wait ``pause`` seconds, optionally half-close, and return whatever comes back until the
    server closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(60)
        sock.connect(path)
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        time.sleep(pause)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
        return bytes(received)


def stalled_request(path: str, head: str, body: bytes) -> socket.socket:
    """Send ``head`` and the start of a body, then nothing more: the socket, still open."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(head.encode() + b"\r\n\r\n" + body)
    return sock


def read_reply(sock: socket.socket, timeout: float) -> Reply:
    """One answer (headers and a ``Content-Length`` body) from ``sock``, within ``timeout``."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before an answer: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return Reply(int(lines[0].split()[1]), headers, body)
