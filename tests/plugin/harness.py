"""The plugin under test of the protocol tests (SPEC §9.1 to §9.5, §9.7).

A :class:`BackgroundServer` on a socket in a short temporary directory with its client, the
layer tars the tests upload, and ``lcow plugin serve`` as a process of its own.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from lcow.graphdriver.driver import Driver
from lcow.plugin.server import BackgroundServer, ServerConfig
from tests.helpers import TarEntry, write_tar
from tests.plugin.client import PluginClient
from tests.plugin.fakes import recording_factory

__all__ = [
    "ID_METHODS",
    "Plugin",
    "apply_diff_head",
    "base_entries",
    "layer_files",
    "serve_command",
    "tar_bytes",
    "tar_names",
    "upper_entries",
    "wait_for_socket",
]


class Plugin:
    """A running server, its client and where things are."""

    def __init__(self, base: Path, sock_dir: Path, name: str = "p") -> None:
        self.base = base
        self.socket = sock_dir / f"{name}.sock"
        self.home = base / "home"
        self.state_root = base / "state"
        self.drivers: list[Driver] = []
        self.server: BackgroundServer | None = None
        self.client = PluginClient(str(self.socket))

    def start(
        self, *, host: bool = False, kind: type[Driver] = Driver, idle_timeout: float = 60.0
    ) -> Plugin:
        factory = recording_factory(self.drivers, kind)
        config = ServerConfig(
            socket_path=self.socket,
            state_root=self.state_root,
            defaults=[f"lcow.backend={'host' if host else 'userspace'}"],
            workers=64,
            idle_timeout=idle_timeout,
            factory=factory,
        )
        self.server = BackgroundServer(config)
        self.server.start()
        return self

    def stop(self) -> None:
        """Shut down as on SIGTERM; it must end cleanly (no call left running)."""
        self.client.close()
        if self.server is not None:
            server, self.server = self.server, None
            server.stop()
            assert server.clean is True

    @property
    def driver(self) -> Driver:
        return self.drivers[-1]

    def init(self, opts: list[str] | None = None) -> None:
        payload = {"Home": str(self.home), "Opts": opts, "UIDMaps": None, "GIDMaps": None}
        assert self.client.call("GraphDriver.Init", payload).body == b"{}\n"

    def layer(self, layer_id: str, parent: str, data: bytes) -> int:
        """Create + ApplyDiff, as ``docker import``/``load`` do."""
        self.client.ok("GraphDriver.Create", {"ID": layer_id, "Parent": parent})
        reply = self.client.apply_diff(layer_id, parent, data)
        assert reply.status == 200, reply
        size: int = reply.json["Size"]
        return size


def tar_bytes(tmp: Path, entries: list[TarEntry], name: str = "layer.tar") -> bytes:
    return write_tar(tmp / name, entries).read_bytes()


def base_entries() -> list[TarEntry]:
    return [
        TarEntry("etc", kind="dir", mode=0o755),
        TarEntry("etc/hostname", data=b"lcow\n"),
        TarEntry("bin", kind="dir", mode=0o755),
        TarEntry("bin/tool", data=b"#!/bin/sh\necho tool\n", mode=0o755),
        TarEntry("bin/sh", kind="symlink", target="tool"),
    ]


def upper_entries() -> list[TarEntry]:
    return [
        TarEntry("etc", kind="dir", mode=0o755),
        TarEntry("etc/.wh.hostname"),
        TarEntry("etc/new", data=b"new\n"),
        TarEntry("data", kind="dir", mode=0o700),
        TarEntry("data/blob", data=b"x" * 5000),
    ]


def tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [m.name for m in tf.getmembers()]


def layer_files(plugin: Plugin, layer_id: str) -> list[str]:
    return sorted(os.listdir(plugin.home / layer_id))


ID_METHODS = [
    "Create", "CreateReadWrite", "Remove", "Get", "Put", "Exists", "GetMetadata", "Diff",
    "Changes", "DiffSize",
]  # fmt: skip


def apply_diff_head(layer_id: str, parent: str = "", extra: str = "") -> str:
    return (
        f"POST /GraphDriver.ApplyDiff?id={layer_id}&parent={parent} HTTP/1.1\r\n"
        "Host: plugin\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n"
        "Content-Type: text/plain\r\n" + extra
    )


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the plugin did not create its socket"
        time.sleep(0.05)


def serve_command(
    state: Path,
    socket_path: Path,
    env: dict[str, str] | None = None,
    *options: str,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """``lcow plugin serve`` (userspace backend); stderr to ``log`` if given, else a pipe."""
    argv = [sys.executable, "-m", "lcow", "plugin", "serve", "--root", str(state),
            "--socket", str(socket_path), "--backend", "userspace", *options]  # fmt: skip
    if log is None:
        return subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})}
        )
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
