"""Staged unpacks with a real containerd: stock ``ctr images pull`` and its extract keys.

``ctr images pull`` names no layer in its Prepares; ``lcow snapshotter serve
--containerd-address`` finds the layer's blob from the manifest and config labels in
containerd's content store and converts it while the differ unpacks, then commits that layer
instead of exporting the sandbox. Judged by the snapshotter's log and the blob label it sets,
``e2fsck``, what a container lists, the layers' content against the ordinary Commit's (the
driver's own export of both), and nothing left mounted or attached after a kill and Cleanup.
Prepare/Commit sent straight to the socket (as containerd's unpacker sends them, the tar
written into the mount by GNU tar) cover the fallbacks: a manifest label naming a missing blob
or another layer's blob.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import signal
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lcow.graphdriver.driver import Driver
from lcow.snapshots._proto import snapshots_pb2 as pb
from lcow.storage.dataroot import LAYER_VHD
from tests.containerd.daemons import ProxyContainerdFactory, short_dir
from tests.containerd.images import LIST_SCRIPT, PushedImage
from tests.containerd.test_fastpath import (
    FAST_LABEL,
    SNAPSHOTTER,
    FastPath,
    _check_layers,
    _rm_frees_everything,
    fast_path,
)
from tests.containerd.test_lcow_snapshotter import Snapshotter
from tests.helpers import assert_e2fsck_clean, host_leftovers, requires, settled_mounts

pytestmark = [
    requires("root", "containerd", "registry", "busybox", "host", "e2fsck"),
    pytest.mark.timeout(900),
]

__all__ = ["fast_path"]  # the fixture, imported for these tests

STAGED_LINE = "from its staged layer"
LAYER_REF = "containerd.io/gc.ref.content.l."


def _wait(what: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _ordinary_commits(fp: FastPath) -> int:
    """Commits that exported the sandbox (the snapshotter's line ends ``(layer ID)``)."""
    return sum(
        1 for line in fp.log().splitlines()
        if ": committed as " in line and STAGED_LINE not in line
    )  # fmt: skip


def test_ctr_images_pull_commits_every_layer_from_its_blob(
    fast_path: FastPath, pushed_image: PushedImage
) -> None:
    fast_path.daemon.ctr("images", "pull", "--plain-http", "--snapshotter", SNAPSHOTTER,
                         pushed_image.reference)  # fmt: skip
    layers = pushed_image.image.layers
    log = fast_path.log()
    assert log.count(STAGED_LINE) == len(layers), log[-4000:]
    assert _ordinary_commits(fast_path) == 0
    blobs = {fast_path.snapshot_labels(key).get(FAST_LABEL) for key in fast_path.snapshot_keys()}
    assert blobs == {layer.digest for layer in layers}
    # The sandboxes the differ wrote are torn down in the background, their ext4 shut down
    # rather than written back.
    _wait(lambda: len(fast_path.folders()) == len(layers))
    log = fast_path.log()
    assert log.count("sandbox shut down, not written back") == len(layers), log[-4000:]
    assert "WARNING" not in log
    _check_layers(fast_path, pushed_image)
    _rm_frees_everything(fast_path, pushed_image)


# -- Prepare / Commit as containerd's unpacker sends them ------------------------------------


def _base_tar(image: PushedImage) -> bytes:
    base = image.image.layers[0]
    blob = image.image.layout / "blobs" / "sha256" / base.digest.removeprefix("sha256:")
    return gzip.decompress(blob.read_bytes())


def _unpack(fp: FastPath, n: int, image: PushedImage) -> str:
    """Prepare an extract key for the base layer, untar it into the mount, Commit; the layer
    folder of the committed snapshot."""
    ns, base = fp.daemon.namespace, image.image.layers[0]
    key, name = f"{ns}/{n}/extract-{n}-test {base.diff_id}", f"{ns}/{n + 1}/{base.diff_id}"
    stub = fp.stub()
    reply = stub.Prepare(pb.PrepareSnapshotRequest(key=key, parent=""))
    (mount,) = reply.mounts
    with tarfile.open(fileobj=io.BytesIO(_base_tar(image))) as tar:  # times, owners, modes
        tar.extractall(mount.source, numeric_owner=True, filter="fully_trusted")
        for member in tar:  # tarfile leaves symlinks' own times; containerd's differ sets them
            if member.issym():
                path = os.path.join(mount.source, member.name)
                os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
    stub.Commit(pb.CommitSnapshotRequest(name=name, key=key))
    info = stub.Stat(pb.StatSnapshotRequest(key=name)).info
    assert info.kind == pb.COMMITTED
    return _folder_of(fp, name, {folder.name for folder in fp.folders()})


def _folder_of(fp: FastPath, name: str, folders: set[str]) -> str:
    """The layer id of the committed snapshot ``name`` (from the snapshotter's log)."""
    for line in reversed(fp.log().splitlines()):
        if f": committed as {name} " in line:
            layer = line.rsplit("layer ", 1)[1].split()[0].rstrip(")")
            assert layer in folders, (layer, folders)
            return layer
    raise AssertionError(f"{name}: no commit line in the log")


def _tree(root: Path, layer_id: str) -> list[tuple[object, ...]]:
    """The layer's content as the driver exports it: every member's metadata and data hash."""
    driver = Driver(root, ["lcow.backend=host"])
    with driver.diff(layer_id, None) as stream:
        data = stream.read()
    rows = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            body = tar.extractfile(m).read() if m.isfile() else b""  # type: ignore[union-attr]
            rows.append((m.name, m.type, m.mode, m.uid, m.gid, m.mtime, m.linkname,
                         m.size, hashlib.sha256(body).hexdigest(),
                         sorted(m.pax_headers.items())))  # fmt: skip
    return sorted(rows)


def _labels(fp: FastPath, key: str) -> dict[str, str]:
    return dict(fp.stub().Stat(pb.StatSnapshotRequest(key=key)).info.labels)


def _label_manifest(fp: FastPath, image: PushedImage, value: str) -> None:
    fp.daemon.ctr("content", "label", image.image.manifest_digest, f"{LAYER_REF}0={value}")


def test_the_staged_layer_equals_the_ordinary_commit_and_bad_labels_fall_back(
    fast_path: FastPath, pushed_image: PushedImage
) -> None:
    daemon, image = fast_path.daemon, pushed_image
    daemon.ctr("content", "fetch", "--plain-http", image.reference)
    root = fast_path.snapshotter.root
    base, other = image.image.layers[0], image.image.layers[1]

    staged = _unpack(fast_path, 9001, image)
    assert fast_path.log().count(STAGED_LINE) == 1
    assert _labels(fast_path, f"{daemon.namespace}/9002/{base.diff_id}").get(FAST_LABEL) == (
        base.digest
    )

    # The manifest names a blob that is not in the content store: the ordinary Commit.
    _label_manifest(fast_path, image, "sha256:" + hashlib.sha256(b"absent").hexdigest())
    missing = _unpack(fast_path, 9003, image)
    assert "is not in the content store; ordinary commit" in fast_path.log()
    # It names another layer's blob: converted, found to be the wrong layer, discarded.
    _label_manifest(fast_path, image, other.digest)
    tampered = _unpack(fast_path, 9005, image)
    assert f"not the target {base.diff_id}" in fast_path.log()
    assert fast_path.log().count(STAGED_LINE) == 1
    assert _ordinary_commits(fast_path) == 2
    assert FAST_LABEL not in _labels(fast_path, f"{daemon.namespace}/9006/{base.diff_id}")

    for layer in (staged, missing, tampered):
        assert_e2fsck_clean(root / layer / LAYER_VHD)
    assert _tree(root, staged) == _tree(root, missing) == _tree(root, tampered)
    _wait(lambda: len(fast_path.folders()) == 3)  # the staged one's sandbox torn down

    stub = fast_path.stub()
    for n in (9002, 9004, 9006):
        stub.Remove(pb.RemoveSnapshotRequest(key=f"{daemon.namespace}/{n}/{base.diff_id}"))
    _wait(lambda: fast_path.folders() == [])


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2])
def test_a_remove_during_the_staged_conversion_leaves_nothing(
    fast_path: FastPath, pushed_image: PushedImage, delay: float
) -> None:
    daemon, base = fast_path.daemon, pushed_image.image.layers[0]
    daemon.ctr("content", "fetch", "--plain-http", pushed_image.reference)
    stub = fast_path.stub()
    key = f"{daemon.namespace}/7/extract-7-test {base.diff_id}"
    stub.Prepare(pb.PrepareSnapshotRequest(key=key, parent=""))
    time.sleep(delay)
    stub.Remove(pb.RemoveSnapshotRequest(key=key))
    _wait(lambda: fast_path.folders() == [])
    assert settled_mounts(fast_path.snapshotter.root / "mounts") == []
    # The conversion either ended before the Remove or was cancelled; nothing was committed.
    assert _rows(fast_path) == []
    assert STAGED_LINE not in fast_path.log()


# A kill at a chosen point: the server SIGKILLs itself in the staged conversion's ApplyDiff
# (argv[1] == "converting") or in the teardown of the sandbox after the swap ("tearing-down").
KILL_AT = r"""
import os, signal, sys
from lcow.graphdriver.driver import Driver
from lcow.snapshots.staging import StagingSnapshotter

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if sys.argv[1] == "converting":
    Driver.apply_diff = die
else:
    StagingSnapshotter._remove_folder = die
from lcow.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def _rows(fp: FastPath) -> list[str]:
    """Every snapshot the snapshotter has (containerd's own list hides what it never made)."""
    return [i.name for r in fp.stub().List(pb.ListSnapshotsRequest()) for i in r.info]


@pytest.mark.parametrize("point", ["converting", "tearing-down"])
def test_a_kill_in_a_staged_pull_leaves_only_garbage_cleanup_removes(
    tmp_path: Path,
    containerd_with_proxy: ProxyContainerdFactory,
    pushed_image: PushedImage,
    point: str,
) -> None:
    sock_dir = short_dir("lcowk-")
    link = sock_dir / "cd.sock"
    args = (tmp_path / "root", sock_dir / "lcow.sock", tmp_path / "lcow.log")
    extra = ["--containerd-address", str(link)]
    killed = Snapshotter(*args, extra=extra)
    killed.program = ("-c", KILL_AT, point)  # a fault injection: it kills itself
    killed.start()
    running: Snapshotter | None = None
    try:
        daemon = containerd_with_proxy(killed.socket)
        link.symlink_to(daemon.address)
        pull = ["images", "pull", "--plain-http", "--snapshotter", SNAPSHOTTER,
                pushed_image.reference]  # fmt: skip
        assert daemon.ctr(*pull, check=False).returncode != 0
        assert killed.stop() == -signal.SIGKILL
        killed.socket.unlink()
        running = Snapshotter(*args, extra=extra).start()
        fp = FastPath(running, daemon)
        fp.stub().Cleanup(pb.CleanupRequest())
        # What is left is what the rows name: the failed pull's active snapshot (if it got
        # that far) and the committed layers; its sandbox is the only view and loop device.
        rows = _rows(fp)
        assert len(fp.folders()) == len(rows), (rows, fp.folders())
        # containerd's client reconnects after a back-off; until then calls fail fast.
        deadline = time.monotonic() + 60
        while (again := daemon.ctr(*pull, check=False)).returncode:
            assert "unavailable" in again.stderr and time.monotonic() < deadline, again.stderr
            time.sleep(0.2)
        _wait(lambda: len(fp.folders()) == len(_rows(fp)))
        run = ["run", "--rm", "--snapshotter", SNAPSHOTTER, pushed_image.reference, "c1"]
        listing = daemon.ctr(*run, "sh", "-c", LIST_SCRIPT).stdout
        assert sorted(listing.splitlines()) == pushed_image.listing
        for folder in fp.folders():
            # containerd's garbage collector may be removing the failed pull's layers meanwhile:
            # each image is checked through a descriptor taken first, so a removal cannot take
            # it away in the middle of the check (a removed one was whole until then too)
            try:
                fd = os.open(folder / LAYER_VHD, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                assert_e2fsck_clean(Path(f"/proc/{os.getpid()}/fd/{fd}"))
            finally:
                os.close(fd)
        daemon.ctr("images", "rm", "--sync", pushed_image.reference)
        _wait(lambda: fp.folders() == [])
        assert _rows(fp) == []
        assert settled_mounts(running.root / "mounts") == []
        daemon.close()
    finally:
        for proc in (killed, running):
            if proc is not None:
                proc.stop()
        Driver(tmp_path / "root", ["lcow.backend=host"]).cleanup()
        shutil.rmtree(sock_dir, ignore_errors=True)
        assert host_leftovers(tmp_path) == []
