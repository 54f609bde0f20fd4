"""The graph-driver plugin protocol through a real unix socket: ApplyDiff's streamed body
(SPEC §9.3, §9.5): chunked with an unescaped query, answered only after the whole body,
drained when the call fails, and never a layer from a truncated body.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import select
import socket
import tarfile
import threading
import time
from pathlib import Path

import pytest

from lcow.graphdriver.driver import Driver
from lcow.plugin.handlers import PREFETCH
from lcow.plugin.streams import poison
from tests.helpers import TarEntry
from tests.plugin.client import chunked, raw_request
from tests.plugin.fakes import RecordingDriver
from tests.plugin.harness import Plugin, apply_diff_head, base_entries, layer_files, tar_bytes

pytestmark = pytest.mark.timeout(120)

# -- ApplyDiff streaming -------------------------------------------------------------------------


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
