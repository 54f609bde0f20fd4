"""The graph-driver plugin protocol through a real unix socket: the layer calls, Get and Put,
and Diff's errors (SPEC §9.3, §9.4).

The default driver runs the userspace backend (no root); Get's success path runs the real host
backend (root). Answers are compared byte for byte where the daemon parses them.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest

from tests.plugin.fakes import FailingDiffDriver
from tests.plugin.harness import (
    Plugin,
    base_entries,
    layer_files,
    tar_bytes,
    tar_names,
    upper_entries,
)

pytestmark = pytest.mark.timeout(120)

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
