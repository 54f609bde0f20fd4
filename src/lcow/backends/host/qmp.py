"""A blocking QMP session with the storage daemon: one Unix socket, JSON lines (issue 17).

The storage daemon's few commands per container (an export, its removal) do not need an
event loop: a session here is a connect, the greeting, ``qmp_capabilities`` and the
commands, in about 0.4 ms where an asyncio client took 1.5-4 ms on a loaded 2-core machine
(benchmarks/RESULTS.md, "containerd snapshotter"). Events that arrive while a reply is
awaited are kept for :meth:`QmpSession.wait_event`.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from lcow._util.unixsock import connect_unix
from lcow.errors import FailedPrecondition

__all__ = ["QmpSession"]

_MAX_LINE = 1 << 20  # a reply listing every node of a deep chain stays far below this


class QmpSession:
    """A connected, negotiated QMP session (a context manager that closes it).

    Args:
        path: the monitor's Unix socket.
        timeout: seconds the whole session may take.

    Raises:
        OSError: the socket cannot be reached or the session timed out (``TimeoutError``).
        ValueError: the daemon sent something that is not QMP.
    """

    def __init__(self, path: Path, timeout: float) -> None:
        self._deadline = time.monotonic() + timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.settimeout(timeout)
            connect_unix(self._sock, path)
            self._file = self._sock.makefile("rwb")
            self.events: list[dict[str, Any]] = []
            greeting = self._read()
            if "QMP" not in greeting:
                raise ValueError(f"not a QMP greeting: {greeting!r:.200}")
            self.execute("qmp_capabilities")
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self) -> QmpSession:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect."""
        try:
            self._file.close()
        finally:
            self._sock.close()

    def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        """Run ``command``; its ``return`` value.

        Raises:
            FailedPrecondition: the daemon answered with an error (its class and text).
        """
        message: dict[str, object] = {"execute": command}
        if arguments is not None:
            message["arguments"] = dict(arguments)
        self._file.write(json.dumps(message).encode() + b"\r\n")
        self._file.flush()
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
            elif "return" in reply:
                return reply["return"]
            elif "error" in reply:
                error = reply["error"]
                detail = error.get("desc", error) if isinstance(error, dict) else error
                raise FailedPrecondition(f"{command}: {detail}", subject=command)
            else:
                raise ValueError(f"{command}: an answer that is not QMP: {reply!r:.200}")

    def wait_event(self, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first event (kept or arriving) for which ``wanted`` is true; taken off the list."""
        while True:
            for index, event in enumerate(self.events):
                if wanted(event):
                    return self.events.pop(index)
            reply = self._read()
            if "event" not in reply:
                raise ValueError(f"an answer nobody asked for: {reply!r:.200}")
            self.events.append(reply)

    def _read(self) -> dict[str, Any]:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the QMP session timed out")
        self._sock.settimeout(left)
        line = self._file.readline(_MAX_LINE)
        if not line:
            raise ConnectionResetError("the storage daemon closed the QMP session")
        value = json.loads(line)
        if not isinstance(value, dict):
            raise ValueError(f"not a QMP message: {line[:200]!r}")
        return value
