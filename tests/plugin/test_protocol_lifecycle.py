"""The graph-driver plugin protocol through a real unix socket: restarts, state, sockets and
the ``lcow plugin serve`` command (SPEC §9.7).

Get's views survive a plugin restart and a new Init (host backend, root).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from lcow.errors import Busy
from lcow.plugin.server import BackgroundServer, ServerConfig, bind_unix_socket
from tests.helpers import ensure, host_leftovers
from tests.plugin.client import PluginClient
from tests.plugin.dockerd import mounts_below
from tests.plugin.fakes import StuckDriver, recording_factory
from tests.plugin.harness import Plugin, base_entries, serve_command, tar_bytes, wait_for_socket

pytestmark = pytest.mark.timeout(120)

# -- restarts, sockets, the command --------------------------------------------------------------


def test_a_restarted_plugin_serves_without_a_new_init(tmp_path: Path, sock_dir: Path) -> None:
    first = Plugin(tmp_path, sock_dir).start()
    try:
        first.init(["lcow.globalmode=true"])
        first.layer("kept", "", tar_bytes(tmp_path, base_entries()))
    finally:
        first.stop()
    assert not first.socket.exists()
    second = Plugin(tmp_path, sock_dir).start()
    try:
        status = second.client.ok("GraphDriver.Status")["Status"]
        assert ["Mode", "global"] in status
        assert second.client.ok("GraphDriver.Exists", {"ID": "kept"}) == {"Exists": True}
        assert second.drivers[0].options.global_mode
    finally:
        second.stop()


def qsd_pid(home: Path) -> str:
    """The storage daemon's pid as the host backend records it."""
    return (home / "mounts" / "qsd.pid").read_text()


def container_layers(plugin: Plugin, tmp_path: Path) -> None:
    """An image layer and a container's writable layer on it, as ``docker run`` makes them."""
    plugin.layer("image", "", tar_bytes(tmp_path, base_entries()))
    plugin.client.ok("GraphDriver.CreateReadWrite", {"ID": "ctr", "Parent": "image"})


def test_a_plugin_restart_keeps_the_views_clients_hold(tmp_path: Path, sock_dir: Path) -> None:
    ensure("host")
    first = Plugin(tmp_path, sock_dir).start(host=True)
    first.init()
    container_layers(first, tmp_path)
    directory = first.client.ok("GraphDriver.Get", {"ID": "ctr"})["Dir"]
    mounted = mounts_below(first.home / "mounts")
    daemon = qsd_pid(first.home)
    # A process inside the container, writing through a descriptor opened before the restart.
    with open(Path(directory, "etc", "log"), "ab", buffering=0) as log:
        log.write(b"before\n")
        first.stop()  # SIGTERM
        log.write(b"while stopped\n")
        os.fsync(log.fileno())
        assert mounts_below(first.home / "mounts") == mounted
        assert qsd_pid(first.home) == daemon
        second = Plugin(tmp_path, sock_dir).start(host=True)  # no Init: restored
        try:
            # The same directory, the same mounts and storage daemon: nothing mounted twice.
            assert second.client.ok("GraphDriver.Get", {"ID": "ctr"})["Dir"] == directory
            assert mounts_below(first.home / "mounts") == mounted
            assert qsd_pid(first.home) == daemon
            assert second.driver.view_count("ctr") == 2
            log.write(b"after\n")
            os.fsync(log.fileno())
            assert Path(directory, "etc", "log").read_bytes() == b"before\nwhile stopped\nafter\n"
            second.client.ok("GraphDriver.Put", {"ID": "ctr"})
            assert mounts_below(first.home / "mounts") == mounted
        finally:
            second.stop()
    # What the views held stays until released; an administrator releases everything.
    assert mounts_below(first.home / "mounts") == mounted
    subprocess.run(
        [sys.executable, "-m", "lcow", "--root", str(first.home), "--backend", "host", "cleanup"],
        check=True, timeout=120,
    )  # fmt: skip
    assert host_leftovers(tmp_path) == []
    # The content was written back to the sandbox: a new view shows it.
    third = Plugin(tmp_path, sock_dir).start(host=True)
    try:
        directory = third.client.ok("GraphDriver.Get", {"ID": "ctr"})["Dir"]
        assert Path(directory, "etc", "log").read_bytes() == b"before\nwhile stopped\nafter\n"
        third.client.ok("GraphDriver.Put", {"ID": "ctr"})
    finally:
        third.stop()
    assert host_leftovers(tmp_path) == []


def test_a_new_init_keeps_the_views_clients_hold(host_plugin: Plugin, tmp_path: Path) -> None:
    container_layers(host_plugin, tmp_path)
    client = host_plugin.client
    directory = client.ok("GraphDriver.Get", {"ID": "ctr"})["Dir"]
    Path(directory, "etc", "kept").write_bytes(b"kept\n")
    mounted = mounts_below(host_plugin.home / "mounts")
    host_plugin.init()  # a restarted dockerd's Init while the container still runs
    assert len(host_plugin.drivers) == 2
    assert mounts_below(host_plugin.home / "mounts") == mounted
    assert host_plugin.driver.view_count("ctr") == 1
    assert client.ok("GraphDriver.Get", {"ID": "ctr"})["Dir"] == directory
    assert mounts_below(host_plugin.home / "mounts") == mounted
    assert Path(directory, "etc", "kept").read_bytes() == b"kept\n"
    client.ok("GraphDriver.Put", {"ID": "ctr"})
    client.ok("GraphDriver.Put", {"ID": "ctr"})
    assert not Path(directory).exists()


def test_a_stuck_call_does_not_hold_up_the_shutdown(tmp_path: Path, sock_dir: Path) -> None:
    StuckDriver.release = threading.Event()
    StuckDriver.entered = threading.Event()
    running = Plugin(tmp_path, sock_dir)
    factory = recording_factory(running.drivers, StuckDriver)
    config = ServerConfig(
        socket_path=running.socket,
        state_root=running.state_root,
        defaults=["lcow.backend=userspace"],
        shutdown_timeout=1.0,
        factory=factory,
    )
    server = BackgroundServer(config)
    server.start()
    try:
        running.client.ok("GraphDriver.Init", {"Home": str(running.home)})

        def call() -> None:
            with contextlib.suppress(Exception):  # the server goes away under it
                PluginClient(str(running.socket), timeout=20).call(
                    "GraphDriver.Exists", {"ID": "x"}
                )

        hung = threading.Thread(target=call, daemon=True)
        hung.start()
        assert StuckDriver.entered.wait(10)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 10
        assert server.clean is False
        assert not running.socket.exists()
    finally:
        StuckDriver.release.set()
        running.client.close()


def test_a_damaged_state_waits_for_init(tmp_path: Path, sock_dir: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.json").write_text("{not json")
    running = Plugin(tmp_path, sock_dir).start()
    try:
        assert "not initialised" in running.client.call("GraphDriver.Status").json["Err"]
        running.init()
        assert running.client.ok("GraphDriver.Status")["Status"][0] == ["LCOW", ""]
    finally:
        running.stop()


def test_stale_and_busy_sockets(sock_dir: Path, tmp_path: Path) -> None:
    path = sock_dir / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: a crashed plugin's socket
    live = bind_unix_socket(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        with pytest.raises(Busy):
            bind_unix_socket(path)
    finally:
        live.close()
        path.unlink()
    (sock_dir / "file.sock").write_text("not a socket")
    with pytest.raises(ValueError, match="not a socket"):
        bind_unix_socket(sock_dir / "file.sock")


def test_two_plugins_cannot_share_a_state_directory(tmp_path: Path, sock_dir: Path) -> None:
    first = Plugin(tmp_path, sock_dir, "one").start()
    try:
        with pytest.raises(Busy, match="another lcow plugin"):
            Plugin(tmp_path, sock_dir, "two").start()
        assert not (sock_dir / "two.sock").exists()
    finally:
        first.stop()


def test_the_command_serves_until_sigterm(tmp_path: Path, sock_dir: Path) -> None:
    socket_path = sock_dir / "cli.sock"
    state = tmp_path / "state"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # systemd's Type=notify socket
    notify.bind(str(sock_dir / "notify"))
    notify.settimeout(30)
    proc = serve_command(state, socket_path, {"NOTIFY_SOCKET": str(sock_dir / "notify")})
    try:
        assert notify.recv(4096) == b"READY=1"
        wait_for_socket(socket_path, proc)
        client = PluginClient(str(socket_path))
        assert client.request("Plugin.Activate", b"").json == {"Implements": ["GraphDriver"]}
        payload: dict[str, Any] = {"Home": str(tmp_path / "home"), "Opts": None}
        assert client.call("GraphDriver.Init", payload).body == b"{}\n"
        client.ok("GraphDriver.Create", {"ID": "x"})
        client.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert notify.recv(4096) == b"STOPPING=1"
    finally:
        notify.close()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
    log = err.decode()
    assert proc.returncode == 0, log
    assert not socket_path.exists()
    assert " INFO [" in log and "POST /GraphDriver.Create id=x -> 200" in log
    assert "Init: home" in log and "stopped" in log
    # A restart picks up the persisted Init.
    proc = serve_command(state, socket_path)
    try:
        wait_for_socket(socket_path, proc)
        client = PluginClient(str(socket_path))
        assert client.ok("GraphDriver.Exists", {"ID": "x"}) == {"Exists": True}
        client.close()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
        assert proc.returncode == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
