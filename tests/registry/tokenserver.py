"""A token server for docker-registry's ``auth.token`` mode, as Docker Hub's auth service works.

``GET /token?service=S&scope=repository:NAME:ACTIONS`` with Basic credentials answers
``{"token": JWT}``: a JSON Web Token signed RS256 (by ``openssl dgst -sha256 -sign``) whose
header carries the signing certificate (``x5c``), which the registry checks against its
``rootcertbundle``, granting the asked actions on the asked repository. Wrong or missing
credentials get 401. Every request's query and user are recorded (:attr:`TokenServer.asked`).

``POST /token`` is the distribution spec's OAuth2 endpoint: a form with
``grant_type=refresh_token``, ``refresh_token``, ``service``, ``scope`` and ``client_id`` answers
``{"access_token": JWT, "expires_in": 300, "refresh_token": ...}`` when the refresh token is the
server's identity token (401 ``invalid_grant`` otherwise, 400 for another grant or a missing
field); every form is recorded (:attr:`TokenServer.posted`). With ``oauth`` off, POST answers 404
like a token server that only has GET; with ``redirect`` set, a 307 there. Plain HTTP on a
free loopback port, served from a thread.
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypedDict
from urllib.parse import parse_qs, urlsplit

from tests.registry.loopback import LoopbackServer

__all__ = ["TokenServer"]

ISSUER = "lcow-test-issuer"
SERVICE = "lcow-test-registry"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _Access(TypedDict):
    """One grant of a token's ``access`` claim (the registry's token format)."""

    type: str
    name: str
    actions: list[str]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _answer(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        header = self.headers.get("Authorization", "")
        user = None
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if (user, password) != self.server.login:
                user = "!wrong"
        with self.server.lock:
            self.server.asked.append({"user": user, **{k: v[0] for k, v in query.items()}})
        if user is None or user == "!wrong":
            self._answer(401, {"details": "bad or missing credentials"})
            return
        access: list[_Access] = []
        for scope in query.get("scope", []):
            kind, name, actions = scope.split(":")
            access.append(_Access(type=kind, name=name, actions=actions.split(",")))
        self._answer(200, {"token": self.server.sign(user, access)})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        with self.server.lock:
            self.server.posted.append(form)
        if self.server.redirect is not None:
            self.send_response(307)
            self.send_header("Location", self.server.redirect)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if not self.server.oauth:
            self._answer(404, {"details": "no OAuth2 here"})
            return
        required = ("refresh_token", "service", "scope", "client_id")
        if form.get("grant_type") != "refresh_token" or any(k not in form for k in required):
            self._answer(400, {"error": "invalid_request"})
            return
        if form["refresh_token"] != self.server.identity_token:
            self._answer(401, {"error": "invalid_grant"})
            return
        kind, name, actions = form["scope"].split(":")
        access = [_Access(type=kind, name=name, actions=actions.split(","))]
        token = self.server.sign("identity-token-user", access)
        self._answer(200, {"access_token": token, "expires_in": 300,
                           "refresh_token": form["refresh_token"]})  # fmt: skip


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    login: tuple[str, str] = ("", "")
    lock = threading.Lock()
    asked: list[dict[str, str | None]]
    posted: list[dict[str, str]]
    identity_token = ""
    oauth = True
    redirect: str | None = None
    key: Path
    cert_der: bytes

    def sign(self, user: str, access: list[_Access]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {"iss": ISSUER, "sub": user, "aud": SERVICE, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}  # fmt: skip
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(), capture_output=True, check=True,
        ).stdout  # fmt: skip
        return f"{signing_input}.{_b64url(signature)}"


class TokenServer(LoopbackServer[_Server]):
    """The token server, as a context manager.

    Args:
        key: the PEM private key that signs tokens.
        cert: its self-signed certificate (PEM; the registry's ``rootcertbundle``).
        login: the one ``(user, password)`` it accepts.
        identity_token: the one refresh token its OAuth2 POST accepts.
    """

    def __init__(self, key: Path, cert: Path, login: tuple[str, str], identity_token: str) -> None:
        super().__init__(_Server, _Handler)
        self._server.login = login
        self._server.identity_token = identity_token
        self._server.lock = threading.Lock()
        self._server.asked = []
        self._server.posted = []
        self._server.key = key
        self._server.cert_der = subprocess.run(
            ["openssl", "x509", "-in", str(cert), "-outform", "DER"],
            capture_output=True, check=True,
        ).stdout  # fmt: skip
        self.cert = cert

    @property
    def realm(self) -> str:
        return f"http://{self.address}/token"

    def registry_config(self) -> dict[str, str]:
        """The registry's ``auth.token`` section for this server."""
        return {"realm": self.realm, "service": SERVICE, "issuer": ISSUER,
                "rootcertbundle": str(self.cert)}  # fmt: skip

    @property
    def asked(self) -> list[dict[str, str | None]]:
        """Each request's query parameters and user (``None``: no credentials)."""
        with self._server.lock:
            return list(self._server.asked)

    @property
    def posted(self) -> list[dict[str, str]]:
        """Each OAuth2 POST's form fields."""
        with self._server.lock:
            return list(self._server.posted)

    @property
    def oauth(self) -> bool:
        """Whether POST is served (off: 404, like a token server with GET only)."""
        return self._server.oauth

    @oauth.setter
    def oauth(self, value: bool) -> None:
        self._server.oauth = value

    @property
    def redirect(self) -> str | None:
        """Where POST is redirected with a 307 (``None``: not redirected)."""
        return self._server.redirect

    @redirect.setter
    def redirect(self, value: str | None) -> None:
        self._server.redirect = value
