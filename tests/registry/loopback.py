"""An HTTP server on 127.0.0.1 on a thread of its own, as a context manager: the part the
registry tests' fake servers share (:mod:`memregistry`, :mod:`tokenserver`, :mod:`hostile`).

Each fake has its own ``ThreadingHTTPServer`` subclass carrying its state and its own handler;
this class starts it on an ephemeral port, serves it while the ``with`` block runs, and stops it
(every request thread is a daemon, so a stalled handler cannot hold the test up).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Generic, Self, TypeVar

__all__ = ["LoopbackServer"]

ServerT = TypeVar("ServerT", bound=ThreadingHTTPServer)


class LoopbackServer(Generic[ServerT]):
    """Serves ``server_class`` with ``handler`` on ``127.0.0.1:<ephemeral port>``.

    Subclasses set their server's state on :attr:`_server` in ``__init__`` and may override
    :meth:`_before_stop` (e.g. to release handlers that are made to wait).
    """

    def __init__(self, server_class: type[ServerT], handler: type[BaseHTTPRequestHandler]) -> None:
        self._server: ServerT = server_class(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def _before_stop(self) -> None:
        """Called first when the ``with`` block ends."""

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._before_stop()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
