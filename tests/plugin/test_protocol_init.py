"""The graph-driver plugin protocol through a real unix socket: the handshake, Init and Capabilities
(SPEC §9.1, §9.2).

A :class:`BackgroundServer` serves on a socket in a short temporary directory; the client
speaks as dockerd does. Answers are compared byte for byte where the daemon parses them.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.plugin.harness import ID_METHODS, Plugin

pytestmark = pytest.mark.timeout(120)

JSON_TYPE = "application/vnd.docker.plugins.v1+json"


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
