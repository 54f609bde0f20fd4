"""``Channel.connect_patiently``: a hello the agent never answers is sent again on a fresh
connection, and an answer to the abandoned one is not taken for the new one's.

The agent here is a **fake, for fault injection** (named so): a Unix socket server speaking the
frame format that swallows the first connection's hello, as the real agent once appeared to under
load. The real agent's handshake is tested in tests/integration/agent and tests/vm.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lcow.backends.vm.channel import Channel, ChannelBroken

HEAD = struct.Struct(">cI")


class FakeAgentSwallowingHellos:
    """Fault injection: answers hellos only from connection number ``answer_from`` on; the
    earlier connections stay open, and their hellos are answered late on the newest one."""

    def __init__(self, path: Path, answer_from: int) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(8)
        self.answer_from = answer_from
        self.connections: list[socket.socket] = []
        self.nonces: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections.append(conn)
            kind, length = HEAD.unpack(self._read(conn, HEAD.size))
            argv = self._read(conn, length).split(b"\0")
            assert kind == b"C" and argv[0] == b"hello"
            self.nonces.append(argv[1])
            if len(self.connections) >= self.answer_from:
                for nonce in self.nonces:  # the stale answers first: they must be skipped
                    conn.sendall(HEAD.pack(b"R", len(b"ok " + nonce)) + b"ok " + nonce)

    @staticmethod
    def _read(conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def close(self) -> None:
        self.server.close()
        for conn in self.connections:
            conn.close()


@contextlib.contextmanager
def _channel_to_fake(
    where: Path, answer_from: int, alive: bool = True
) -> Iterator[tuple[FakeAgentSwallowingHellos, Channel]]:
    """A channel to a fake agent that answers hellos from connection ``answer_from`` on; both
    closed afterwards."""
    fake = FakeAgentSwallowingHellos(where, answer_from=answer_from)
    channel = Channel(where, timeout=30, alive=lambda: alive)
    try:
        yield fake, channel
    finally:
        channel.close()
        fake.close()


def test_an_unanswered_hello_is_sent_again_on_a_new_connection(tmp_path: Path) -> None:
    with _channel_to_fake(tmp_path / "c0", answer_from=3) as (fake, channel):
        started = time.monotonic()
        channel.connect_patiently(total=20, attempt=0.5)
        assert channel.connected
        assert len(fake.connections) == 3
        assert time.monotonic() - started < 10


def test_no_answer_at_all_fails_after_the_total_time(tmp_path: Path) -> None:
    with _channel_to_fake(tmp_path / "c0", answer_from=1_000) as (fake, channel):
        started = time.monotonic()
        with pytest.raises(ChannelBroken, match="no answer"):
            channel.connect_patiently(total=1.5, attempt=0.5)
        assert 1.4 < time.monotonic() - started < 10
        assert len(fake.connections) >= 2


def test_a_dead_vm_is_not_waited_for(tmp_path: Path) -> None:
    with _channel_to_fake(tmp_path / "c0", answer_from=1_000, alive=False) as (_, channel):
        started = time.monotonic()
        with pytest.raises(ChannelBroken, match="gone"):
            channel.connect_patiently(total=30, attempt=5)
        assert time.monotonic() - started < 3
