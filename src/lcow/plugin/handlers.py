"""The HTTP handlers: one route, decoded by :mod:`lcow.plugin.requests`, answered per SPEC §9.

Every driver call is blocking (file I/O, mounts, conversion) and runs on the server's thread
pool, so calls from dockerd (which come concurrently) proceed together while the event loop only
moves bytes. The request id of the current call (:data:`REQUEST_ID`) follows the call into its
worker thread, so driver log lines carry it too.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import io
import itertools
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from typing import ParamSpec, TypeVar

from aiohttp import web

from lcow.errors import LcowError, NotSupported
from lcow.graphdriver.driver import Driver
from lcow.plugin import protocol
from lcow.plugin.requests import (
    ActivateRequest,
    ApplyDiffRequest,
    BadRequest,
    CapabilitiesRequest,
    ChangesRequest,
    CleanupRequest,
    CreateReadWriteRequest,
    CreateRequest,
    DiffRequest,
    DiffSizeRequest,
    ExistsRequest,
    GetMetadataRequest,
    GetRequest,
    InitRequest,
    PutRequest,
    RemoveRequest,
    Request,
    StatusRequest,
    UnknownMethod,
    decode_request,
    split_method,
)
from lcow.plugin.state import DriverState
from lcow.plugin.streams import BodyChannel, read_block

__all__ = ["REQUEST_ID", "Handlers", "gives_host_paths"]

log = logging.getLogger("lcow.plugin")

#: The id of the request being served (``-`` outside requests); set by the logging middleware.
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("lcow_request_id", default="-")

_P = ParamSpec("_P")
_T = TypeVar("_T")
# Failures that are the request's or the driver's, answered with {"Err"}; anything else is a bug.
_EXPECTED = (LcowError, OSError)
REQUEST_ID_HEADER = "X-Lcow-Request-Id"


class _Call:
    """What the middleware logs about the current request (filled in by the handler)."""

    __slots__ = ("args", "error")

    def __init__(self) -> None:
        self.args = ""
        self.error: str | None = None


_CALL: contextvars.ContextVar[_Call] = contextvars.ContextVar("lcow_call")


def gives_host_paths(driver: Driver) -> bool:
    """Whether Get's ``path`` is a host directory dockerd can use (SPEC §9.5).

    A backend says so with a ``host_paths`` attribute; without one, only ``host`` does (the
    userspace backend's paths are LCOW's in-VM names, the vm backend's live in the guest).
    """
    backend = driver.backend
    declared = getattr(backend, "host_paths", None)
    if isinstance(declared, bool):
        return declared
    return backend.name == "host"


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, content_type=protocol.CONTENT_TYPE)


def _ok(value: Mapping[str, object] | None = None) -> web.Response:
    return _json(protocol.encode(value or {}))


def _err(message: str, status: int = 200) -> web.Response:
    call = _CALL.get(None)
    if call is not None:
        call.error = message  # logged by the middleware, on the request's one line
    return _json(protocol.error_body(message), status)


def _describe(req: Request) -> str:
    """The call's arguments for the log line (ids, parent, Home)."""
    parts = []
    for name in ("id", "parent", "home"):
        value = getattr(req, name, None)
        if value:
            parts.append(f"{name}={value}")
    return " ".join(parts)


class Handlers:
    """The plugin's request handling over a :class:`DriverState`.

    Args:
        state: the driver (swapped by Init).
        executor: where blocking driver calls run.
    """

    def __init__(self, state: DriverState, executor: Executor) -> None:
        self.state = state
        self.executor = executor
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}"
        self._busy = 0
        self._busy_lock = threading.Lock()

    async def _call(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run a blocking call on the pool, in the request's logging context."""
        context = contextvars.copy_context()
        with self._busy_lock:
            self._busy += 1
        try:
            work = self.executor.submit(context.run, functools.partial(fn, *args, **kwargs))
        except BaseException:
            self._done(None)
            raise
        work.add_done_callback(self._done)  # also when cancelled before it ran
        return await asyncio.wrap_future(work)

    def _done(self, _: object) -> None:
        with self._busy_lock:
            self._busy -= 1

    @property
    def busy(self) -> int:
        """Driver calls queued or running (a cancelled request's call still runs to its end)."""
        with self._busy_lock:
            return self._busy

    # -- the route ---------------------------------------------------------------------------

    @web.middleware
    async def log_requests(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Give each request an id, log it with its outcome and time."""
        request_id = f"{self._prefix}-{next(self._ids):06d}"
        token = REQUEST_ID.set(request_id)
        call = _Call()
        call_token = _CALL.set(call)
        started = time.monotonic()
        status: int | str = "aborted"
        try:
            response = await handler(request)
            status = response.status
            if not response.prepared:  # a streamed Diff sent its headers already
                response.headers[REQUEST_ID_HEADER] = request_id
            return response
        finally:
            elapsed = (time.monotonic() - started) * 1000
            log.log(
                logging.INFO if call.error is None and status != "aborted" else logging.WARNING,
                "%s %s%s -> %s%s (%.1f ms)",
                request.method,
                request.path,
                f" {call.args}" if call.args else "",
                status,
                f" Err: {call.error}" if call.error is not None else "",
                elapsed,
            )
            _CALL.reset(call_token)
            REQUEST_ID.reset(token)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Every path: ``POST /<Method>``."""
        name, _ = split_method(request.path)
        if request.method != "POST":
            await _drain(request)
            return _err(f"{name}: method {request.method} not allowed, use POST", 405)
        if name == ApplyDiffRequest.method:
            return await self._apply_diff(request)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            return _err(f"{name}: {exc.text}", 413)
        try:
            decoded = decode_request(request.path_qs, body)
        except UnknownMethod as exc:
            return _err(str(exc), 404)
        except BadRequest as exc:
            return _err(str(exc), 400)
        _CALL.get().args = _describe(decoded)
        if type(decoded) is DiffRequest:
            return await self._diff(request, decoded)
        try:
            return await self._dispatch(decoded)
        except _EXPECTED as exc:
            return _err(protocol.error_message(exc))
        except Exception as exc:  # a bug: say so, keep serving
            log.exception("%s: internal error", decoded.method)
            return _err(protocol.error_message(exc), 500)

    async def _dispatch(self, req: Request) -> web.Response:
        """The JSON endpoints."""
        if isinstance(req, ActivateRequest):
            return _ok(protocol.IMPLEMENTS)
        if isinstance(req, InitRequest):
            await self._call(self.state.init, req)
            return _ok()
        if isinstance(req, CapabilitiesRequest):
            return _json(protocol.capabilities_body(False))
        driver = self.state.driver  # FailedPrecondition before Init
        if isinstance(req, CreateRequest):
            read_write = isinstance(req, CreateReadWriteRequest)
            create = driver.create_read_write if read_write else driver.create
            await self._call(create, req.id, req.parent, req.storage_opt)
            return _ok()
        if isinstance(req, RemoveRequest):
            await self._call(driver.remove, req.id)
            return _ok()
        if isinstance(req, GetRequest):
            return _ok({"Dir": await self._call(self._get, driver, req.id, req.mount_label)})
        if isinstance(req, PutRequest):
            await self._call(driver.put, req.id)
            return _ok()
        if isinstance(req, ExistsRequest):
            return _ok({"Exists": await self._call(driver.exists, req.id)})
        if isinstance(req, StatusRequest):
            return _json(protocol.status_body(await self._call(driver.status)))
        if isinstance(req, GetMetadataRequest):
            return _ok({"Metadata": await self._call(driver.get_metadata, req.id)})
        if isinstance(req, CleanupRequest):
            await self._call(driver.cleanup)
            return _ok()
        if isinstance(req, ChangesRequest):
            changes = await self._call(driver.changes, req.id, req.parent)
            return _json(protocol.changes_body(changes))
        if isinstance(req, DiffSizeRequest):
            return _ok({"Size": await self._call(driver.diff_size, req.id, req.parent)})
        raise AssertionError(f"no handler for {req!r}")  # pragma: no cover

    @staticmethod
    def _get(driver: Driver, layer_id: str, mount_label: str) -> str:
        """Get, refusing views that are not host directories (and releasing them)."""
        view = driver.get(layer_id, mount_label)
        if gives_host_paths(driver):
            return view.path
        driver.put(layer_id)
        name = driver.backend.name
        raise NotSupported(
            f"driver not supported: lcow plugin: get: {layer_id}: the {name} backend has no "
            "host directory to give dockerd; serve with --backend host",
            subject=name,
        )

    # -- streams -----------------------------------------------------------------------------

    async def _diff(self, request: web.Request, req: DiffRequest) -> web.StreamResponse:
        """Stream the tar; any failure before the first byte is a non-200 ``{"Err"}``."""
        stream: io.RawIOBase | None = None
        try:
            stream = await self._call(self.state.driver.diff, req.id, req.parent)
            block = await self._call(read_block, stream)
        except Exception as exc:
            if stream is not None:
                await self._call(stream.close)
            if not isinstance(exc, _EXPECTED):
                log.exception("Diff: internal error")
            return _err(protocol.error_message(exc), 500)
        response = web.StreamResponse(
            headers={"Content-Type": protocol.TAR_CONTENT_TYPE, REQUEST_ID_HEADER: REQUEST_ID.get()}
        )
        response.enable_chunked_encoding()
        sent = 0
        try:
            await response.prepare(request)
            while block:
                await response.write(block)
                sent += len(block)
                block = await self._call(read_block, stream)
            await response.write_eof()
        except Exception as exc:
            # Mid-stream: the status is gone. Cut the connection without the last chunk, so the
            # daemon sees an unexpected EOF rather than a well-formed but partial tar.
            _CALL.get().error = (
                f"{protocol.error_message(exc)} (after {sent} bytes: connection aborted)"
            )
            if request.transport is not None:
                request.transport.abort()
        finally:
            await self._call(stream.close)
        return response

    async def _apply_diff(self, request: web.Request) -> web.Response:
        """Feed the body to the converter as it arrives; reply only after its very end."""
        try:
            req = decode_request(f"{request.path}?{request.rel_url.raw_query_string}", b"")
            assert isinstance(req, ApplyDiffRequest)
            driver = self.state.driver
        except _EXPECTED as exc:
            await _drain(request)
            return _err(protocol.error_message(exc), 400 if isinstance(exc, BadRequest) else 200)
        _CALL.get().args = _describe(req)
        channel = await BodyChannel.open()
        work = asyncio.ensure_future(self._call(driver.apply_diff, req.id, req.parent, channel.fd))
        # The conversion over (or failed early), its end of the pipe closes; what is left of
        # the body is then read and dropped.
        work.add_done_callback(lambda _: channel.close_reader())
        received = 0
        try:
            try:
                async for chunk in request.content.iter_any():
                    received += len(chunk)
                    await channel.send(chunk)
            except Exception as exc:  # the body broke off: never let that pass as its end
                channel.fail(f"{type(exc).__name__}: {exc} after {received} bytes")
            else:
                await channel.finish()
            try:
                size = await work
            except _EXPECTED as exc:
                if channel.failure is not None:
                    return _err(
                        f"lcowdriver: applydiff: {req.id}: request body incomplete: "
                        f"{channel.failure}"
                    )
                return _err(protocol.error_message(exc))
            except Exception as exc:
                log.exception("ApplyDiff: internal error")
                return _err(protocol.error_message(exc), 500)
        except BaseException:  # cancelled: still end the converter's input, as an error
            channel.fail("request cancelled")
            raise
        _CALL.get().args += f" ({received} bytes in)"
        return _ok({"Size": size})


async def _drain(request: web.Request) -> None:
    """Read the body to its end (dockerd resends a body the plugin answered too early)."""
    try:
        while await request.content.readany():
            pass
    except Exception as exc:  # an incomplete body cannot be drained further
        log.debug("draining the body failed: %s", exc)
