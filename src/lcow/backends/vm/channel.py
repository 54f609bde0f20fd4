"""The framed protocol to the guest agent over one virtio-serial port (see ``agent/frames.h``).

``kind (1 byte) | length (u32 BE) | payload``. The host sends ``C`` (argument vector), ``D``
(data) and ``E`` (end of data); the guest answers ``R`` (result) or ``X`` (failure: class,
errno, text), with ``D``/``E`` frames before it for streamed output. Every reply is
self-delimiting, so a channel never closes with reply bytes in flight (QEMU drops unread data
when a socket closes). Timeouts are *idle* timeouts: each receive may wait that long, however
long the whole transfer takes (SPEC §2 Project decision).

A channel that failed mid-exchange is out of step with the guest: it is closed and the next
user reconnects; the agent forgets a session whose host side went away.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from lcow.backends.scoped import view_error
from lcow.errors import AlreadyExists, FailedPrecondition, InvalidArgument

__all__ = ["HELLO_ATTEMPT", "Channel", "ChannelBroken", "GuestError"]

_HEAD = struct.Struct(">cI")
_MAX_DATA = 256 * 1024
_MAX_FRAME = 16 * 1024 * 1024
_POLL = 0.2  # how often a waiting receive checks that the VM still runs
#: seconds a hello waits for its answer before :meth:`Channel.connect_patiently` reconnects
HELLO_ATTEMPT = 10.0


class ChannelBroken(FailedPrecondition):
    """The connection to the guest failed (closed, timed out, out of step)."""


class GuestError(Exception):
    """A failure reported by the agent: ``cls`` O (errno), I (invalid), A (exists)."""

    def __init__(self, cls: str, err: int, text: str) -> None:
        super().__init__(text)
        self.cls = cls
        self.errno = err
        self.text = text

    def exception(self, path: str, other: str | None = None) -> Exception:
        """The matching Python exception naming the view path, as the host backend raises:
        lcow's ``NotFound``/``AlreadyExists`` for ENOENT/EEXIST, else the ``OSError``
        subclass of the errno; ``InvalidArgument`` for what is not a file-system error."""
        if self.cls == "A":
            return AlreadyExists(self.text, subject=path)
        if self.cls == "I":
            return InvalidArgument(self.text, subject=path)
        return view_error(OSError(self.errno, os.strerror(self.errno)), path, other)


def _arg(value: str | bytes | int) -> bytes:
    if isinstance(value, int):
        return str(value).encode()
    data = os.fsencode(value) if isinstance(value, str) else value
    if b"\0" in data:
        raise InvalidArgument("arguments cannot contain NUL bytes", subject="vm")
    return data


class Channel:
    """One connected port. Not thread-safe: a user holds it for a whole exchange.

    Args:
        path: the chardev's Unix socket.
        timeout: idle timeout in seconds.
        alive: called when the connection fails, to tell a dead VM from a slow one.
    """

    def __init__(self, path: Path, timeout: float, alive: Callable[[], bool]) -> None:
        self.path = path
        self.timeout = timeout
        self._alive = alive
        self._sock: socket.socket | None = None
        self._buf = bytearray()

    # -- connection --------------------------------------------------------------------------

    def connect(self, wait: float | None = None) -> None:
        """Connect and handshake: a ``hello`` with a nonce; frames of an earlier session that
        arrive before its answer are skipped. ``wait``: seconds the answer may take (a booting
        guest opens its ports late; the hello waits in the socket meanwhile)."""
        self.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(_POLL)
        try:
            sock.connect(os.fspath(self.path))
        except OSError as exc:
            sock.close()
            raise self._broken(f"connecting to {self.path}: {exc}") from exc
        self._sock = sock
        nonce = secrets.token_hex(8)
        self.send("hello", nonce)
        while True:
            kind, payload = self._frame(self.timeout if wait is None else wait)
            if kind == b"R" and payload.endswith(nonce.encode()):
                return

    def connect_patiently(self, total: float, attempt: float = HELLO_ATTEMPT) -> None:
        """:meth:`connect`, again on a fresh connection each ``attempt`` seconds without an
        answer, until ``total`` seconds have passed or the VM is gone.

        A hello can go unanswered although the agent is up: once, on a loaded machine, the
        agent had printed its ready line and the first channel then waited out the whole
        timeout. A new connection makes the agent reset that port's session, and an answer
        that comes late to an abandoned hello carries the old nonce, so it is skipped.

        Raises:
            ChannelBroken: no answer in ``total`` seconds, or the VM died.
        """
        deadline = time.monotonic() + total
        while True:
            left = deadline - time.monotonic()
            try:
                self.connect(wait=max(_POLL, min(attempt, left)))
                return
            except ChannelBroken:
                if not self._alive() or time.monotonic() >= deadline:
                    raise

    def close(self) -> None:
        """Drop the connection (the agent resets its session)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf.clear()

    @property
    def connected(self) -> bool:
        """Whether the socket is open."""
        return self._sock is not None

    def _broken(self, text: str) -> ChannelBroken:
        self.close()
        state = "" if self._alive() else " (the utility VM is gone)"
        return ChannelBroken(f"utility VM channel {self.path.name}: {text}{state}", subject="vm")

    # -- frames ------------------------------------------------------------------------------

    def _sendall(self, data: bytes | memoryview) -> None:
        if self._sock is None:
            raise self._broken("not connected")
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise self._broken(f"send failed: {exc}") from exc

    def send(self, *argv: str | bytes | int) -> None:
        """A command frame."""
        payload = b"".join(_arg(a) + b"\0" for a in argv)
        self._sendall(_HEAD.pack(b"C", len(payload)) + payload)

    def send_data(self, data: bytes | memoryview) -> None:
        """Data frames (``D``) carrying ``data``."""
        view = memoryview(data)
        for start in range(0, len(view), _MAX_DATA):
            part = view[start : start + _MAX_DATA]
            self._sendall(_HEAD.pack(b"D", len(part)))
            self._sendall(part)

    def send_end(self) -> None:
        """The end-of-data frame."""
        self._sendall(_HEAD.pack(b"E", 0))

    def _fill(self, need: int, idle: float) -> None:
        assert self._sock is not None
        waited = 0.0
        while len(self._buf) < need:
            try:
                chunk = self._sock.recv(max(need - len(self._buf), 1 << 20))
            except TimeoutError as exc:
                waited += _POLL
                if not self._alive():
                    raise self._broken("no answer") from exc
                if waited >= idle:
                    raise self._broken(f"no answer for {idle:g} s") from exc
                continue
            except OSError as exc:
                raise self._broken(f"receive failed: {exc}") from exc
            if not chunk:
                raise self._broken("connection closed")
            self._buf += chunk
            waited = 0.0

    def _frame(self, idle: float | None = None) -> tuple[bytes, bytes]:
        if self._sock is None:
            raise self._broken("not connected")
        idle = self.timeout if idle is None else idle
        self._fill(5, idle)
        kind, length = _HEAD.unpack_from(self._buf)
        if length > _MAX_FRAME or kind not in (b"R", b"X", b"D", b"E"):
            raise self._broken(f"bad frame {kind!r} of {length} bytes")
        self._fill(5 + length, idle)
        payload = bytes(self._buf[5 : 5 + length])
        del self._buf[: 5 + length]
        return kind, payload

    def reply(self) -> bytes:
        """The result of a command.

        Raises:
            GuestError: the agent reported a failure.
            ChannelBroken: the connection failed.
        """
        kind, payload = self._frame()
        if kind == b"R":
            return payload
        if kind == b"X":
            raise _guest_error(payload)
        raise self._broken(f"unexpected {kind!r} frame")

    def stream(self) -> Iterator[bytes]:
        """Data frames of a streamed reply until ``E``; then the result is read (a failure
        raises :class:`GuestError` from the iteration)."""
        while True:
            kind, payload = self._frame()
            if kind == b"D":
                yield payload
            elif kind == b"E":
                self.reply()
                return
            elif kind == b"X":
                raise _guest_error(payload)
            else:
                raise self._broken(f"unexpected {kind!r} frame in a stream")

    def call(self, *argv: str | bytes | int) -> bytes:
        """Send a command and return its result."""
        self.send(*argv)
        return self.reply()

    def call_with_data(self, argv: Iterable[str | bytes | int], chunks: Iterable[bytes]) -> bytes:
        """Send a command followed by data frames and ``E``; return its result."""
        self.send(*argv)
        for chunk in chunks:
            self.send_data(chunk)
        self.send_end()
        return self.reply()


def _guest_error(payload: bytes) -> GuestError:
    if len(payload) < 5:
        return GuestError("O", errno.EIO, "malformed failure from the agent")
    cls = chr(payload[0])
    err = int.from_bytes(payload[1:5], "big")
    return GuestError(cls, err, payload[5:].decode("utf-8", "backslashreplace"))
