"""``lcow snapshotter serve`` as a real process, driven with the generated gRPC client stubs.

What containerd's proxy client sends: Prepare/Mounts/Commit/Stat/List/Usage/Update/View/
Remove/Cleanup, the error codes errdefs reads back, malformed requests, and a server killed
and restarted under held mounts. Every test stops the server by PID and leaves nothing mounted.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from lcow.graphdriver.driver import Driver
from lcow.snapshots._proto import snapshots_pb2 as pb
from lcow.snapshots._proto import snapshots_pb2_grpc
from lcow.storage.dataroot import LAYER_VHD
from tests.helpers import assert_e2fsck_clean, host_leftovers, requires

pytestmark = requires("host", "mke2fs", "e2fsck")

_START_TIMEOUT = 30.0


class Server:
    """One ``lcow snapshotter serve`` process and a client channel to it."""

    def __init__(self, root: Path, sock: Path, log: Path) -> None:
        self.root, self.sock, self.log = root, sock, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None

    def start(self) -> snapshots_pb2_grpc.SnapshotsStub:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lcow", "--root", str(self.root), "--backend", "host",
                 "snapshotter", "serve", "--address", str(self.sock)],
                stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + _START_TIMEOUT
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the snapshotter did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        self.channel = grpc.insecure_channel(f"unix:{self.sock}")
        grpc.channel_ready_future(self.channel).result(timeout=_START_TIMEOUT)
        return snapshots_pb2_grpc.SnapshotsStub(self.channel)  # type: ignore[no-untyped-call]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        status = self.proc.wait(timeout=60)
        self.proc = None
        return status


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    sock_dir = Path(tempfile.mkdtemp(prefix="lcows-", dir="/tmp"))  # socket paths are short
    running = Server(tmp_path / "root", sock_dir / "s.sock", tmp_path / "server.log")
    try:
        yield running
    finally:
        if running.proc is not None:
            running.stop(signal.SIGKILL)
        shutil.rmtree(sock_dir, ignore_errors=True)
        if running.root.exists():
            Driver(running.root, ["lcow.backend=host"]).cleanup()
        assert host_leftovers(tmp_path) == []


def _code(call: Callable[[Message], object], request: Message) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call(request)
    error = caught.value
    details = error.details()
    assert details is not None, (request, error.code())  # every refusal says why
    return error.code(), details


def _list(stub: snapshots_pb2_grpc.SnapshotsStub, *filters: str) -> list[pb.Info]:
    return [i for r in stub.List(pb.ListSnapshotsRequest(filters=list(filters))) for i in r.info]


def test_the_calls_containerd_makes_for_a_pull_and_a_run(server: Server) -> None:
    stub = server.start()
    assert stat.S_IMODE(os.stat(server.sock).st_mode) == 0o600  # only root may call it
    ref = {"containerd.io/snapshot.ref": "sha256:base"}
    mounts = stub.Prepare(pb.PrepareSnapshotRequest(key="default/1/extract-1", labels=ref)).mounts
    assert [(m.type, list(m.options)) for m in mounts] == [("bind", ["rbind", "rw"])]
    src = Path(mounts[0].source)
    (src / "etc").mkdir()
    (src / "etc/os").write_text("lcow\n")
    assert stub.Mounts(pb.MountsRequest(key="default/1/extract-1")).mounts == mounts
    info = stub.Stat(pb.StatSnapshotRequest(key="default/1/extract-1")).info
    assert (info.kind, dict(info.labels)) == (pb.ACTIVE, ref)
    assert info.created_at.ToNanoseconds() > 0

    stub.Commit(pb.CommitSnapshotRequest(name="default/2/sha256:base", key="default/1/extract-1",
                                         labels=ref))  # fmt: skip
    base = stub.Stat(pb.StatSnapshotRequest(key="default/2/sha256:base")).info
    assert (base.kind, base.parent) == (pb.COMMITTED, "")
    layers = [p for p in server.root.iterdir() if (p / LAYER_VHD).exists()]
    assert len(layers) == 1
    assert_e2fsck_clean(layers[0] / LAYER_VHD)
    usage = stub.Usage(pb.UsageRequest(key="default/2/sha256:base"))
    assert (usage.size, usage.inodes) == (5, 3)

    run = stub.Prepare(pb.PrepareSnapshotRequest(key="default/3/ctr", parent=base.name)).mounts
    rootfs = Path(run[0].source)
    assert (rootfs / "etc/os").read_text() == "lcow\n"
    (rootfs / "written").write_text("by the container\n")
    view = stub.View(pb.ViewSnapshotRequest(key="default/4/view", parent=base.name)).mounts
    assert list(view[0].options) == ["rbind", "ro"]
    assert sorted(os.listdir(view[0].source)) == ["etc"]

    assert {i.name for i in _list(stub)} == {base.name, "default/3/ctr", "default/4/view"}
    assert [i.name for i in _list(stub, "kind==view", "kind==committed")] == [
        base.name, "default/4/view"
    ]  # fmt: skip
    assert [i.name for i in _list(stub, f"parent=={base.name},kind==active")] == ["default/3/ctr"]
    assert [i.name for i in _list(stub, 'labels."containerd.io/snapshot.ref"')] == [base.name]

    updated = stub.Update(pb.UpdateSnapshotRequest(
        info=pb.Info(name=base.name, labels={"containerd.io/gc.root": "x", "other": "y"}),
        update_mask=field_mask_pb2.FieldMask(paths=["labels.containerd.io/gc.root"]),
    )).info  # fmt: skip
    assert dict(updated.labels) == {**ref, "containerd.io/gc.root": "x"}
    assert updated.updated_at.ToNanoseconds() >= updated.created_at.ToNanoseconds()

    for key in ("default/4/view", "default/3/ctr", base.name):
        stub.Remove(pb.RemoveSnapshotRequest(key=key))
    stub.Cleanup(pb.CleanupRequest())
    assert _list(stub) == []
    left = sorted(p.name for p in server.root.iterdir() if not p.name.startswith("."))
    assert left == ["cache", "mounts", "scratch"]
    assert server.stop() == 0
    assert not server.sock.exists()


def test_errors_reach_the_client_as_errdefs_codes(server: Server) -> None:
    stub = server.start()
    src = stub.Prepare(pb.PrepareSnapshotRequest(key="k/1/a")).mounts[0].source
    Path(src, "f").write_text("f")
    stub.Commit(pb.CommitSnapshotRequest(name="k/2/base", key="k/1/a"))
    stub.Prepare(pb.PrepareSnapshotRequest(key="k/3/active", parent="k/2/base"))
    stub.View(pb.ViewSnapshotRequest(key="k/4/view", parent="k/2/base"))
    not_found = grpc.StatusCode.NOT_FOUND
    for call, request in [
        (stub.Stat, pb.StatSnapshotRequest(key="k/9/unknown")),
        (stub.Mounts, pb.MountsRequest(key="k/9/unknown")),
        (stub.Remove, pb.RemoveSnapshotRequest(key="k/9/unknown")),
        (stub.Usage, pb.UsageRequest(key="k/9/unknown")),
        (stub.Commit, pb.CommitSnapshotRequest(name="k/9/n", key="k/9/unknown")),
        (stub.Update, pb.UpdateSnapshotRequest(info=pb.Info(name="k/9/unknown"))),
        (stub.Prepare, pb.PrepareSnapshotRequest(key="k/5/x", parent="k/9/unknown")),
    ]:
        code, details = _code(call, request)
        assert code is not_found and "k/9/unknown" in details, (call, details)
    cases = [
        (stub.Prepare, pb.PrepareSnapshotRequest(key="k/3/active"), "ALREADY_EXISTS"),
        (stub.Commit, pb.CommitSnapshotRequest(name="k/2/base", key="k/3/active"),
         "ALREADY_EXISTS"),
        (stub.Commit, pb.CommitSnapshotRequest(name="k/6/c", key="k/4/view"),
         "FAILED_PRECONDITION"),
        (stub.Commit, pb.CommitSnapshotRequest(name="k/6/c", key="k/2/base"),
         "FAILED_PRECONDITION"),
        (stub.Remove, pb.RemoveSnapshotRequest(key="k/2/base"), "FAILED_PRECONDITION"),
        (stub.Mounts, pb.MountsRequest(key="k/2/base"), "FAILED_PRECONDITION"),
        (stub.Prepare, pb.PrepareSnapshotRequest(key="k/5/x", parent="k/3/active"),
         "INVALID_ARGUMENT"),
        (stub.Prepare, pb.PrepareSnapshotRequest(key=""), "INVALID_ARGUMENT"),
        (stub.Stat, pb.StatSnapshotRequest(key=""), "INVALID_ARGUMENT"),
        (stub.Update, pb.UpdateSnapshotRequest(
            info=pb.Info(name="k/2/base"), update_mask=field_mask_pb2.FieldMask(paths=["kind"])),
         "INVALID_ARGUMENT"),
        (stub.Prepare, pb.PrepareSnapshotRequest(key="k/7/many",
                                                 labels={f"l{i}": "v" for i in range(300)}),
         "INVALID_ARGUMENT"),
    ]  # fmt: skip
    for call, request, name in cases:
        code, details = _code(call, request)
        assert code.name == name, (request, code, details)
    with pytest.raises(grpc.RpcError) as caught:
        _list(stub, "name~=.*")
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    # hostile labels: refused, the message escaped, nothing left behind
    hostile = {"\x1b]0;owned\x07\nlcow: ok": "v" * 5000}
    code, details = _code(stub.Prepare, pb.PrepareSnapshotRequest(key="k/8/h", labels=hostile))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "\x1b" not in details and "\n" not in details and "\\x1b]0;owned" in details
    assert "\x1b" not in server.log.read_text()
    # bytes that are no PrepareSnapshotRequest at all: refused, and the server carries on
    assert server.channel is not None
    raw = server.channel.unary_unary(  # no (de)serializers: raw bytes both ways
        "/containerd.services.snapshots.v1.Snapshots/Prepare",
        request_serializer=None,
        response_deserializer=None,
    )
    with pytest.raises(grpc.RpcError) as caught:
        raw(b"\xff\xff\xff\xff\x0f garbage")
    assert caught.value.code() is not grpc.StatusCode.OK
    assert {i.name for i in _list(stub)} == {"k/2/base", "k/3/active", "k/4/view"}
    stub.Cleanup(pb.CleanupRequest())
    assert len([p for p in server.root.iterdir() if p.name.startswith("sn")]) == 3
    assert server.stop() == 0


def test_a_killed_snapshotter_restarts_with_every_mount(server: Server) -> None:
    stub = server.start()
    src = stub.Prepare(pb.PrepareSnapshotRequest(key="r/1/a")).mounts[0].source
    Path(src, "f").write_text("base\n")
    stub.Commit(pb.CommitSnapshotRequest(name="r/2/base", key="r/1/a"))
    mounts = stub.Prepare(pb.PrepareSnapshotRequest(key="r/3/ctr", parent="r/2/base")).mounts
    rootfs = Path(mounts[0].source)
    (rootfs / "written").write_text("before the kill\n")
    with open(rootfs / "f") as held:  # a running container's open file
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        stub = server.start()
        assert stub.Mounts(pb.MountsRequest(key="r/3/ctr")).mounts == mounts
        assert held.read() == "base\n"
        assert (rootfs / "written").read_text() == "before the kill\n"
    stub.Commit(pb.CommitSnapshotRequest(name="r/4/top", key="r/3/ctr"))
    assert stub.Usage(pb.UsageRequest(key="r/4/top")).size == len("before the kill\n")
    for key in ("r/4/top", "r/2/base"):
        stub.Remove(pb.RemoveSnapshotRequest(key=key))
    assert server.stop() == 0
