"""The content-store fast path with a real containerd: pulls as CRI does them.

``tests/containerd/gopull`` pulls with ``client.Pull`` + ``WithPullUnpack`` + CRI's image
handler, so each Prepare carries the layer's chain ID (``containerd.io/snapshot.ref``) and blob
digest (``containerd.io/snapshot/cri.layer-digest``); ``lcow snapshotter serve
--containerd-address`` then converts the blob it reads from containerd's content store. The
layers are judged by ``e2fsck``, the union by what a ``ctr run`` container lists, the fast path
by the snapshotter's log and the label it sets, the end by ``ctr images rm --sync``.

Prepares sent straight to the snapshotter's socket (as containerd would send them) cover what a
pull cannot: a blob that is not the labelled layer, a blob that is no layer, a blob that is not
there, hostile labels and keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from lcow.graphdriver.driver import Driver
from lcow.snapshots._proto import snapshots_pb2 as pb
from lcow.snapshots._proto import snapshots_pb2_grpc
from lcow.storage.dataroot import LAYER_VHD, SANDBOX_VHDX, DataRoot
from tests.containerd.daemons import Containerd, ProxyContainerdFactory, short_dir
from tests.containerd.images import LIST_SCRIPT, PushedImage
from tests.containerd.pullprog import build_gopull
from tests.containerd.test_lcow_snapshotter import Snapshotter
from tests.helpers import assert_e2fsck_clean, ensure, host_leftovers, requires, settled_mounts

pytestmark = [
    requires("root", "containerd", "registry", "busybox", "host", "e2fsck", "go"),
    pytest.mark.timeout(900),
]

SNAPSHOTTER = "lcow"
TARGET = "containerd.io/snapshot.ref"
LAYER_DIGEST = "containerd.io/snapshot/cri.layer-digest"
FAST_LABEL = "lcow.fastpath.blob"
FAST_LINE = "fast path: committed"
COMMIT_LINE = ": committed as "


@pytest.fixture(scope="session")
def gopull(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CRI-style pull program, built once per session (or kept in $XDG_CACHE_HOME)."""
    ensure("go")
    cache = os.environ.get("XDG_CACHE_HOME")
    out = Path(cache) / "lcow-tests" if cache else tmp_path_factory.mktemp("gopull")
    try:
        return build_gopull(out)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"building gopull failed:\n{exc.stdout}\n{exc.stderr}", pytrace=False)


class FastPath:
    """A fast-path snapshotter and the containerd it reads blobs from."""

    def __init__(self, snapshotter: Snapshotter, daemon: Containerd) -> None:
        self.snapshotter, self.daemon = snapshotter, daemon

    def log(self) -> str:
        return self.snapshotter.log.read_text(errors="replace")

    def fast(self) -> int:
        return self.log().count(FAST_LINE)

    def commits(self) -> int:
        return self.log().count(COMMIT_LINE)

    def pull(self, gopull: Path, reference: str) -> None:
        daemon = self.daemon
        argv = [str(gopull), "-address", str(daemon.address), "-plain-http",
                "-namespace", daemon.namespace, "-snapshotter", SNAPSHOTTER, reference]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, f"{done.stderr}\n{self.daemon.log()[-3000:]}"

    def folders(self) -> list[Path]:
        root = self.snapshotter.root
        return sorted(  # not a removed layer's folder, still being deleted
            p for p in root.iterdir()
            if p.is_dir() and p.name.startswith("sn") and not p.name.endswith("-removing")
        )  # fmt: skip

    def snapshot_labels(self, key: str) -> dict[str, str]:
        out = self.daemon.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "info", key).stdout
        return dict(json.loads(out).get("Labels") or {})

    def snapshot_keys(self) -> list[str]:
        out = self.daemon.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout
        return [line.split()[0] for line in out.splitlines()[1:]]

    def stub(self) -> snapshots_pb2_grpc.SnapshotsStub:
        channel = grpc.insecure_channel(f"unix:{self.snapshotter.socket}")
        return snapshots_pb2_grpc.SnapshotsStub(channel)  # type: ignore[no-untyped-call]


@pytest.fixture
def fast_path(tmp_path: Path, containerd_with_proxy: ProxyContainerdFactory) -> Iterator[FastPath]:
    """The snapshotter first (stopped last), then containerd; the snapshotter's
    ``--containerd-address`` is a symlink made once containerd's socket is known."""
    sock_dir = short_dir("lcowf-")
    link = sock_dir / "cd.sock"
    running = Snapshotter(tmp_path / "root", sock_dir / "lcow.sock", tmp_path / "lcow.log",
                          extra=["--containerd-address", str(link)])  # fmt: skip
    running.start()
    try:
        daemon = containerd_with_proxy(running.socket)
        link.symlink_to(daemon.address)
        yield FastPath(running, daemon)
        daemon.close()
    finally:
        status = running.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
        Driver(running.root, ["lcow.backend=host"]).cleanup()
        assert host_leftovers(tmp_path) == []
        assert status == 0, running.log.read_text()[-3000:]
        assert "\x1b" not in running.log.read_text()


def _check_layers(fp: FastPath, image: PushedImage) -> None:
    """Every layer is a committed, e2fsck-clean layer.vhd whose recorded diff ID is one of
    the image's; a container sees the image's union."""
    layers = image.image.layers
    folders = fp.folders()
    assert len(folders) == len(layers)
    diff_ids = set()
    for folder in folders:
        assert not (folder / SANDBOX_VHDX).exists(), folder
        assert_e2fsck_clean(folder / LAYER_VHD)
        meta = DataRoot(fp.snapshotter.root).read_meta(folder.name)
        if "diff_id" in meta:  # recorded by the fast path
            diff_ids.add(meta["diff_id"])
    assert diff_ids <= {layer.diff_id for layer in layers}
    out = fp.daemon.ctr("run", "--rm", "--snapshotter", SNAPSHOTTER, image.reference, "c1",
                        "sh", "-c", LIST_SCRIPT).stdout  # fmt: skip
    assert sorted(out.splitlines()) == image.listing


def _rm_frees_everything(fp: FastPath, image: PushedImage) -> None:
    fp.daemon.ctr("images", "rm", "--sync", image.reference)
    assert fp.snapshot_keys() == []
    assert fp.folders() == []
    assert settled_mounts(fp.snapshotter.root / "mounts") == []


def test_prefetched_blobs_all_take_the_fast_path(
    fast_path: FastPath, gopull: Path, pushed_image: PushedImage
) -> None:
    fast_path.daemon.ctr("content", "fetch", "--plain-http", pushed_image.reference)
    fast_path.pull(gopull, pushed_image.reference)
    layers = pushed_image.image.layers
    assert fast_path.fast() == len(layers), fast_path.log()[-4000:]
    assert fast_path.commits() == 0  # no layer went through the differ and Commit
    blobs = {fast_path.snapshot_labels(key).get(FAST_LABEL) for key in fast_path.snapshot_keys()}
    assert blobs == {layer.digest for layer in layers}
    _check_layers(fast_path, pushed_image)
    _rm_frees_everything(fast_path, pushed_image)


def test_a_fresh_cri_pull_takes_the_fast_path_where_the_blob_is_being_fetched(
    fast_path: FastPath, gopull: Path, pushed_image: PushedImage
) -> None:
    fast_path.pull(gopull, pushed_image.reference)
    layers = len(pushed_image.image.layers)
    log = fast_path.log()
    # The base layer's fetch starts only after its Prepare returned: the ordinary path.
    assert "is neither in the content store nor being fetched" in log, log[-4000:]
    assert fast_path.commits() >= 1
    assert fast_path.fast() + fast_path.commits() == layers, log[-4000:]
    _check_layers(fast_path, pushed_image)
    _rm_frees_everything(fast_path, pushed_image)


def _prepare(
    stub: snapshots_pb2_grpc.SnapshotsStub, key: str, labels: dict[str, str], parent: str = ""
) -> pb.PrepareSnapshotResponse:
    response = stub.Prepare(pb.PrepareSnapshotRequest(key=key, parent=parent, labels=labels))
    assert isinstance(response, pb.PrepareSnapshotResponse)  # the generated stub is untyped
    return response


def test_blobs_that_are_not_the_layer_fall_back_and_hostile_labels_are_refused(
    fast_path: FastPath, pushed_image: PushedImage
) -> None:
    daemon = fast_path.daemon
    daemon.ctr("content", "fetch", "--plain-http", pushed_image.reference)
    garbage = "not a gzip stream, not a tar\n" * 100
    garbage_digest = "sha256:" + hashlib.sha256(garbage.encode()).hexdigest()
    daemon.ctr("content", "ingest", "garbage-blob", input=garbage)
    base = pushed_image.image.layers[0]
    ns = daemon.namespace
    stub = fast_path.stub()

    # The blob is there, but its tar is not the target layer: discarded, the ordinary path.
    wrong = _prepare(stub, f"{ns}/9001/wrong", {TARGET: "sha256:" + "0" * 64, LAYER_DIGEST:
                                                base.digest})  # fmt: skip
    assert [m.type for m in wrong.mounts] == ["bind"]
    assert "not the target sha256:" + "0" * 64 in fast_path.log()
    # A blob that is not a layer at all, and a blob not in the store: the ordinary path.
    for name, blob in (("garbage", garbage_digest),
                       ("missing", "sha256:" + hashlib.sha256(b"absent").hexdigest())):  # fmt: skip
        got = _prepare(stub, f"{ns}/9002/{name}", {TARGET: garbage_digest, LAYER_DIGEST: blob})
        assert [m.type for m in got.mounts] == ["bind"], name
    assert "neither in the content store nor being fetched" in fast_path.log()
    for key in ("wrong", "garbage", "missing"):
        stub.Remove(pb.RemoveSnapshotRequest(key=f"{ns}/{9001 if key == 'wrong' else 9002}/{key}"))
    assert fast_path.folders() == []  # the discarded conversions left no folder

    # Hostile labels and keys: clean errors naming what is wrong.
    hostile = [
        (f"{ns}/1/a", {TARGET: "not-a-digest", LAYER_DIGEST: base.digest}, TARGET),
        (f"{ns}/1/b", {TARGET: base.diff_id, LAYER_DIGEST: "sha256:XYZ"}, LAYER_DIGEST),
        ("bad ns!/1/c", {TARGET: base.diff_id, LAYER_DIGEST: base.digest}, "namespace"),
        (f"{ns}/1/d", {TARGET: base.diff_id, LAYER_DIGEST: "sha256:" + "1" * 63 + "\x1b"},
         LAYER_DIGEST),
    ]  # fmt: skip
    for key, labels, named in hostile:
        with pytest.raises(grpc.RpcError) as caught:
            _prepare(stub, key, labels)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, key
        assert named in (caught.value.details() or ""), key
        assert "\x1b" not in (caught.value.details() or "")

    # The right blob for the target: converted, committed, answered AlreadyExists; containerd's
    # own lookup (a List with its filter) finds it committed with the labels.
    with pytest.raises(grpc.RpcError) as caught:
        _prepare(stub, f"{ns}/9003/right", {TARGET: base.diff_id, LAYER_DIGEST: base.digest})
    assert caught.value.code() is grpc.StatusCode.ALREADY_EXISTS
    flt = f'labels."{TARGET}"=={base.diff_id},parent==""'
    found = [i for r in stub.List(pb.ListSnapshotsRequest(filters=[flt])) for i in r.info]
    assert [(i.kind, i.labels[FAST_LABEL]) for i in found] == [(pb.COMMITTED, base.digest)]
    (folder,) = fast_path.folders()
    assert_e2fsck_clean(folder / LAYER_VHD)
    # Asked again: the same snapshot, no second conversion.
    with pytest.raises(grpc.RpcError) as again:
        _prepare(stub, f"{ns}/9004/again", {TARGET: base.diff_id, LAYER_DIGEST: base.digest})
    assert again.value.code() is grpc.StatusCode.ALREADY_EXISTS
    assert fast_path.fast() == 1 and len(fast_path.folders()) == 1
    stub.Remove(pb.RemoveSnapshotRequest(key=found[0].name))
    assert fast_path.folders() == []
