"""Fixtures of the guest agent's host-side tests: the agent built natively (``hostserve``),
driven over a socketpair frame by frame (:class:`RawAgent`) or through the vm backend's own
:class:`~lcow.backends.vm.channel.Channel` and :class:`~lcow.backends.vm.vmfs.VmFS`."""

from __future__ import annotations

import socket
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lcow.backends.vm.channel import Channel
from lcow.backends.vm.vmfs import VmFS
from tests.helpers import ensure
from tests.integration.agent.native import AgentProcess, build

HEAD = struct.Struct(">cI")
#: The view's guest directory the tests use (below the agent's views folder).
VIEW = "/view"


@pytest.fixture(scope="session")
def hostserve(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The native agent, built once per session."""
    ensure("gcc")
    return build(tmp_path_factory.mktemp("agent") / "hostserve")


class RawAgent:
    """An agent serving one end of a socketpair; the test holds the other end."""

    def __init__(self, binary: Path, views: Path, log: Path) -> None:
        self.views = views
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.process = AgentProcess(binary, views, "serve", theirs.detach(), log)
        self._buf = b""

    def send_raw(self, data: bytes) -> None:
        """Bytes as they are, frames or not."""
        self.sock.sendall(data)

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        """One frame."""
        self.sock.sendall(HEAD.pack(kind, len(payload)) + payload)

    def command(self, *argv: str | bytes | int) -> None:
        """A ``C`` frame of NUL-terminated arguments."""
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in argv]
        self.send(b"C", b"".join(p + b"\0" for p in parts))

    def _need(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError(f"agent closed after {len(self._buf)} of {n} bytes")
            self._buf += chunk
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def frame(self) -> tuple[bytes, bytes]:
        """The next frame the agent sent."""
        kind, length = HEAD.unpack(self._need(HEAD.size))
        return kind, self._need(length)

    def call(self, *argv: str | bytes | int) -> tuple[bytes, bytes]:
        """A command and its reply frame."""
        self.command(*argv)
        return self.frame()

    def close_and_wait(self) -> int:
        """Close our end; the agent's exit status once it noticed."""
        self.sock.close()
        return self.process.wait()


@pytest.fixture
def raw_agent(hostserve: Path, tmp_path: Path) -> Iterator[RawAgent]:
    """A socketpair agent whose views folder is ``tmp_path/views`` (with ``view/`` in it);
    after the test it must have exited or still run without a sanitizer report."""
    views = tmp_path / "views"
    (views / VIEW.strip("/")).mkdir(parents=True)
    agent = RawAgent(hostserve, views, tmp_path / "agent.log")
    yield agent
    agent.sock.close()
    agent.process.stop()
    agent.process.assert_clean()


class NativeView:
    """What :class:`VmFS` needs of a Get's view: a guest path and a connected channel."""

    def __init__(self, channel: Channel, path: str) -> None:
        self.layer_id = "native"
        self.path = path
        self.channel = channel

    @contextmanager
    def session(self) -> Iterator[Channel]:
        if not self.channel.connected:
            self.channel.connect()
        yield self.channel


class NativeAgent:
    """An agent accepting connections on a Unix socket, as the utility VM's port does."""

    def __init__(self, binary: Path, views: Path, socket_path: Path, log: Path) -> None:
        self.socket_path = socket_path
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(socket_path))
        listener.listen(4)
        self.process = AgentProcess(binary, views, "accept", listener.detach(), log)

    def channel(self) -> Channel:
        """A new channel to the agent (not yet connected)."""
        return Channel(self.socket_path, 30, self.process.alive)


@pytest.fixture
def native_agent(hostserve: Path, tmp_path: Path) -> Iterator[NativeAgent]:
    """An accepting agent on ``tmp_path/views``; stopped and checked after the test."""
    views = tmp_path / "views"
    (views / VIEW.strip("/")).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="agent-") as short:  # sun_path is 108 bytes
        agent = NativeAgent(hostserve, views, Path(short, "port.sock"), tmp_path / "agent.log")
        try:
            yield agent
        finally:
            agent.process.stop()
    agent.process.assert_clean()


@pytest.fixture
def vmfs(native_agent: NativeAgent, tmp_path: Path) -> Iterator[VmFS]:
    """The vm backend's file system object over the native agent's ``/view``."""
    channel = native_agent.channel()
    yield VmFS(NativeView(channel, VIEW))
    channel.close()
