"""A client of one repository of a registry: the OCI distribution API over httpx.

What httpx does: connections and keep-alive, TLS (with the system's CA store, plus
``--ca-file``), timeouts, redirects (bounded; ``Authorization`` dropped when a redirect leaves
the origin, as blob downloads redirected to a CDN need), chunked and streamed bodies.

What is written here, because no library does it for registries:

* the token flow: a 401's ``WWW-Authenticate`` (:mod:`lcow.registry.challenge`) names a
  ``Bearer`` realm (asked with ``service`` and ``scope``, with the user's credentials as Basic
  auth when there are some; an identity token is POSTed instead as the distribution spec's
  OAuth2 ``refresh_token`` grant) or ``Basic`` (the credentials on every request);
* retries with exponential backoff (and ``Retry-After``) on connection errors, timeouts, 5xx
  and 429, before a body is read — a body cut short is not resumed: the layer fails and the
  pull is all-or-nothing like an import;
* size caps on documents (manifests, indexes, configs, token answers) and on blobs, which must
  be exactly as long as their descriptor says: reading stops at the first byte too many.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from lcow.errors import LcowError, NotFound, Timeout
from lcow.registry.challenge import Challenge, parse_challenges
from lcow.registry.credentials import Credentials, config_path
from lcow.registry.errors import (
    BlobMismatch,
    Cancelled,
    RegistryError,
    RegistryUnavailable,
    Unauthorized,
)

__all__ = [
    "MAX_DOCUMENT",
    "BlobReader",
    "Body",
    "ClientOptions",
    "Document",
    "RegistryClient",
]

log = logging.getLogger(__name__)

#: Largest manifest, index or config accepted (containerd's limit for manifests).
MAX_DOCUMENT = 4 << 20
_MAX_TOKEN_ANSWER = 1 << 20
#: The OAuth2 ``client_id``: the spec asks for a meaningful name (for the token server's
#: auditing), not a registered one.
_CLIENT_ID = "lcow"
_MAX_BACKOFF = 8.0

#: A request body: bytes, or a callable giving the chunks afresh for every attempt.
Body = bytes | Callable[[], Iterable[bytes]]


@dataclass(frozen=True)
class ClientOptions:
    """How to talk to a registry.

    Attributes:
        plain_http: use ``http://`` (a local registry without TLS).
        ca_file: PEM file of extra CAs to trust besides the system's.
        timeout: seconds to connect, and to wait for each read or write.
        retries: further attempts after a failed request (connection error, timeout, 5xx, 429).
        backoff: the first pause between attempts, doubled after each (at most 8 s).
        max_redirects: redirects followed per request.
        max_document: largest manifest, index or config accepted, in bytes.
    """

    plain_http: bool = False
    ca_file: str | None = None
    timeout: float = 30.0
    retries: int = 4
    backoff: float = 0.5
    max_redirects: int = 5
    max_document: int = MAX_DOCUMENT


@dataclass(frozen=True)
class Document:
    """A small JSON document fetched from the registry.

    Attributes:
        data: its bytes, exactly as served.
        media_type: the ``Content-Type`` (without parameters), ``""`` if none.
        digest: ``sha256:<hex>`` of ``data``.
    """

    data: bytes
    media_type: str
    digest: str

    def json(self, what: str) -> Any:
        """The parsed document.

        Raises:
            RegistryError: not JSON.
        """
        try:
            return json.loads(self.data)
        except (ValueError, RecursionError) as exc:
            raise RegistryError(f"{what}: not JSON ({exc})", subject=what) from exc


class TrustOnFirstUse(ssl.SSLContext):
    """A TLS client context that reads the system's CA store at its first handshake.

    For ``--plain-http``: such a pull may still meet TLS (a redirect to a blob store over
    HTTPS), but mostly never does, and reading the CA bundle cost each pull about 15 ms, 4 % of
    a converted pull. Verification is on from the start (``PROTOCOL_TLS_CLIENT``: certificates
    required, host names checked), so until the store is read the context trusts nothing: it
    fails closed.
    """

    def __new__(cls) -> TrustOnFirstUse:
        return super().__new__(cls, ssl.PROTOCOL_TLS_CLIENT)

    def __init__(self) -> None:
        super().__init__()
        if sys.version_info >= (3, 13):  # what create_default_context adds there
            self.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | ssl.VERIFY_X509_STRICT
        self._trust_lock = threading.Lock()
        self._trusted = False

    def _read_trust(self) -> None:
        with self._trust_lock:
            if not self._trusted:
                self.load_default_certs(ssl.Purpose.SERVER_AUTH)
                self._trusted = True

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self._read_trust()
        return super().wrap_socket(*args, **kwargs)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self._read_trust()
        return super().wrap_bio(*args, **kwargs)


def _ssl_context(ca_file: str | None, *, plain_http: bool = False) -> ssl.SSLContext:
    # The system's CA store (not a bundled one), plus the user's private CA.
    if plain_http and ca_file is None:
        return TrustOnFirstUse()
    context = ssl.create_default_context()
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except FileNotFoundError as exc:
            raise NotFound(f"{ca_file}: no such CA file", subject=ca_file) from exc
        except (OSError, ssl.SSLError) as exc:
            raise RegistryError(f"{ca_file}: not a PEM CA file: {exc}", subject=ca_file) from exc
    return context


def _sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


class BlobReader:
    """A blob's body, read as served; it must be exactly ``size`` bytes.

    Reading past ``size`` fails at once (:class:`BlobMismatch`), and so does an end before it;
    the digest is the caller's to check (it hashes what it reads).
    """

    def __init__(self, response: httpx.Response, *, digest: str, size: int, where: str) -> None:
        self._response = response
        self._cancelled = False
        # The pieces as the connection delivers them (up to 64 KiB), joined once per read:
        # asking httpx for 1 MiB pieces makes it copy every byte two or three times, in the
        # downloading thread (0.05 s of its 0.08 s of CPU for a 77 MB blob here).
        self._chunks = response.iter_raw()
        self._pieces: deque[bytes] = deque()  # received, not yet read
        self._done = False
        self.digest = digest
        self.size = size
        self.read_so_far = 0
        self._where = where

    def readable(self) -> bool:
        """Always true."""
        return True

    def cancel(self) -> None:
        """Stop the download from another thread: the reader's next (or current) read fails
        with :class:`Cancelled`."""
        self._cancelled = True
        # Closing the response from here would not wake a thread blocked in recv(); shutting
        # the socket down does (the read then ends, and _next reports the cancellation).
        stream = self._response.extensions.get("network_stream")
        sock = None if stream is None else stream.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _next(self) -> bytes:
        if self._cancelled:
            raise Cancelled(f"{self._where}: download cancelled", subject=self.digest)
        try:
            return next(self._chunks)
        except StopIteration:
            return b""
        except Exception as exc:
            error = self._error(exc)
            if error is exc:
                raise
            raise error from exc

    def _error(self, exc: Exception) -> Exception:
        """What a failed read means (a cancelled download fails however the transport does)."""
        if self._cancelled:
            return Cancelled(f"{self._where}: download cancelled", subject=self.digest)
        if isinstance(exc, httpx.TimeoutException):
            return Timeout(f"{self._where}: the registry stopped sending ({exc})",
                           subject=self.digest)  # fmt: skip
        if isinstance(exc, httpx.HTTPError):
            return RegistryUnavailable(f"{self._where}: download failed: {exc}",
                                       subject=self.digest)  # fmt: skip
        return exc

    def _fill(self) -> None:
        """Fetch the next piece, checking the length so far."""
        chunk = self._next()
        if not chunk:
            self._done = True
            if self.read_so_far < self.size:
                raise BlobMismatch(
                    f"{self._where}: the blob ended after {self.read_so_far} of its "
                    f"{self.size} bytes",
                    digest=self.digest,
                )
            return
        self.read_so_far += len(chunk)
        if self.read_so_far > self.size:
            raise BlobMismatch(
                f"{self._where}: the blob is longer than its descriptor's {self.size} bytes",
                digest=self.digest,
            )
        self._pieces.append(chunk)

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that is left for ``n < 0``), fewer only at the end or when the
        next piece received would not fit; ``b""`` at the end."""
        pieces: list[bytes] = []
        size = 0
        while n < 0 or size < n:
            if not self._pieces:
                if self._done:
                    break
                self._fill()
                continue
            piece = self._pieces[0]
            if n >= 0 and size + len(piece) > n:
                if size:
                    break  # kept whole for the next read: no copy of its tail
                self._pieces[0] = piece[n:]  # one piece longer than asked: split it
                piece = piece[:n]
            else:
                self._pieces.popleft()
            pieces.append(piece)
            size += len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


class RegistryClient:
    """The distribution API for one repository (``/v2/<repository>/...``).

    Thread-safe: layers may be downloaded in parallel through one client.

    Args:
        host: the API host (and port), e.g. ``registry-1.docker.io``, ``127.0.0.1:5000``.
        registry: the registry's name for messages and credentials (``docker.io``).
        repository: the repository path (``library/busybox``).
        credentials: what to authenticate with, or ``None`` (anonymous).
        options: transport options.
        push: ask tokens for ``repository:<repository>:pull,push`` (``lcow publish``), not
            for the scope the challenge names (``pull`` for a pull).
    """

    def __init__(  # noqa: PLR0913 - where, then keyword-only credentials and options
        self,
        host: str,
        registry: str,
        repository: str,
        *,
        credentials: Credentials | None = None,
        options: ClientOptions | None = None,
        push: bool = False,
    ) -> None:
        self.options = options or ClientOptions()
        self.push = push
        self.registry = registry
        self.repository = repository
        self.credentials = credentials
        scheme = "http" if self.options.plain_http else "https"
        self.base = f"{scheme}://{host}/v2/{repository}"
        self._authorization: str | None = None
        self._lock = threading.Lock()
        self._http = httpx.Client(
            verify=_ssl_context(self.options.ca_file, plain_http=self.options.plain_http),
            timeout=httpx.Timeout(self.options.timeout),
            follow_redirects=True,
            max_redirects=self.options.max_redirects,
            headers={"User-Agent": "lcow", "Accept-Encoding": "identity"},
        )

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ----------------------------------------------------------------------------

    def _pause(self, attempt: int, retry_after: str | None) -> None:
        delay = min(self.options.backoff * (2**attempt), _MAX_BACKOFF)
        if retry_after:
            with contextlib.suppress(ValueError, TypeError, OverflowError):
                if retry_after.strip().isdigit():
                    delay = float(retry_after)
                else:
                    delay = parsedate_to_datetime(retry_after).timestamp() - time.time()
            delay = max(0.0, min(delay, _MAX_BACKOFF))
        time.sleep(delay)

    def _send(
        self,
        url: str,
        what: str,
        headers: Mapping[str, str],
        *,
        method: str = "GET",
        body: Body | None = None,
    ) -> httpx.Response:
        """Send ``method url`` (the answer streamed), authenticating and retrying; a 2xx
        response. ``body`` is bytes, or a callable giving a fresh iterator of chunks for each
        attempt (a file read again from its start).

        Raises:
            Unauthorized: 401/403 after authenticating.
            NotFound: 404.
            Timeout, RegistryUnavailable: no answer after every retry.
            RegistryError: too many redirects, or another unexpected status.
        """
        authenticated = False
        failure: LcowError | None = None
        retry_after: str | None = None
        attempt = 0
        while attempt <= self.options.retries:
            if attempt:
                log.info("%s; retrying", failure)
                self._pause(attempt - 1, retry_after)
            response, failure, retry_after = self._try(url, what, headers, method, body)
            if response is None:
                attempt += 1
                continue
            if response.status_code == 401:
                challenges = parse_challenges(response.headers.get("www-authenticate", ""))
                response.close()
                if authenticated:
                    raise self._denied(what, 401)
                self._authenticate(challenges, what)
                authenticated = True
                continue
            return response
        assert failure is not None
        tries = self.options.retries + 1
        failure.args = (f"{failure.args[0]} (after {tries} attempt{'s' if tries > 1 else ''})",)
        raise failure

    def _try(
        self, url: str, what: str, headers: Mapping[str, str], method: str, body: Body | None
    ) -> tuple[httpx.Response | None, LcowError | None, str | None]:
        """One attempt: a 2xx or 401 response, or ``(None, why, Retry-After)`` when it is
        worth retrying; raises for answers that are not."""
        request_headers = dict(headers)
        if self._authorization is not None:
            request_headers["Authorization"] = self._authorization
        content = body() if callable(body) else body
        try:
            response = self._http.send(
                self._http.build_request(method, url, headers=request_headers, content=content),
                stream=True,
            )
        except httpx.TooManyRedirects as exc:
            raise RegistryError(
                f"{what}: more than {self.options.max_redirects} redirects", subject=what
            ) from exc
        except httpx.TimeoutException as exc:
            why = f"no answer within {self.options.timeout:g} s ({exc})"
            return None, Timeout(f"{what}: {why}", subject=what), None
        except httpx.TransportError as exc:
            why = str(exc) or type(exc).__name__
            return None, RegistryUnavailable(f"{what}: {why}", subject=what), None
        status = response.status_code
        if 200 <= status < 300 or status == 401:
            return response, None, None
        response.close()
        if status == 403:
            raise self._denied(what, status)
        if status == 404:
            raise NotFound(f"{what}: not found (HTTP 404)", subject=what)
        if status == 429 or status >= 500:
            failure = RegistryUnavailable(f"{what}: HTTP {status}", subject=what)
            return None, failure, response.headers.get("retry-after")
        raise RegistryError(f"{what}: unexpected HTTP {status}", subject=what)

    def _denied(self, what: str, status: int) -> Unauthorized:
        if self.credentials is None:
            how = f"without credentials (none for {self.registry} in {config_path()})"
        else:
            how = self.credentials.describe()
        return Unauthorized(f"{what}: access denied (HTTP {status}) {how}", subject=self.registry)

    def _authenticate(self, challenges: list[Challenge], what: str) -> None:
        """Answer a 401: a Bearer token from the realm, or Basic credentials."""
        by_scheme = {c.scheme: c for c in challenges}
        bearer = by_scheme.get("bearer")
        creds = self.credentials
        if bearer is not None and bearer.params.get("realm"):
            token = self._token(bearer, what)
            with self._lock:
                self._authorization = f"Bearer {token}"
        elif "basic" in by_scheme and creds is not None:
            if creds.identity_token:
                raise Unauthorized(
                    f"{what}: {self.registry} asks for Basic auth, which an identity token "
                    f"(credentials from {creds.source}) cannot answer: it has no password",
                    subject=self.registry,
                )
            pair = f"{creds.username}:{creds.password}".encode()
            with self._lock:
                self._authorization = f"Basic {base64.b64encode(pair).decode('ascii')}"
        else:
            raise self._denied(what, 401)

    def _token_params(self, challenge: Challenge) -> dict[str, str]:
        """The ``scope`` and ``service`` to ask a token for."""
        if self.push:  # one token for every request of a publish, pulls and pushes alike
            scope = f"repository:{self.repository}:pull,push"
        else:
            scope = challenge.params.get("scope") or f"repository:{self.repository}:pull"
        params = {"scope": scope}
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        return params

    def _token(self, challenge: Challenge, what: str) -> str:
        realm = challenge.params["realm"]
        params = self._token_params(challenge)
        creds = self.credentials
        where = f"{self.registry}: token from {realm}"
        try:
            if creds is not None and creds.identity_token:
                response = self._oauth_post(realm, params, creds, where)
            else:
                auth = None if creds is None else httpx.BasicAuth(creds.username, creds.password)
                response = self._http.get(realm, params=params, auth=auth)
        except httpx.TimeoutException as exc:
            raise Timeout(f"{where}: no answer ({exc})", subject=self.registry) from exc
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(f"{where}: {exc}", subject=self.registry) from exc
        if response.status_code in (401, 403):
            raise self._denied(what, response.status_code)
        if response.status_code != 200:
            raise RegistryError(f"{where}: HTTP {response.status_code}", subject=self.registry)
        if len(response.content) > _MAX_TOKEN_ANSWER:
            raise RegistryError(f"{where}: answer too large", subject=self.registry)
        try:
            answer = response.json()
        except ValueError as exc:
            raise RegistryError(f"{where}: answer is not JSON", subject=self.registry) from exc
        token = None
        if isinstance(answer, dict):
            token = answer.get("token") or answer.get("access_token")
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{where}: answer has no token", subject=self.registry)
        return token

    def _oauth_post(
        self, realm: str, params: dict[str, str], creds: Credentials, where: str
    ) -> httpx.Response:
        """The distribution spec's OAuth2 grant: ``POST realm`` with the form
        ``grant_type=refresh_token``, the token, ``service``, ``scope`` and ``client_id``.

        Not redirected (a 307 would carry the refresh token to wherever it points). A 404 is
        a realm without OAuth2: docker then asks with GET and Basic auth, which needs a
        password an identity token does not have, so that is an error here.
        """
        form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token or "",
                "client_id": _CLIENT_ID, **params}  # fmt: skip
        response = self._http.post(realm, data=form, follow_redirects=False)
        if response.status_code == 404:
            raise Unauthorized(
                f"{where}: the realm has no OAuth2 token endpoint (HTTP 404 to POST), and an "
                f"identity token (credentials from {creds.source}) cannot be sent "
                "as Basic auth",
                subject=self.registry,
            )
        if response.is_redirect:
            raise RegistryError(
                f"{where}: HTTP {response.status_code} redirect of the identity-token POST "
                "(not followed: it would carry the token elsewhere)",
                subject=self.registry,
            )
        return response

    # -- the API -----------------------------------------------------------------------------

    def _read_capped(self, response: httpx.Response, what: str, cap: int) -> bytes:
        with contextlib.closing(response):
            length = response.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > cap:
                raise RegistryError(f"{what}: {length} bytes is more than the {cap} allowed",
                                    subject=what)  # fmt: skip
            data = bytearray()
            try:
                for chunk in response.iter_raw(64 << 10):
                    data += chunk
                    if len(data) > cap:
                        raise RegistryError(f"{what}: more than the {cap} bytes allowed",
                                            subject=what)  # fmt: skip
            except httpx.TimeoutException as exc:
                raise Timeout(f"{what}: the registry stopped sending ({exc})",
                              subject=what) from exc  # fmt: skip
            except httpx.HTTPError as exc:
                raise RegistryUnavailable(f"{what}: download failed: {exc}", subject=what) from exc
            return bytes(data)

    def manifest(self, reference: str, accept: tuple[str, ...]) -> Document:
        """GET ``/manifests/<reference>`` (a tag or a digest), checked against the digest
        when ``reference`` is one, or against ``Docker-Content-Digest`` when the registry
        sends it.

        Raises:
            RegistryError: too large, or a digest mismatch.
            NotFound: no such tag or digest.
        """
        what = f"{self.registry}/{self.repository}: manifest {reference}"
        response = self._send(f"{self.base}/manifests/{reference}", what,
                              {"Accept": ", ".join(accept)})  # fmt: skip
        media_type = response.headers.get("content-type", "").split(";", 1)[0].strip()
        served = response.headers.get("docker-content-digest")
        data = self._read_capped(response, what, self.options.max_document)
        digest = _sha256(data)
        expected = reference if reference.startswith("sha256:") else served
        if expected and expected.startswith("sha256:") and expected != digest:
            raise BlobMismatch(f"{what}: digest mismatch: expected {expected}, got {digest}",
                               digest=expected)  # fmt: skip
        return Document(data, media_type, digest)

    def blob_bytes(self, digest: str, size: int, what: str) -> bytes:
        """A small blob (a config) read whole, checked against its digest and size.

        Raises:
            RegistryError: larger than ``max_document``.
            BlobMismatch: the content does not match.
        """
        where = f"{self.registry}/{self.repository}: {what} {digest}"
        if size > self.options.max_document:
            raise RegistryError(f"{where}: {size} bytes is more than the "
                                f"{self.options.max_document} allowed", subject=digest)  # fmt: skip
        response = self._send(f"{self.base}/blobs/{digest}", where, {})
        data = self._read_capped(response, where, self.options.max_document)
        got = _sha256(data)
        if len(data) != size or got != digest:
            raise BlobMismatch(f"{where}: digest mismatch: got {got}, {len(data)} bytes "
                               f"(descriptor: {size} bytes)", digest=digest)  # fmt: skip
        return data

    @contextlib.contextmanager
    def open_blob(self, digest: str, size: int) -> Iterator[BlobReader]:
        """Stream a blob; the reader enforces ``size``, the caller checks ``digest``."""
        where = f"{self.registry}/{self.repository}: blob {digest}"
        response = self._send(f"{self.base}/blobs/{digest}", where, {})
        try:
            length = response.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) != size:
                raise BlobMismatch(f"{where}: the registry sends {length} bytes, its descriptor "
                                   f"says {size}", digest=digest)  # fmt: skip
            yield BlobReader(response, digest=digest, size=size, where=where)
        finally:
            response.close()

    # -- pushing (lcow publish) and referrers --------------------------------------------------

    def referrers(self, digest: str, accept: str) -> Document | None:
        """GET ``/referrers/<digest>`` (the OCI 1.1 referrers API): the index it answers, or
        ``None`` when the registry has no such API (HTTP 404, as Docker's registry 2.8 answers).

        Raises:
            RegistryError: the answer is larger than ``max_document``.
        """
        what = f"{self.registry}/{self.repository}: referrers of {digest}"
        try:
            response = self._send(f"{self.base}/referrers/{digest}", what, {"Accept": accept})
        except NotFound:
            return None
        media_type = response.headers.get("content-type", "").split(";", 1)[0].strip()
        data = self._read_capped(response, what, self.options.max_document)
        return Document(data, media_type, _sha256(data))

    def blob_exists(self, digest: str) -> bool:
        """Whether the repository has blob ``digest`` (``HEAD /blobs/<digest>``)."""
        what = f"{self.registry}/{self.repository}: blob {digest}"
        try:
            response = self._send(f"{self.base}/blobs/{digest}", what, {}, method="HEAD")
        except NotFound:
            return False
        response.close()
        return True

    def push_blob(self, digest: str, size: int, body: Body) -> None:
        """Upload a blob monolithically: ``POST /blobs/uploads/`` opens the upload, one
        ``PUT <location>?digest=<digest>`` sends the whole body (streamed, with its length).

        Raises:
            RegistryError: the registry answered without an upload location, or stored
                another digest than ``digest``.
        """
        what = f"{self.registry}/{self.repository}: upload of blob {digest}"
        response = self._send(f"{self.base}/blobs/uploads/", what, {"Content-Length": "0"},
                              method="POST", body=b"")  # fmt: skip
        response.close()
        location = response.headers.get("location")
        if not location:
            raise RegistryError(f"{what}: the registry gave no upload location", subject=digest)
        url = httpx.URL(f"{self.base}/").join(location).copy_merge_params({"digest": digest})
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        response = self._send(str(url), what, headers, method="PUT", body=body)
        response.close()
        self._check_stored(response, digest, what)

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> str:
        """``PUT /manifests/<reference>`` (a tag or a digest); returns the digest of ``data``.

        Raises:
            RegistryError: the registry stored another digest.
        """
        digest = _sha256(data)
        what = f"{self.registry}/{self.repository}: manifest {reference}"
        response = self._send(f"{self.base}/manifests/{reference}", what,
                              {"Content-Type": media_type}, method="PUT", body=data)  # fmt: skip
        response.close()
        self._check_stored(response, digest, what)
        return digest

    @staticmethod
    def _check_stored(response: httpx.Response, digest: str, what: str) -> None:
        stored = response.headers.get("docker-content-digest")
        if stored and stored != digest:
            raise BlobMismatch(f"{what}: the registry stored {stored}", digest=digest)
