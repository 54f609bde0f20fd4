"""The graph-driver plugin protocol through a real unix socket (SPEC §9.1 to §9.5, §9.7).

A :class:`BackgroundServer` serves on a socket in a short temporary directory; the client
speaks as dockerd does (``Accept`` header, JSON + newline, chunked ApplyDiff with an unescaped
query). Answers are compared byte for byte where the daemon parses them. The default driver
runs the userspace backend (no root); Get's success path runs the real host backend (root).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import logging
import os
import queue
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lcow.errors import Busy
from lcow.graphdriver.driver import Driver
from lcow.plugin.handlers import PREFETCH
from lcow.plugin.server import BackgroundServer, ServerConfig, bind_unix_socket
from lcow.plugin.streams import poison
from tests.helpers import TarEntry, ensure, host_leftovers, write_tar
from tests.plugin.client import (
    PluginClient,
    chunked,
    raw_request,
    read_reply,
    stalled_request,
)
from tests.plugin.dockerd import mounts_below
from tests.plugin.fakes import (
    FailingDiffDriver,
    RecordingDriver,
    StuckDriver,
    recording_factory,
)

pytestmark = pytest.mark.timeout(120)

JSON_TYPE = "application/vnd.docker.plugins.v1+json"


# -- fixtures ------------------------------------------------------------------------------------


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


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for sockets (unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="lcowp-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def logging_on() -> Iterator[None]:
    """Log records reach handlers whatever another test of the session did to logging."""
    previous = logging.root.manager.disable
    logging.disable(logging.NOTSET)
    yield
    logging.disable(previous)


@pytest.fixture
def plugin(tmp_path: Path, sock_dir: Path) -> Iterator[Plugin]:
    running = Plugin(tmp_path, sock_dir).start()
    yield running
    running.stop()
    assert not running.socket.exists()


@pytest.fixture
def host_plugin(tmp_path: Path, sock_dir: Path) -> Iterator[Plugin]:
    """A plugin on the host backend: Get answers mounted host directories. Stopped as dockerd
    and the plugin stop: dockerd's Cleanup, then SIGTERM."""
    ensure("host")
    running = Plugin(tmp_path, sock_dir).start(host=True)
    running.init()
    yield running
    running.client.ok("GraphDriver.Cleanup")
    running.stop()
    assert host_leftovers(tmp_path) == []


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


# -- handshake, Init, Capabilities ---------------------------------------------------------------


def test_activate_answers_implements_graphdriver(plugin: Plugin) -> None:
    reply = plugin.client.request("Plugin.Activate", b"")
    assert reply.status == 200
    assert reply.body == b'{"Implements":["GraphDriver"]}\n'
    assert reply.headers["content-type"].startswith(JSON_TYPE)
    assert reply.headers["x-lcow-request-id"]


def test_socket_mode_is_0660(plugin: Plugin) -> None:
    info = plugin.socket.stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660


def test_before_init_calls_fail_and_capabilities_answer(plugin: Plugin) -> None:
    reply = plugin.client.call("GraphDriver.Status")
    assert reply.status == 200
    assert reply.json == {
        "Err": "lcow plugin: not initialised: GraphDriver.Init has not been called"
    }
    reply = plugin.client.call("GraphDriver.Capabilities")
    assert reply.body == b'{"Capabilities":{"ReproducesExactDiffs":false}}\n'
    reply = plugin.client.call("GraphDriver.Diff", {"ID": "x"})
    assert reply.status == 500
    assert "not initialised" in reply.json["Err"]
    reply = plugin.client.apply_diff("x", "", b"\0" * 1024)
    assert reply.status == 200
    assert "not initialised" in reply.json["Err"]


ID_METHODS = [
    "Create", "CreateReadWrite", "Remove", "Get", "Put", "Exists", "GetMetadata", "Diff",
    "Changes", "DiffSize",
]  # fmt: skip


@pytest.mark.parametrize("method", [*ID_METHODS, "Status", "Cleanup"])
def test_every_call_before_init_says_so(plugin: Plugin, method: str) -> None:
    reply = plugin.client.call(f"GraphDriver.{method}", {"ID": "a"})
    assert reply.status == (500 if method == "Diff" else 200)
    assert reply.json == {
        "Err": "lcow plugin: not initialised: GraphDriver.Init has not been called"
    }


@pytest.mark.parametrize("method", ID_METHODS)
@pytest.mark.parametrize("payload", [{}, {"ID": ""}, {"ID": "../up"}, {"ID": "a/b"}, {"ID": 1}])
def test_every_call_refuses_bad_ids(plugin: Plugin, method: str, payload: dict[str, Any]) -> None:
    plugin.init()
    reply = plugin.client.call(f"GraphDriver.{method}", payload)
    assert reply.status == 400
    assert reply.json["Err"].startswith(f"GraphDriver.{method}: ")
    assert not (plugin.home.parent / "up").exists()  # nothing made outside the root
    assert not (plugin.home / "a").exists()


def test_init_creates_the_root_and_persists_its_arguments(plugin: Plugin) -> None:
    payload = {
        "Home": str(plugin.home),
        "Opts": ["lcow.globalmode=true", "overlay2.size=1G"],
        "UIDMaps": [{"container_id": 0, "host_id": 100000, "size": 65536}],
        "GIDMaps": None,
    }
    assert plugin.client.call("GraphDriver.Init", payload).body == b"{}\n"
    assert (plugin.home / "cache").is_dir()
    assert stat.S_IMODE(plugin.home.stat().st_mode) == 0o700
    saved = json.loads((plugin.state_root / "state.json").read_text())
    assert saved["Home"] == str(plugin.home)
    assert saved["Opts"] == payload["Opts"]
    assert saved["UIDMaps"] == payload["UIDMaps"]
    assert saved["GIDMaps"] is None
    assert stat.S_IMODE((plugin.state_root / "state.json").stat().st_mode) == 0o600
    status = plugin.client.ok("GraphDriver.Status")["Status"]
    assert status[0] == ["LCOW", ""]
    assert ["Mode", "global"] in status
    assert ["Backend", "userspace"] in status


@pytest.mark.parametrize(
    ("home", "opts", "message"),
    [
        ("relative/home", None, "Home must be an absolute path"),
        ("", None, "Home must be an absolute path"),
        (None, ["lcow.globalmode=maybe"], "failed to parse value for 'lcow.globalmode'"),
        (None, ["lcow.nosuchkey=1"], "unknown option 'lcow.nosuchkey'"),
        (None, ["lcow.backend=vm", "lcow.kirdpath=/nonexistent"], "driver not supported"),
    ],
)
def test_init_errors_leave_the_plugin_uninitialised(
    plugin: Plugin, home: str | None, opts: list[str] | None, message: str
) -> None:
    payload = {"Home": str(plugin.home) if home is None else home, "Opts": opts}
    reply = plugin.client.call("GraphDriver.Init", payload)
    assert reply.status == 200
    assert message in reply.json["Err"]
    assert not (plugin.state_root / "state.json").exists()
    assert "not initialised" in plugin.client.call("GraphDriver.Status").json["Err"]


def test_a_new_init_replaces_the_driver(plugin: Plugin, tmp_path: Path) -> None:
    plugin.init()
    plugin.client.ok("GraphDriver.Create", {"ID": "one"})
    other = tmp_path / "other"
    payload = {"Home": str(other), "Opts": None, "UIDMaps": None, "GIDMaps": None}
    assert plugin.client.call("GraphDriver.Init", payload).body == b"{}\n"
    assert plugin.client.ok("GraphDriver.Exists", {"ID": "one"}) == {"Exists": False}
    assert json.loads((plugin.state_root / "state.json").read_text())["Home"] == str(other)


# -- layers --------------------------------------------------------------------------------------


def test_layer_calls_answer_with_the_exact_fields(plugin: Plugin, tmp_path: Path) -> None:
    plugin.init()
    client = plugin.client
    base = tar_bytes(tmp_path, base_entries())
    size = plugin.layer("base", "", base)
    assert size == len(b"lcow\n") + len(b"#!/bin/sh\necho tool\n")
    assert layer_files(plugin, "base") == ["layer.vhd", "layerchain.json", "lcow-layer.json"]
    upper = tar_bytes(tmp_path, upper_entries(), "upper.tar")
    assert plugin.layer("upper", "base", upper) == 4 + 5000

    assert client.call("GraphDriver.Exists", {"ID": "upper"}).body == b'{"Exists":true}\n'
    assert client.call("GraphDriver.Exists", {"ID": "nope"}).body == b'{"Exists":false}\n'
    assert client.call("GraphDriver.GetMetadata", {"ID": "upper"}).json == {
        "Metadata": {"dir": str(plugin.home / "upper")}
    }
    reply = client.call("GraphDriver.Changes", {"ID": "upper", "Parent": "base"})
    assert reply.body == (
        b'{"Changes":[{"Path":"/data","Kind":1},{"Path":"/data/blob","Kind":1},'
        b'{"Path":"/etc","Kind":0},{"Path":"/etc/hostname","Kind":2},'
        b'{"Path":"/etc/new","Kind":1}]}\n'
    )
    assert client.call("GraphDriver.DiffSize", {"ID": "upper", "Parent": "base"}).body == (
        b'{"Size":5004}\n'
    )
    # Diff against the direct parent: own content with AUFS whiteouts, as a raw tar.
    reply = client.call("GraphDriver.Diff", {"ID": "upper", "Parent": "base"})
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/x-tar"
    assert reply.headers["transfer-encoding"] == "chunked"
    assert reply.headers["x-lcow-request-id"]
    assert tar_names(reply.body) == ["data", "data/blob", "etc", "etc/.wh.hostname", "etc/new"]
    # ...and against no parent: the whole view.
    whole = client.call("GraphDriver.Diff", {"ID": "upper"})
    assert "bin/tool" in tar_names(whole.body)
    # The Diff applied elsewhere gives the same size as DiffSize (SPEC §3).
    assert plugin.layer("copy", "base", reply.body) == 5004

    status = client.ok("GraphDriver.Status")["Status"]
    assert ["Layers", "3"] in status
    assert client.call("GraphDriver.Remove", {"ID": "upper"}).body == b"{}\n"
    assert client.ok("GraphDriver.Exists", {"ID": "upper"}) == {"Exists": False}
    assert client.call("GraphDriver.Remove", {"ID": "never-was"}).body == b"{}\n"
    assert client.call("GraphDriver.Cleanup").body == b"{}\n"


def test_create_errors_come_back_as_err(plugin: Plugin) -> None:
    plugin.init()
    reply = plugin.client.call("GraphDriver.Create", {"ID": "a", "Parent": "missing"})
    assert reply.status == 200
    assert reply.json == {
        "Err": "lcowdriver: cannot create layer folder with missing parent missing"
    }
    reply = plugin.client.call(
        "GraphDriver.CreateReadWrite", {"ID": "rw", "StorageOpt": {"lcow.sandboxsize": "10"}}
    )
    assert reply.json == {
        "Err": "lcowdriver: createreadwrite: id rw 'lcow.sandboxsize' option cannot be less than 20"
    }


def test_changes_and_sizes_of_missing_layers_fail(plugin: Plugin) -> None:
    plugin.init()
    for method in ("GraphDriver.Changes", "GraphDriver.DiffSize"):
        reply = plugin.client.call(method, {"ID": "ghost"})
        assert reply.status == 200
        assert "ghost: layer does not exist" in reply.json["Err"]


# -- Get and Put ---------------------------------------------------------------------------------


def test_get_refuses_a_backend_without_host_directories(plugin: Plugin, tmp_path: Path) -> None:
    plugin.init()
    plugin.layer("base", "", tar_bytes(tmp_path, base_entries()))
    reply = plugin.client.call("GraphDriver.Get", {"ID": "base"})
    assert reply.status == 200
    err = reply.json["Err"]
    assert err.startswith("driver not supported")
    assert "userspace backend" in err
    assert "Dir" not in reply.json
    assert plugin.driver.view_count("base") == 0


def test_get_and_put_count_views(host_plugin: Plugin) -> None:
    client, driver = host_plugin.client, host_plugin.driver
    client.ok("GraphDriver.Create", {"ID": "base"})
    client.ok("GraphDriver.CreateReadWrite", {"ID": "c-init", "Parent": "base"})
    first = client.call("GraphDriver.Get", {"ID": "c-init"})
    assert first.status == 200
    directory = first.json["Dir"]
    assert first.body == json.dumps({"Dir": directory}, separators=(",", ":")).encode() + b"\n"
    assert Path(directory).is_dir()
    assert client.ok("GraphDriver.Get", {"ID": "c-init", "MountLabel": ""})["Dir"] == directory
    assert driver.view_count("c-init") == 2
    assert client.call("GraphDriver.Put", {"ID": "c-init"}).body == b"{}\n"
    assert driver.view_count("c-init") == 1
    client.ok("GraphDriver.Put", {"ID": "c-init"})
    assert driver.view_count("c-init") == 0
    assert not Path(directory).exists()
    client.ok("GraphDriver.Put", {"ID": "c-init"})  # no Get outstanding: a no-op
    reply = client.call("GraphDriver.Get", {"ID": "ghost"})
    assert "ghost: layer does not exist" in reply.json["Err"]
    # Remove tears down a view whatever its count; Cleanup every view.
    client.ok("GraphDriver.Get", {"ID": "c-init"})
    client.ok("GraphDriver.Remove", {"ID": "c-init"})
    assert driver.view_count("c-init") == 0
    client.ok("GraphDriver.Get", {"ID": "base"})
    client.ok("GraphDriver.Get", {"ID": "base"})
    client.ok("GraphDriver.Cleanup")
    assert driver.view_count("base") == 0


# -- ApplyDiff streaming -------------------------------------------------------------------------


def apply_diff_head(layer_id: str, parent: str = "", extra: str = "") -> str:
    return (
        f"POST /GraphDriver.ApplyDiff?id={layer_id}&parent={parent} HTTP/1.1\r\n"
        "Host: plugin\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n"
        "Content-Type: text/plain\r\n" + extra
    )


def test_apply_diff_answers_only_after_the_whole_body(plugin: Plugin, tmp_path: Path) -> None:
    plugin.init()
    plugin.client.ok("GraphDriver.Create", {"ID": "slow"})
    body = chunked(tar_bytes(tmp_path, base_entries()) + b"\0" * 4096, 1000)  # padding after
    final = b"0\r\n\r\n"
    assert body.endswith(final)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(plugin.socket))
        sock.sendall(
            apply_diff_head("slow", extra="Transfer-Encoding: chunked").encode()
            + b"\r\n\r\n"
            + body[: -len(final)]
        )
        ready, _, _ = select.select([sock], [], [], 1.5)
        assert not ready, "answered before the end of the body"
        sock.sendall(final)
        answer = sock.recv(65536)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(payload) == {"Size": 25}
    assert (plugin.home / "slow" / "layer.vhd").is_file()


def test_a_failed_apply_diff_still_drains_the_body(plugin: Plugin) -> None:
    plugin.init()
    plugin.client.ok("GraphDriver.Create", {"ID": "bad"})
    garbage = b"\xff" * (8 << 20)  # not a tar: the converter stops at once
    reply = plugin.client.apply_diff("bad", "", garbage)
    assert reply.status == 200
    assert "Err" in reply.json
    assert layer_files(plugin, "bad") == ["layerchain.json"]
    # The connection was read to the end of the body, so it stays usable.
    assert plugin.client.ok("GraphDriver.Exists", {"ID": "bad"}) == {"Exists": True}


def test_apply_diff_errors(plugin: Plugin, tmp_path: Path) -> None:
    plugin.init()
    data = tar_bytes(tmp_path, base_entries())
    reply = plugin.client.apply_diff("ghost", "", data)
    assert reply.status == 200
    assert reply.json == {"Err": "lcowdriver: applydiff: ghost: layer does not exist"}
    reply = plugin.client.request("GraphDriver.ApplyDiff?parent=", iter([data]),
                                  encode_chunked=True)  # fmt: skip
    assert reply.status == 400
    assert "invalid layer id" in reply.json["Err"]
    reply = plugin.client.apply_diff("..", "", data)
    assert reply.status == 400


@pytest.mark.parametrize("pause", [0.0, 0.5], ids=["at-once", "after-a-pause"])
@pytest.mark.parametrize("cut", ["header-boundary", "mid-entry", "chunked"])
def test_a_truncated_apply_diff_body_leaves_no_layer(
    tmp_path: Path,
    sock_dir: Path,
    cut: str,
    pause: float,
    caplog: pytest.LogCaptureFixture,
    logging_on: None,
) -> None:
    RecordingDriver.applied = queue.Queue()
    running = Plugin(tmp_path, sock_dir).start(kind=RecordingDriver)
    try:
        running.init()
        running.client.ok("GraphDriver.Create", {"ID": "cut"})
        # More than PREFETCH before the cut, so that the conversion has begun when it comes.
        data = tar_bytes(tmp_path, [TarEntry(f"f{i}", data=b"y" * 3000) for i in range(120)])
        if cut == "chunked":
            body = chunked(data)[: len(data) * 3 // 4]  # no final chunk, cut inside a chunk
            head = apply_diff_head("cut", extra="Transfer-Encoding: chunked")
        else:
            # A tar cut exactly after an entry is a valid tar without its end marker: only the
            # missing bytes of the body tell that it is incomplete.
            with tarfile.open(fileobj=io.BytesIO(data)) as tf:
                member = tf.getmembers()[100]
            end = member.offset_data + 3072  # data padded to the block
            body = data[:end] if cut == "header-boundary" else data[: end - 100]
            head = apply_diff_head("cut", extra=f"Content-Length: {len(data)}")
        assert len(body) > PREFETCH
        # After a pause the converter has consumed what came; at once, the body may be lost
        # with the connection before the handler reads it (then no conversion begins).
        answer = raw_request(str(running.socket), head, body, pause=pause)
        assert b'"Size"' not in answer
        deadline = time.monotonic() + 30
        while "GraphDriver.ApplyDiff" not in caplog.text:  # logged once the call is over
            assert time.monotonic() < deadline
            time.sleep(0.05)
        if pause or not RecordingDriver.applied.empty():
            outcome = RecordingDriver.applied.get(timeout=30)
            assert isinstance(outcome, ValueError), outcome  # the poison: not an end of input
        assert layer_files(running, "cut") == ["layerchain.json"]
        assert running.client.ok("GraphDriver.Changes", {"ID": "cut"}) == {"Changes": []}
    finally:
        running.stop()


def test_the_poison_fails_every_cut_before_the_end_marker(tmp_path: Path) -> None:
    """Whatever the converter is reading when a body breaks off (a header, file data, padding,
    a PAX record, the end marker itself), the poison block makes it fail; past the end marker
    (both zero blocks) the content is whole."""
    entries = [
        TarEntry("d", kind="dir"),
        TarEntry("d/small", data=b"s" * 100),
        TarEntry("d/" + "long-name-" * 12, data=b"p" * 1500, xattrs={"user.k": b"v"}),
        TarEntry("d/link", kind="symlink", target="small"),
        TarEntry("d/big", data=os.urandom(3000)),
    ]
    data = tar_bytes(tmp_path, entries)
    end_marker = len(data.rstrip(b"\0"))
    end_marker += -end_marker % 512
    driver = Driver(tmp_path / "root", ["lcow.backend=userspace"])
    cuts = sorted(
        {*range(0, len(data), 64), *range(1, len(data), 512), *range(511, len(data), 512)}
    )
    for cut in cuts:
        driver.create("cut")
        read_fd, write_fd = os.pipe()
        feeder = threading.Thread(target=_feed, args=(write_fd, data[:cut] + poison(cut)))
        feeder.start()
        try:
            if cut < end_marker + 1024:  # before the whole end marker (two zero blocks)
                with pytest.raises(ValueError):
                    driver.apply_diff("cut", None, read_fd)
                assert layer_files_in(driver, "cut") == ["layerchain.json"], cut
            else:  # past the end marker: only padding was lost
                assert driver.apply_diff("cut", None, read_fd) == 100 + 1500 + 3000
        finally:
            feeder.join()
            os.close(read_fd)
        driver.remove("cut")


def _feed(fd: int, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError), open(fd, "wb") as pipe:
        pipe.write(data)


def layer_files_in(driver: Driver, layer_id: str) -> list[str]:
    return sorted(os.listdir(driver.get_layer_path(layer_id)))


# -- Diff errors ---------------------------------------------------------------------------------


def test_diff_errors_are_never_200(plugin: Plugin) -> None:
    plugin.init()
    reply = plugin.client.call("GraphDriver.Diff", {"ID": "ghost", "Parent": ""})
    assert reply.status == 500
    assert reply.json == {"Err": "lcowdriver: diff: ghost: layer does not exist"}
    reply = plugin.client.request("GraphDriver.Diff", b"{not json")
    assert reply.status == 400
    assert "malformed JSON" in reply.json["Err"]


def test_a_diff_failing_mid_stream_cuts_the_connection(tmp_path: Path, sock_dir: Path) -> None:
    running = Plugin(tmp_path, sock_dir).start(kind=FailingDiffDriver)
    try:
        running.init()
        running.client.ok("GraphDriver.Create", {"ID": "d"})
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            running.client.call("GraphDriver.Diff", {"ID": "d"})
        assert running.client.ok("GraphDriver.Exists", {"ID": "d"}) == {"Exists": True}
    finally:
        running.stop()


# -- HTTP-level errors ---------------------------------------------------------------------------


def test_http_errors_have_err_bodies(plugin: Plugin) -> None:
    client = plugin.client
    reply = client.call("GraphDriver.NoSuchCall")
    assert (reply.status, reply.json) == (404, {"Err": "unknown method 'GraphDriver.NoSuchCall'"})
    reply = client.request("Plugin.Activate", None, http_method="GET")
    assert reply.status == 405
    assert "use POST" in reply.json["Err"]
    reply = client.request("GraphDriver.Exists", b'{"ID": 12}')
    assert reply.status == 400
    assert reply.json == {"Err": "GraphDriver.Exists: field ID: expected a string, got a number"}
    reply = client.request("GraphDriver.Exists", b'{"ID": "' + b"a" * (2 << 20) + b'"}')
    assert reply.status == 413
    assert "Err" in reply.json


# -- hostile strings: ids, the log, Err ------------------------------------------------------------

# Ids the strict rule refuses (lcow.storage.dataroot.validate_id), hostile ones among them.
BAD_IDS = [
    "-lead", ".hidden", "a b", "a\nb", "x\x1b[31m", "é", "a" * 129, "x-removing", "cache",
    "mounts", "scratch", "a\\b", "a:b",
]  # fmt: skip
PARENT_METHODS = ["Create", "CreateReadWrite", "Diff", "Changes", "DiffSize"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_invalid_ids_and_parents_are_400(plugin: Plugin, bad: str) -> None:
    plugin.init()
    plugin.client.ok("GraphDriver.Create", {"ID": "good"})
    before = sorted(os.listdir(plugin.home))
    for method in ID_METHODS:
        reply = plugin.client.call(f"GraphDriver.{method}", {"ID": bad})
        assert reply.status == 400, (method, reply)
        assert reply.json["Err"].startswith(f"GraphDriver.{method}: ID: invalid layer id")
    for method in PARENT_METHODS:
        reply = plugin.client.call(f"GraphDriver.{method}", {"ID": "good", "Parent": bad})
        assert reply.status == 400, (method, reply)
        assert reply.json["Err"].startswith(f"GraphDriver.{method}: Parent: invalid layer id")
    data = b"\0" * 1024
    encoded = urllib.parse.quote(bad, safe="")
    for query in (f"id={encoded}&parent=", f"id=good&parent={encoded}"):
        reply = plugin.client.request(
            f"GraphDriver.ApplyDiff?{query}", iter([data]), encode_chunked=True
        )
        assert reply.status == 400, (query, reply)
        assert "invalid layer id" in reply.json["Err"]
        # The body was drained: the connection goes on.
        assert plugin.client.ok("GraphDriver.Exists", {"ID": "good"}) == {"Exists": True}
    assert sorted(os.listdir(plugin.home)) == before
    assert os.listdir(plugin.home / "good") == ["layerchain.json"]


def hostile_tar() -> bytes:
    """A tar whose one entry, named with a newline and terminal escapes, fails: a hard link to
    a missing target (the error names both)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tf:
        link = tarfile.TarInfo("evil\n2026-01-01 00:00:00,000 INFO [0-000001] FORGED\x1b[2J")
        link.type, link.linkname = tarfile.LNKTYPE, "missing\x07\r"
        tf.addfile(link)
    return buffer.getvalue()


def test_err_texts_are_printable_and_exact_json(plugin: Plugin) -> None:
    plugin.init()
    reply = plugin.client.call("GraphDriver.Exists", {"ID": "a\x1b]0;title\x07\nb"})
    assert reply.status == 400
    message = reply.json["Err"]
    assert message.isprintable() and "\\x1b]0;title\\x07\\nb'" in message
    assert reply.body == protocol_json({"Err": message})
    plugin.client.ok("GraphDriver.Create", {"ID": "tar"})
    reply = plugin.client.apply_diff("tar", "", hostile_tar())
    assert reply.status == 200
    assert reply.json == {
        "Err": "evil\\n2026-01-01 00:00:00,000 INFO [0-000001] FORGED\\x1b[2J: hard link "
        "target missing\\x07\\r not found"
    }
    # An unknown method is named as it came on the wire (percent-encoded, so printable).
    reply = plugin.client.request("GraphDriver.Foo%0aX%1b%5B31m", b"{}")
    assert (reply.status, reply.json) == (
        404,
        {"Err": "unknown method 'GraphDriver.Foo%0aX%1b%5B31m'"},
    )
    reply = plugin.client.call("GraphDriver.Init", {"Home": "rel\x1b[1m"})
    assert reply.json == {
        "Err": "lcow plugin: init: Home must be an absolute path, got 'rel\\x1b[1m'"
    }


def protocol_json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) \[")


def test_the_log_cannot_be_forged(tmp_path: Path, sock_dir: Path) -> None:
    socket_path, log = sock_dir / "log.sock", tmp_path / "plugin.log"
    proc = _serve(tmp_path / "state", socket_path, None, "--log-level", "debug", log=log)
    try:
        _wait_for(socket_path, proc)
        client = PluginClient(str(socket_path))
        client.ok("GraphDriver.Init", {"Home": str(tmp_path / "home")})
        forged = "%0a2026-01-01%2000:00:00,000%20INFO%20[0-000001]%20FORGED%1b[2J%07%0d"
        assert client.request(f"GraphDriver.Foo{forged}", b"{}").status == 404
        assert client.call("GraphDriver.Exists", {"ID": "a\nFORGED\x1b[31m"}).status == 400
        client.ok("GraphDriver.Create", {"ID": "tar"})
        assert "Err" in client.apply_diff("tar", "", hostile_tar()).json
        query = "id=tar&parent=%0aFORGED%1b[1m"
        reply = client.request(f"GraphDriver.ApplyDiff?{query}", iter([b"x"]), encode_chunked=True)
        assert reply.status == 400
        client.close()
        # Header values: a bad one is refused by the HTTP parser (which may log it).
        head = (
            "POST /GraphDriver.Status HTTP/1.1\r\nHost: plugin\r\n"
            "Content-Length: 2\x1b[31m\r\nX-Evil: \x1b]0;title\x07FORGED"
        )
        raw_request(str(socket_path), head, b"{}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    text = log.read_bytes()
    assert proc.returncode == 0, text[-3000:]
    for control in (b"\x1b", b"\x07", b"\r"):
        assert control not in text, text[-3000:]
    lines = text.decode().splitlines()
    assert stray_lines(lines) == []
    forgeries = [line for line in lines if "FORGED" in line]
    assert len(forgeries) >= 4, lines  # the path, the id, the tar entry, the query
    assert all(_LOG_LINE.match(line) or line.startswith("aiohttp.") for line in forgeries)
    assert all("\\n" in line.split("FORGED")[0] for line in forgeries), forgeries


def stray_lines(lines: list[str]) -> list[str]:
    """Lines that are neither a record's first line nor part of a traceback after it (frames,
    then one line for the exception: its text is escaped, so it cannot span lines)."""
    stray = []
    state = "record"
    for line in lines:
        if _LOG_LINE.match(line):
            state = "record"
        elif state == "record" and line == "Traceback (most recent call last):":
            state = "frames"
        elif state == "frames" and line.startswith("  "):
            pass
        elif state == "frames":
            state = "done"  # the exception's one line
        else:
            stray.append(line)
    return stray


# -- concurrency ---------------------------------------------------------------------------------


def test_concurrent_calls(host_plugin: Plugin, tmp_path: Path) -> None:
    client = host_plugin.client
    data = tar_bytes(tmp_path, base_entries())
    assert host_plugin.layer("shared", "", data) == 25
    # The same files again: each is a Modify (existing below), the equal directories are not.
    same_files_again = [{"Path": p, "Kind": 0} for p in ("/bin/sh", "/bin/tool", "/etc/hostname")]
    errors: list[str] = []
    gets = [0]
    lock = threading.Lock()

    def worker(n: int) -> None:
        own = PluginClient(str(host_plugin.socket))
        try:
            for round_ in range(4):
                layer = f"w{n}-{round_}"
                own.ok("GraphDriver.Create", {"ID": layer, "Parent": "shared"})
                if own.apply_diff(layer, "shared", data, chunk=512).json != {"Size": 25}:
                    errors.append(f"{layer}: ApplyDiff")
                own.ok("GraphDriver.Get", {"ID": "shared"})
                with lock:
                    gets[0] += 1
                changes = own.ok("GraphDriver.Changes", {"ID": layer, "Parent": "shared"})
                if changes["Changes"] != same_files_again:
                    errors.append(f"{layer}: {changes}")
                diff = own.call("GraphDriver.Diff", {"ID": layer, "Parent": "shared"})
                if diff.status != 200 or "bin/tool" not in tar_names(diff.body):
                    errors.append(f"{layer}: Diff {diff}")
                own.ok("GraphDriver.Put", {"ID": "shared"})
                own.ok("GraphDriver.Remove", {"ID": layer})
        except Exception as exc:  # collected, reported below
            errors.append(f"worker {n}: {type(exc).__name__}: {exc}")
        finally:
            own.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert gets[0] == 128
    assert host_plugin.driver.view_count("shared") == 0
    assert client.ok("GraphDriver.Status")["Status"][-1] == ["Layers", "1"]


def test_a_slow_upload_does_not_hold_up_other_calls(plugin: Plugin) -> None:
    plugin.init()
    plugin.client.ok("GraphDriver.Create", {"ID": "slow"})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(plugin.socket))
        sock.sendall(apply_diff_head("slow", extra="Content-Length: 1048576").encode()
                     + b"\r\n\r\n" + b"\0" * 512)  # fmt: skip
        started = time.monotonic()
        other = PluginClient(str(plugin.socket))
        assert other.ok("GraphDriver.Exists", {"ID": "slow"}) == {"Exists": True}
        other.close()
        assert time.monotonic() - started < 5
        sock.sendall(b"\0" * (1048576 - 512))
        sock.settimeout(30)
        answer = sock.recv(65536)
    assert b"HTTP/1.1 200" in answer


def partial_tar_head(size: int = 1 << 20) -> bytes:
    """A tar header announcing ``size`` bytes of a file, as the start of a body."""
    info = tarfile.TarInfo("big")
    info.size = size
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def stall_upload(path: Path, layer_id: str) -> socket.socket:
    """An ApplyDiff that sends its headers, a chunk header and part of the chunk, then stops."""
    start = b"1000\r\n" + partial_tar_head() + b"x" * 1000
    head = apply_diff_head(layer_id, extra="Transfer-Encoding: chunked")
    return stalled_request(str(path), head, start)


def stall_upload_in_slot(path: Path, layer_id: str, tmp: Path) -> socket.socket:
    """An ApplyDiff that sends more than PREFETCH of a real tar (so its conversion begins), then
    stops in the middle of a file."""
    data = tar_bytes(tmp, [TarEntry(f"f{i}", data=os.urandom(4000)) for i in range(100)])
    body = chunked(data[: PREFETCH + 65536])[: -len(b"0\r\n\r\n")]
    head = apply_diff_head(layer_id, extra="Transfer-Encoding: chunked")
    return stalled_request(str(path), head, body)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_stalled_uploads_never_hold_up_other_calls(tmp_path: Path, sock_dir: Path) -> None:
    idle = 2.0
    socket_path, home = sock_dir / "stall.sock", tmp_path / "home"
    log = tmp_path / "plugin.log"
    proc = _serve(tmp_path / "state", socket_path, None, "--idle-timeout", str(idle), log=log)
    stalled: dict[str, socket.socket] = {}
    try:
        _wait_for(socket_path, proc)
        client = PluginClient(str(socket_path), timeout=10)
        client.ok("GraphDriver.Init", {"Home": str(home)})
        ids = [f"stalled-{i}" for i in range(70)] + ["in-slot", "moving"]
        for layer_id in ids:
            client.ok("GraphDriver.Create", {"ID": layer_id})
        client.close()
        before = {i: sorted(os.listdir(home / i)) for i in ids}
        stalled = {i: stall_upload(socket_path, i) for i in ids[:70]}
        stalled["in-slot"] = stall_upload_in_slot(socket_path, "in-slot", tmp_path)
        # A slow upload that keeps moving: a piece every idle/2 seconds, longer than idle.
        data = tar_bytes(tmp_path, base_entries())
        pieces = [data[i : i + len(data) // 5 + 1] for i in range(0, len(data), len(data) // 5 + 1)]

        def slowly() -> Iterator[bytes]:
            for piece in pieces:
                time.sleep(idle / 2)
                yield piece

        moving: list[Any] = []

        def upload() -> None:
            slow = PluginClient(str(socket_path), timeout=30)
            try:
                moving.append(
                    slow.request(
                        "GraphDriver.ApplyDiff?id=moving&parent=", slowly(), encode_chunked=True
                    )
                )
            finally:
                slow.close()

        uploader = threading.Thread(target=upload)
        uploader.start()
        started = time.monotonic()
        latencies = []
        while time.monotonic() - started < idle * 2:
            begun = time.monotonic()
            other = PluginClient(str(socket_path), timeout=5)
            assert other.ok("GraphDriver.Exists", {"ID": "stalled-0"}) == {"Exists": True}
            assert other.ok("GraphDriver.Status")["Status"][0] == ["LCOW", ""]
            other.close()
            latencies.append(time.monotonic() - begun)
        uploader.join(60)
        assert moving and moving[0].status == 200 and moving[0].json == {"Size": 25}, moving
        # Each stalled upload fails after the idle timeout, naming its layer; nothing is left.
        for layer_id, sock in stalled.items():
            reply = read_reply(sock, idle + 10)
            assert reply.status == 408, (layer_id, reply)
            assert reply.json["Err"].startswith(f"lcowdriver: applydiff: {layer_id}: "), reply
            assert f"no data for {idle:g} s" in reply.json["Err"]
        for layer_id in ids[:-1]:
            assert sorted(os.listdir(home / layer_id)) == before[layer_id], layer_id
        peak = peak_rss_mib(proc.pid)
        print(f"70 stalled uploads: Exists+Status max {max(latencies) * 1000:.1f} ms, "
              f"median {sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms "
              f"over {len(latencies)} rounds; server peak RSS {peak:.0f} MiB")  # fmt: skip
        assert max(latencies) < 1.0, latencies
        assert peak < 150, peak
    finally:
        for sock in stalled.values():
            sock.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()


def test_sigterm_ends_stalled_uploads_within_the_shutdown_timeout(
    tmp_path: Path, sock_dir: Path
) -> None:
    socket_path, home = sock_dir / "term.sock", tmp_path / "home"
    log = tmp_path / "plugin.log"
    proc = _serve(tmp_path / "state", socket_path, None, "--shutdown-timeout", "2", log=log)
    stalled: list[socket.socket] = []
    try:
        _wait_for(socket_path, proc)
        client = PluginClient(str(socket_path), timeout=10)
        client.ok("GraphDriver.Init", {"Home": str(home)})
        for layer_id in ("in-slot", "waiting-1", "waiting-2"):
            client.ok("GraphDriver.Create", {"ID": layer_id})
        client.close()
        stalled.append(stall_upload_in_slot(socket_path, "in-slot", tmp_path))
        stalled += [stall_upload(socket_path, i) for i in ("waiting-1", "waiting-2")]
        time.sleep(1)  # the first one's conversion is running
        begun = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        elapsed = time.monotonic() - begun
    finally:
        for sock in stalled:
            sock.close()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert elapsed < 2 + 3, elapsed
    assert "Traceback" not in text and "never retrieved" not in text, text[-3000:]
    for layer_id in ("in-slot", "waiting-1", "waiting-2"):
        assert os.listdir(home / layer_id) == ["layerchain.json"], layer_id


def test_a_stalled_json_body_times_out(tmp_path: Path, sock_dir: Path) -> None:
    running = Plugin(tmp_path, sock_dir).start(idle_timeout=1.0)
    try:
        running.init()
        head = "POST /GraphDriver.Create HTTP/1.1\r\nHost: plugin\r\nContent-Length: 100"
        with stalled_request(str(running.socket), head, b'{"ID": "hal') as sock:
            reply = read_reply(sock, 10)
        assert reply.status == 408
        assert reply.json == {
            "Err": "GraphDriver.Create: request body incomplete: no data for 1 s after 11 bytes"
        }
        assert not (running.home / "hal").exists()
    finally:
        running.stop()


def test_a_diff_client_that_takes_nothing_is_cut_off(tmp_path: Path, sock_dir: Path) -> None:
    running = Plugin(tmp_path, sock_dir).start(idle_timeout=1.0)
    try:
        running.init()
        big = tar_bytes(tmp_path, [TarEntry("blob", data=os.urandom(16 << 20))])
        running.layer("big", "", big)
        head = "POST /GraphDriver.Diff HTTP/1.1\r\nHost: plugin\r\nContent-Length: 14"
        with stalled_request(str(running.socket), head, b'{"ID": "big"}\n') as sock:
            time.sleep(4)  # takes nothing meanwhile; the server gives up after 1 s
            sock.settimeout(10)
            received = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(1 << 20):
                    received += len(chunk)
        assert received < len(big)  # cut off, not finished
        assert running.client.ok("GraphDriver.Exists", {"ID": "big"}) == {"Exists": True}
    finally:
        running.stop()


def test_a_slow_diff_client_that_keeps_reading_gets_it_all(tmp_path: Path, sock_dir: Path) -> None:
    running = Plugin(tmp_path, sock_dir).start(idle_timeout=2.0)
    try:
        running.init()
        running.layer("slow", "", tar_bytes(tmp_path, [TarEntry("b", data=b"s" * (512 << 10))]))
        head = "POST /GraphDriver.Diff HTTP/1.1\r\nHost: plugin\r\nContent-Length: 14"
        with stalled_request(str(running.socket), head, b'{"ID":"slow"}\n') as sock:
            sock.settimeout(10)
            data = b""
            # ~160 KB/s: a unix socket turns writable again only once its queue is down to a
            # quarter, so the server sees progress about every second, within its 2 s.
            while not data.endswith(b"\r\n0\r\n\r\n") and (chunk := sock.recv(64 << 10)):
                data += chunk
                time.sleep(0.4)
        head_end = data.index(b"\r\n\r\n") + 4
        assert data.startswith(b"HTTP/1.1 200")
        assert tar_names(dechunk(data[head_end:])) == ["b"]
    finally:
        running.stop()


def dechunk(body: bytes) -> bytes:
    """An HTTP/1.1 chunked body's payload."""
    out = bytearray()
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(out)
        out += body[:size]
        body = body[size + 2 :]


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


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the plugin did not create its socket"
        time.sleep(0.05)


def _serve(
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


def test_the_command_serves_until_sigterm(tmp_path: Path, sock_dir: Path) -> None:
    socket_path = sock_dir / "cli.sock"
    state = tmp_path / "state"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # systemd's Type=notify socket
    notify.bind(str(sock_dir / "notify"))
    notify.settimeout(30)
    proc = _serve(state, socket_path, {"NOTIFY_SOCKET": str(sock_dir / "notify")})
    try:
        assert notify.recv(4096) == b"READY=1"
        _wait_for(socket_path, proc)
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
    proc = _serve(state, socket_path)
    try:
        _wait_for(socket_path, proc)
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
