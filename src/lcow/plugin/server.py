"""The plugin server: aiohttp over a unix socket, thread pools for the driver, clean shutdown.

:func:`run` is what ``lcow plugin serve`` calls: it binds ``/run/docker/plugins/<name>.sock``
(mode 0660; a stale socket left by a dead plugin is replaced, a live one is an error), restores
a persisted Init, serves until SIGTERM or SIGINT, then stops accepting, lets running calls
finish (up to ``shutdown_timeout``), lets the driver go and removes the socket. Letting go is not
Cleanup: views dockerd holds (running containers) stay mounted for the next plugin to adopt
(:func:`lcow.plugin.state.let_go`); only dockerd's ``GraphDriver.Cleanup`` releases them.
:class:`BackgroundServer` runs the same server on a thread, for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from aiohttp import web

from lcow.convert.limits import max_conversions
from lcow.errors import Busy, InvalidArgument
from lcow.plugin.handlers import REQUEST_ID, Handlers, Limits, Pools
from lcow.plugin.requests import MAX_JSON_BODY
from lcow.plugin.state import DriverFactory, DriverState, StateStore, open_default_driver

__all__ = [
    "PLUGIN_DIR",
    "BackgroundServer",
    "RequestIdFilter",
    "ServerConfig",
    "bind_unix_socket",
    "run",
    "serve",
    "socket_path_for",
]

log = logging.getLogger("lcow.plugin")

#: Seconds the driver calls of requests cancelled at the shutdown deadline get to unwind.
_CANCELLED_CALLS_GRACE = 1.0

PLUGIN_DIR = Path("/run/docker/plugins")
SOCKET_MODE = 0o660
_UNIX_PATH_MAX = 107


def socket_path_for(name: str) -> Path:
    """``/run/docker/plugins/<name>.sock``: where dockerd discovers a v1 plugin named ``name``."""
    if not name or "/" in name or name in (".", ".."):
        raise InvalidArgument(f"invalid plugin name {name!r}", subject=name)
    return PLUGIN_DIR / f"{name}.sock"


@dataclass
class ServerConfig:
    """How to serve.

    Attributes:
        socket_path: the unix socket to listen on.
        state_root: where Init is persisted (``None``: nothing persisted, for tests).
        defaults: driver options placed before Init's (``lcow.backend=host``).
        workers: threads of each of the two call pools (metadata calls; other calls but
            ApplyDiff), i.e. such calls served at once.
        max_uploads: ApplyDiff conversions at once (``None``: the process's conversion cap).
        idle_timeout: seconds a request body may send nothing, or a Diff client take nothing.
        shutdown_timeout: seconds running calls get to finish at shutdown.
        factory: builds the driver on Init.
    """

    socket_path: Path
    state_root: Path | None = None
    defaults: Sequence[str] = ()
    workers: int = 64
    max_uploads: int | None = None
    idle_timeout: float = 60.0
    shutdown_timeout: float = 30.0
    factory: DriverFactory = field(default=open_default_driver)

    def limits(self) -> Limits:
        """What a request may hold."""
        return Limits(self.idle_timeout, self.max_uploads or max_conversions())


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (the current request's, ``-`` outside requests) to log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def bind_unix_socket(path: Path, mode: int = SOCKET_MODE) -> socket.socket:
    """A listening unix socket at ``path`` with ``mode`` from the start (no wider window).

    Raises:
        Busy: a live server answers on ``path``.
        InvalidArgument: ``path`` exists and is not a socket, or is too long.
    """
    if len(os.fsencode(path)) > _UNIX_PATH_MAX:
        raise InvalidArgument(f"{path}: socket path longer than {_UNIX_PATH_MAX} bytes")
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        info = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(info.st_mode):
            raise InvalidArgument(f"{path}: exists and is not a socket", subject=str(path))
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(os.fspath(path))
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise
            log.info("removing stale socket %s", path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        else:
            raise Busy(f"{path}: another process is serving on this socket", subject=str(path))
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(os.fspath(path))
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def make_app(handlers: Handlers) -> web.Application:
    """The aiohttp application: one catch-all route behind the logging middleware."""
    app = web.Application(middlewares=[handlers.log_requests], client_max_size=MAX_JSON_BODY)
    # Every path, a newline in a decoded %0a included: the answer is always {"Err"} JSON.
    app.router.add_route("*", r"/{method:[\s\S]*}", handlers.handle)
    return app


async def serve(
    config: ServerConfig,
    stop: asyncio.Event,
    started: threading.Event | None = None,
) -> bool:
    """Serve until ``stop`` is set, then shut down (driver let go, socket removed).

    Args:
        config: what and where to serve.
        stop: set to begin the shutdown.
        started: set once the socket accepts connections.

    Returns:
        Whether everything ended: ``False`` when driver calls or letting the driver go were
        still running after ``shutdown_timeout`` (their threads are abandoned; the caller should
        exit hard).
    """
    limits = config.limits()  # InvalidArgument before anything is taken
    store = StateStore(config.state_root) if config.state_root is not None else None
    if store is not None:
        store.lock()
    pools = Pools(
        meta=ThreadPoolExecutor(config.workers, thread_name_prefix="lcow-plugin-meta"),
        calls=ThreadPoolExecutor(config.workers, thread_name_prefix="lcow-plugin"),
        uploads=ThreadPoolExecutor(limits.max_uploads, thread_name_prefix="lcow-plugin-upload"),
    )
    state = DriverState(store, config.factory, config.defaults)
    handlers = Handlers(state, pools, limits)
    sock: socket.socket | None = None
    runner: web.AppRunner | None = None
    bound = -1
    clean = False
    try:
        sock = bind_unix_socket(config.socket_path)  # first: a Busy socket must not clean up
        bound = os.stat(config.socket_path).st_ino
        await asyncio.get_running_loop().run_in_executor(pools.calls, state.restore)
        runner = web.AppRunner(
            make_app(handlers), access_log=None, shutdown_timeout=config.shutdown_timeout
        )
        await runner.setup()
        await web.SockSite(runner, sock).start()
        log.info("serving on %s (state %s, defaults %s, %d upload slots, idle timeout %g s)",
                 config.socket_path, config.state_root, list(config.defaults),
                 limits.max_uploads, limits.idle_timeout)  # fmt: skip
        _notify("READY=1")
        if started is not None:
            started.set()
        await stop.wait()
        log.info("shutting down: finishing running calls")
        _notify("STOPPING=1")
    finally:
        deadline = time.monotonic() + config.shutdown_timeout
        if runner is not None:
            await runner.cleanup()  # no new calls; running ones get shutdown_timeout
        if sock is not None:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                if os.stat(config.socket_path).st_ino == bound:
                    os.unlink(config.socket_path)
        # Requests still open at the deadline were just cancelled: their driver calls see
        # their input end only now, and unwind (removing what they staged) in a moment; on a
        # loaded machine that moment is not zero, so they get a short grace of their own.
        unwind_until = max(deadline, time.monotonic() + _CANCELLED_CALLS_GRACE)
        while handlers.busy and time.monotonic() < unwind_until:
            await asyncio.sleep(0.05)  # calls of cancelled requests run to their end
        clean = await _let_go(state, max(1.0, deadline - time.monotonic()))
        if handlers.busy:
            log.error("%d driver calls still running after %.0f s: abandoned", handlers.busy,
                      config.shutdown_timeout)  # fmt: skip
            clean = False
        for pool in (pools.meta, pools.calls, pools.uploads):
            pool.shutdown(wait=False, cancel_futures=True)
        if store is not None:
            store.unlock()
        log.info("stopped" if clean else "stopped, not cleanly")
    return clean


async def _let_go(state: DriverState, timeout: float) -> bool:
    """:meth:`DriverState.shutdown` on a thread of its own (the pool may be full of stuck
    calls; a non-persistent backend's Cleanup may take a while), bounded by ``timeout``;
    whether it finished."""
    done = asyncio.get_running_loop().create_future()

    def work() -> None:
        try:
            state.shutdown()
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                done.get_loop().call_soon_threadsafe(_resolve, done)

    threading.Thread(target=work, name="lcow-plugin-let-go", daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.shield(done), timeout)
    except TimeoutError:
        log.error("letting the driver go did not finish within %.0f s: abandoned", timeout)
        return False
    return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def run(config: ServerConfig) -> int:
    """Serve in this process until SIGTERM or SIGINT (``lcow plugin serve``).

    Returns:
        0 after a clean shutdown. When calls were stuck (a hung mount, say) the process exits
        at once with status 1 instead of waiting forever for their threads.
    """

    async def main() -> bool:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        return await serve(config, stop)

    if asyncio.run(main()):
        return 0
    logging.shutdown()
    os._exit(1)  # worker threads that never return would block the interpreter's exit


def _notify(message: str) -> None:
    """Tell systemd (``Type=notify``) about readiness; nothing without ``$NOTIFY_SOCKET``."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
    ):
        sock.sendto(message.encode(), address)


class BackgroundServer:
    """The server on a background thread with its own event loop (tests, benchmarks).

    ``with BackgroundServer(config) as server:`` returns once the socket accepts connections
    and shuts down on exit as on SIGTERM (views clients hold stay mounted: send
    ``GraphDriver.Cleanup`` first to release them, as dockerd does).
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.clean: bool | None = None  # serve()'s result, once stopped
        self._thread = threading.Thread(target=self._run, name="lcow-plugin-server", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.clean = await serve(self.config, self._stop, self._started)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by start()/stop()
            self._error = exc
        finally:
            self._started.set()

    def start(self, timeout: float = 30.0) -> None:
        """Start serving; raise what prevented it."""
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError("plugin server did not start")
        if self._error is not None:
            raise self._error

    def stop(self, timeout: float = 60.0) -> None:
        """Shut down as on SIGTERM and wait for it."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("plugin server did not stop")
        if self._error is not None:
            raise self._error

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
