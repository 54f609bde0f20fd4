"""The HTTP handlers: one route, decoded by :mod:`lcow.plugin.requests`, answered per SPEC §9.

Every driver call is blocking (file I/O, mounts, conversion) and runs on a thread pool, so calls
from dockerd (which come concurrently) proceed together while the event loop only moves bytes.
Three pools (:class:`Pools`) keep one kind of work from starving another: metadata calls
(Exists, Status, GetMetadata, Get, Put) have their own threads, so they answer whatever else
runs; conversions (ApplyDiff) have one thread per upload slot.

What a client may hold is bounded (:class:`Limits`). Every body is read with an idle timeout
(:class:`~lcow.plugin.streams.IdleReader`), and a Diff whose client takes no data fails the same
way. An ApplyDiff takes an upload slot — a conversion thread and a process-wide conversion slot
— only once its first :data:`PREFETCH` bytes (or its whole, shorter body) have come: a client
that sends headers and a few bytes and then nothing waits as a coroutine with a small buffer and
fails after the idle timeout, never holding a thread; waiting for a free slot holds no thread
either. A client that stalls while it holds a slot holds it for the idle timeout at most.

The request id of the current call (:data:`REQUEST_ID`) follows the call into its worker
thread, so driver log lines carry it too.
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
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from aiohttp import web

from lcow.convert.limits import max_conversions
from lcow.errors import InvalidArgument, LcowError, NotSupported
from lcow.graphdriver.driver import Driver
from lcow.plugin import protocol
from lcow.plugin.requests import (
    MAX_JSON_BODY,
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
from lcow.plugin.streams import (
    BodyChannel,
    BodyStalled,
    BodyTooLarge,
    IdleReader,
    read_block,
)

__all__ = ["PREFETCH", "REQUEST_ID", "Handlers", "Limits", "Pools", "gives_host_paths"]

log = logging.getLogger("lcow.plugin")

#: The id of the request being served (``-`` outside requests); set by the logging middleware.
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("lcow_request_id", default="-")

_P = ParamSpec("_P")
_T = TypeVar("_T")
# Failures that are the request's or the driver's, answered with {"Err"}; anything else is a bug.
_EXPECTED = (LcowError, OSError)
REQUEST_ID_HEADER = "X-Lcow-Request-Id"
#: Bytes of an ApplyDiff body that must have come before it takes an upload slot.
PREFETCH = 256 << 10
_TIMEOUT = 408  # Request Timeout: the client stopped sending
_WRITE_SLICE = 64 << 10  # Diff's output: aiohttp waits for the client after this much


@dataclass(frozen=True)
class Limits:
    """What one request may hold, and for how long.

    Attributes:
        idle_timeout: seconds a request body may send nothing (or a Diff's client take
            nothing) before the request fails; restarted by every byte that moves.
        max_uploads: ApplyDiff conversions at once (default: the process's conversion cap,
            ``$LCOW_MAX_CONVERSIONS`` or the CPU count); the others wait without a thread.
        prefetch: bytes an ApplyDiff body must have sent before it takes a slot.
    """

    idle_timeout: float = 60.0
    max_uploads: int = field(default_factory=max_conversions)
    prefetch: int = PREFETCH

    def __post_init__(self) -> None:
        if not self.idle_timeout > 0:  # also NaN
            raise InvalidArgument(
                f"idle timeout: {self.idle_timeout!r} s, expected a positive number of seconds"
            )
        if self.max_uploads < 1:
            raise InvalidArgument(f"max uploads: {self.max_uploads!r}, expected at least 1")


@dataclass(frozen=True)
class Pools:
    """Where blocking driver calls run.

    Attributes:
        meta: Exists, Status, GetMetadata, Get and Put.
        calls: every other driver call (Init, Create, Remove, Cleanup, Diff, Changes...).
        uploads: ApplyDiff's conversions (as many threads as upload slots).
    """

    meta: Executor
    calls: Executor
    uploads: Executor


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
        pools: where blocking driver calls run.
        limits: what a request may hold.
    """

    def __init__(self, state: DriverState, pools: Pools, limits: Limits | None = None) -> None:
        self.state = state
        self.pools = pools
        self.limits = limits or Limits()
        self._uploads = asyncio.Semaphore(self.limits.max_uploads)
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}"
        self._busy = 0
        self._busy_lock = threading.Lock()

    def _submit(
        self, pool: Executor, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> Future[_T]:
        """Start a blocking call on ``pool``, in the request's logging context."""
        context = contextvars.copy_context()
        with self._busy_lock:
            self._busy += 1
        try:
            work = pool.submit(context.run, functools.partial(fn, *args, **kwargs))
        except BaseException:
            self._done(None)
            raise
        work.add_done_callback(self._done)  # also when cancelled before it ran
        return work

    async def _call(
        self, pool: Executor, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run a blocking call on ``pool`` and wait for it."""
        return await asyncio.wrap_future(self._submit(pool, fn, *args, **kwargs))

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
        reader = IdleReader(request.content, self.limits.idle_timeout)
        if request.method != "POST":
            await reader.drain()
            return _err(f"{name}: method {request.method} not allowed, use POST", 405)
        if name == ApplyDiffRequest.method:
            return await self._apply_diff(request, reader)
        decoded = await _read_request(name, request.path_qs, reader)
        if isinstance(decoded, web.Response):
            return decoded  # the body could not be read or decoded
        _CALL.get().args = _describe(decoded)
        if type(decoded) is DiffRequest:
            return await self._diff(request, decoded)
        return await self._answer(decoded)

    async def _answer(self, req: Request) -> web.Response:
        """A JSON endpoint's response; its failure is an ``{"Err"}`` (500 for a bug)."""
        try:
            return await self._dispatch(req)
        except _EXPECTED as exc:
            return _err(protocol.error_message(exc))
        except Exception as exc:  # a bug: say so, keep serving
            log.exception("%s: internal error", req.method)
            return _err(protocol.error_message(exc), 500)

    async def _dispatch(self, req: Request) -> web.Response:  # noqa: PLR0911, PLR0912 - one branch per GraphDriver endpoint (SPEC §9.2)
        """The JSON endpoints."""
        if isinstance(req, ActivateRequest):
            return _ok(protocol.IMPLEMENTS)
        meta, calls = self.pools.meta, self.pools.calls
        if isinstance(req, InitRequest):
            await self._call(calls, self.state.init, req)
            return _ok()
        if isinstance(req, CapabilitiesRequest):
            return _json(protocol.capabilities_body(False))
        driver = self.state.driver  # FailedPrecondition before Init
        if isinstance(req, CreateRequest):
            read_write = isinstance(req, CreateReadWriteRequest)
            create = driver.create_read_write if read_write else driver.create
            await self._call(calls, create, req.id, req.parent, req.storage_opt)
            return _ok()
        if isinstance(req, RemoveRequest):
            await self._call(calls, driver.remove, req.id)
            return _ok()
        if isinstance(req, GetRequest):
            directory = await self._call(meta, self._get, driver, req.id, req.mount_label)
            return _ok({"Dir": directory})
        if isinstance(req, PutRequest):
            await self._call(meta, driver.put, req.id)
            return _ok()
        if isinstance(req, ExistsRequest):
            return _ok({"Exists": await self._call(meta, driver.exists, req.id)})
        if isinstance(req, StatusRequest):
            return _json(protocol.status_body(await self._call(meta, driver.status)))
        if isinstance(req, GetMetadataRequest):
            return _ok({"Metadata": await self._call(meta, driver.get_metadata, req.id)})
        if isinstance(req, CleanupRequest):
            await self._call(calls, driver.cleanup)
            return _ok()
        if isinstance(req, ChangesRequest):
            changes = await self._call(calls, driver.changes, req.id, req.parent)
            return _json(protocol.changes_body(changes))
        if isinstance(req, DiffSizeRequest):
            size = await self._call(calls, driver.diff_size, req.id, req.parent)
            return _ok({"Size": size})
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
        calls = self.pools.calls
        stream: io.RawIOBase | None = None
        try:
            stream = await self._call(calls, self.state.driver.diff, req.id, req.parent)
            block = await self._call(calls, read_block, stream)
        except Exception as exc:
            if stream is not None:
                await self._call(calls, stream.close)
            if not isinstance(exc, _EXPECTED):
                log.exception("Diff: internal error")
            return _err(protocol.error_message(exc), 500)
        response = web.StreamResponse(
            headers={"Content-Type": protocol.TAR_CONTENT_TYPE, REQUEST_ID_HEADER: REQUEST_ID.get()}
        )
        response.enable_chunked_encoding()
        sent = 0
        idle = self.limits.idle_timeout
        try:
            await response.prepare(request)
            while block:
                view = memoryview(block)
                for start in range(0, len(block), _WRITE_SLICE):
                    try:
                        # Restarted for every slice the client takes: a slow reader that keeps
                        # reading is never cut, one that stops is.
                        async with asyncio.timeout(idle):
                            await response.write(view[start : start + _WRITE_SLICE])
                    except TimeoutError:
                        raise BodyStalled(
                            f"lcowdriver: diff: {req.id}: the client took no data for {idle:g} s"
                        ) from None
                    sent += len(view[start : start + _WRITE_SLICE])
                block = await self._call(calls, read_block, stream)
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
            await self._call(calls, stream.close)
        return response

    async def _apply_diff(self, request: web.Request, body: IdleReader) -> web.Response:
        """Take an upload slot once the body has shown it moves, then convert it as it comes."""
        try:
            req = decode_request(f"{request.path}?{request.rel_url.raw_query_string}", b"")
            assert isinstance(req, ApplyDiffRequest)
            driver = self.state.driver
        except _EXPECTED as exc:
            await body.drain()
            return _err(protocol.error_message(exc), 400 if isinstance(exc, BadRequest) else 200)
        _CALL.get().args = _describe(req)
        try:
            head = await body.read_up_to(self.limits.prefetch)
        except BodyStalled as exc:
            return _incomplete(req, str(exc), _TIMEOUT)
        except Exception as exc:  # the body broke off before the conversion began
            return _incomplete(req, f"{type(exc).__name__}: {exc} after {body.received} bytes")
        async with self._uploads:  # a coroutine waits here, not a thread
            return await self._convert(req, driver, body, head)

    async def _convert(
        self, req: ApplyDiffRequest, driver: Driver, body: IdleReader, head: list[bytes]
    ) -> web.Response:
        """Feed the body to the converter as it arrives; reply only after its very end."""
        channel = await BodyChannel.open()
        try:
            job = self._submit(
                self.pools.uploads, driver.apply_diff, req.id, req.parent, channel.fd
            )
        except BaseException:  # the pool is shut down: nobody will read the pipe
            channel.fail("not started")
            channel.close_reader()
            raise
        # Once the conversion is over (or failed early) its end of the pipe closes — only then,
        # as the thread reads it until it returns; what is left of the body is read and dropped.
        job.add_done_callback(lambda _: channel.close_reader())
        work = asyncio.wrap_future(job)
        stalled = False
        try:
            try:
                for chunk in head:
                    await channel.send(chunk)
                while chunk := await body.read():
                    await channel.send(chunk)
            except BodyStalled as exc:  # never let a stall or a break pass as the body's end
                stalled = True
                channel.fail(str(exc))
            except Exception as exc:
                channel.fail(f"{type(exc).__name__}: {exc} after {body.received} bytes")
            else:
                await channel.finish()
            try:
                size = await work
            except _EXPECTED as exc:
                if channel.failure is not None:
                    return _incomplete(req, channel.failure, _TIMEOUT if stalled else 200)
                return _err(protocol.error_message(exc))
            except Exception as exc:
                log.exception("ApplyDiff: internal error")
                return _err(protocol.error_message(exc), 500)
        except BaseException:  # cancelled: still end the converter's input, as an error
            channel.fail("request cancelled")
            work.add_done_callback(_consume)  # nobody awaits the outcome any more
            raise
        _CALL.get().args += f" ({body.received} bytes in)"
        return _ok({"Size": size})


async def _read_request(name: str, path_qs: str, reader: IdleReader) -> Request | web.Response:
    """The decoded JSON request, or the error response for a body that could not be read
    (too large, stalled, broken off) or decoded (unknown method, bad request)."""
    try:
        body = await reader.read_all(MAX_JSON_BODY)
    except BodyTooLarge as exc:
        return _err(f"{name}: {exc}", 413)
    except BodyStalled as exc:
        return _err(f"{name}: request body incomplete: {exc}", _TIMEOUT)
    except Exception as exc:  # the body broke off (connection lost, bad chunking)
        return _err(f"{name}: request body incomplete: {type(exc).__name__}: {exc}", 400)
    try:
        return decode_request(path_qs, body)
    except UnknownMethod as exc:
        return _err(str(exc), 404)
    except BadRequest as exc:
        return _err(str(exc), 400)


def _incomplete(req: ApplyDiffRequest, reason: str, status: int = 200) -> web.Response:
    return _err(f"lcowdriver: applydiff: {req.id}: request body incomplete: {reason}", status)


def _consume(work: asyncio.Future[Any]) -> None:
    """Take the outcome of a call whose request has gone (so asyncio does not report an
    exception that was never retrieved)."""
    if not work.cancelled() and work.exception() is not None:
        log.debug("the call of a cancelled request failed: %s", work.exception())
