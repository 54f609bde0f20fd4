"""The graph-driver plugin protocol through a real unix socket: HTTP-level errors and hostile
strings (ids, Err texts, the log) (SPEC §9.1, §9.7).
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import tarfile
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tests.plugin.client import PluginClient, raw_request
from tests.plugin.harness import ID_METHODS, Plugin, serve_command, wait_for_socket

pytestmark = pytest.mark.timeout(120)

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
    proc = serve_command(tmp_path / "state", socket_path, None, "--log-level", "debug", log=log)
    try:
        wait_for_socket(socket_path, proc)
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
