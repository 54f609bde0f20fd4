"""Bridges between aiohttp's async bodies and the driver's blocking streams (SPEC §9.3).

ApplyDiff: the request body goes through a pipe (:class:`BodyChannel`), so the converter moves
file data with ``splice``. The event loop writes each chunk into the pipe through a
non-blocking pipe transport (a full pipe pauses it: the body is never held in memory) while the
converter reads the other end on a worker thread. A body that breaks off must fail the
conversion, not look like a clean end of input — a tar cut after an entry is a valid tar without
its end marker. So :meth:`BodyChannel.fail` writes a *poison* of 0xFF bytes before closing,
sized so that the input then ends in the middle of a 512-byte block: the converter, whatever it
was reading, either meets 0xFF where a header belongs (no valid header: the checksum field is not
octal) or runs out of input inside a header, file data or padding — an error every time, so it
deletes its partial output. Only past the end marker, where the content is whole anyway, is the
poison read as padding and the layer kept.

Every request body is read through an :class:`IdleReader`: each read may wait at most the idle
timeout for bytes, and the timer restarts whenever bytes arrive, so a slow but moving body is
never cut while one that stops moving fails (:class:`BodyStalled`) instead of holding what it
holds forever. Time spent waiting for the pipe to drain (the converter is busy) is not the
client's and is not counted.

Diff: :func:`read_block` pulls up to a block from the driver's :class:`DiffStream` on a worker
thread, so the loop only ever awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import os

from aiohttp import StreamReader

from lcow.errors import LimitExceeded, Timeout

__all__ = [
    "BLOCK",
    "BodyChannel",
    "BodyStalled",
    "BodyTooLarge",
    "IdleReader",
    "poison",
    "read_block",
]

BLOCK = 1 << 20
_TAR_BLOCK = 512


def poison(received: int) -> bytes:
    """0xFF bytes to append to ``received`` bytes of a broken-off tar: at least two blocks (a
    header position is reached when the cut was near the end of an entry), ending half-way
    through a block (so never at a header boundary)."""
    length = 2 * _TAR_BLOCK
    length += (_TAR_BLOCK // 2 - (received + length)) % _TAR_BLOCK
    return b"\xff" * length


_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class _WriteProtocol(asyncio.BaseProtocol):
    """Flow control of the pipe transport: paused while the pipe (and buffer) is full."""

    def __init__(self) -> None:
        self.resumed = asyncio.Event()
        self.resumed.set()
        self.lost = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def pause_writing(self) -> None:
        self.resumed.clear()

    def resume_writing(self) -> None:
        self.resumed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True  # the reader is gone (the conversion ended): stop writing
        self.resumed.set()
        if not self.closed.done():
            self.closed.set_result(None)


class BodyChannel:
    """The converter's input (:attr:`fd`), fed from the event loop.

    Use ``channel = await BodyChannel.open()``; then :meth:`send` chunks and :meth:`finish`, or
    :meth:`fail`; :meth:`close_reader` once the conversion is over.
    """

    def __init__(
        self, read_fd: int, transport: asyncio.WriteTransport, protocol: _WriteProtocol
    ) -> None:
        self.fd = read_fd
        self._transport = transport
        self._protocol = protocol
        self.failure: str | None = None
        self.sent = 0

    @classmethod
    async def open(cls) -> BodyChannel:
        """A pipe (enlarged to a block where allowed) with its write end on the loop."""
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_fd, _F_SETPIPE_SZ, BLOCK)
        pipe = os.fdopen(write_fd, "wb", buffering=0)
        try:
            transport, protocol = await asyncio.get_running_loop().connect_write_pipe(
                _WriteProtocol, pipe
            )
        except BaseException:
            pipe.close()
            os.close(read_fd)
            raise
        transport.set_write_buffer_limits(high=BLOCK)
        return cls(read_fd, transport, protocol)

    @property
    def broken(self) -> bool:
        """The reader has gone: the rest of the body is drained, not sent."""
        return self._protocol.lost

    async def send(self, data: bytes) -> None:
        """Queue ``data``; wait while the pipe is full. Dropped once the reader has gone."""
        if self._protocol.lost or not data:
            return
        self._transport.write(data)
        self.sent += len(data)
        await self._protocol.resumed.wait()

    async def finish(self) -> None:
        """End of the body: flush, close, and the reader sees the end of input."""
        if not self._transport.is_closing():
            self._transport.close()
        await self._protocol.closed

    def fail(self, reason: str) -> None:
        """The body broke off: poison the input, then close it."""
        self.failure = reason
        if not self._transport.is_closing():
            if not self._protocol.lost:
                self._transport.write(poison(self.sent))
            self._transport.close()

    def close_reader(self) -> None:
        """The converter's end, once the conversion is over (whatever its outcome): never
        before, since a worker may still be reading the descriptor."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def read_block(stream: io.RawIOBase, size: int = BLOCK) -> bytes:
    """Up to ``size`` bytes from a blocking stream (fewer only at its end); on a worker."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    filled = 0
    while filled < size:
        n = stream.readinto(view[filled:])
        if not n:
            break
        filled += n
    del view
    del buffer[filled:]
    return bytes(buffer)


class BodyStalled(Timeout):
    """A request body sent nothing for the idle timeout."""


class BodyTooLarge(LimitExceeded):
    """A request body went past the size its call allows."""


class IdleReader:
    """A request body read with an idle timeout (see the module's docstring).

    Args:
        content: the request's body stream.
        idle_timeout: seconds a read may wait for the next bytes.
    """

    def __init__(self, content: StreamReader, idle_timeout: float) -> None:
        self._content = content
        self.idle_timeout = idle_timeout
        self.received = 0

    async def read(self) -> bytes:
        """The bytes that have arrived (waiting for some); ``b""`` at the end of the body.

        Raises:
            BodyStalled: no byte came within the idle timeout.
        """
        try:
            async with asyncio.timeout(self.idle_timeout):
                data = await self._content.readany()
        except TimeoutError:
            raise BodyStalled(
                f"no data for {self.idle_timeout:g} s after {self.received} bytes"
            ) from None
        self.received += len(data)
        return data

    async def read_up_to(self, size: int) -> list[bytes]:
        """Chunks until at least ``size`` bytes or the end of the body have come."""
        chunks: list[bytes] = []
        got = 0
        while got < size and (chunk := await self.read()):
            chunks.append(chunk)
            got += len(chunk)
        return chunks

    async def read_all(self, limit: int) -> bytes:
        """The whole body.

        Raises:
            BodyTooLarge: it is longer than ``limit`` bytes (reading stops there).
            BodyStalled: it stopped moving.
        """
        chunks = await self.read_up_to(limit + 1)
        if self.received > limit:
            raise BodyTooLarge(f"request body larger than {limit} bytes")
        return b"".join(chunks)

    async def drain(self) -> None:
        """Read and drop the rest of the body (a client answered before the end of its body
        resends it); a body that stalls or breaks off cannot be drained further."""
        with contextlib.suppress(Exception):
            while await self.read():
                pass
