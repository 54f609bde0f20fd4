"""The snapshotter core on the host backend: real data root, loop devices, overlayfs, ext4.

Mounts are used the way containerd uses them (the bind source is a host directory written and
read with ``os``); committed layers are judged by ``e2fsck`` and by the driver's own Diff read
back as a tar; every test ends with nothing mounted, attached or running.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lcow.backends.host import kernel
from lcow.backends.host.backend import HostBackend
from lcow.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NoSpace, NotFound
from lcow.graphdriver.driver import Driver
from lcow.snapshots.metastore import Kind
from lcow.snapshots.snapshotter import METASTORE, Mount, Snapshotter
from lcow.storage.dataroot import LAYER_VHD, SANDBOX_RAW, SANDBOX_VHDX
from tests.helpers import assert_e2fsck_clean, host_leftovers, requires, run

pytestmark = requires("host", "mke2fs", "e2fsck")


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "root"
    yield path
    if path.exists():
        Driver(path, ["lcow.backend=host"]).cleanup()
    assert host_leftovers(tmp_path) == []


def _open(root: Path) -> Snapshotter:
    return Snapshotter(Driver(root, ["lcow.backend=host"]))


@pytest.fixture
def sn(root: Path) -> Iterator[Snapshotter]:
    snapshotter = _open(root)
    yield snapshotter
    snapshotter.close()


def _source(sn: Snapshotter, key: str) -> Path:
    (mount,) = sn.mounts(key)
    return Path(mount.source)


def _commit_base(sn: Snapshotter) -> str:
    """A committed base layer: etc/os, a file to delete later and a directory to make opaque."""
    (mount,) = sn.prepare("ns/1/extract-base", None, {"containerd.io/snapshot.ref": "base"})
    src = Path(mount.source)
    (src / "etc").mkdir()
    (src / "etc/os").write_text("lcow\n")
    (src / "gone").write_text("bye\n")
    (src / "opq").mkdir()
    (src / "opq/old").write_text("old\n")
    sn.commit("ns/2/base", "ns/1/extract-base", {"containerd.io/snapshot.ref": "base"})
    return "ns/2/base"


@contextlib.contextmanager
def _mounted(mount: Mount, target: Path) -> Iterator[Path]:
    """Mount ``mount`` at ``target`` as containerd does (``mount -t bind -o rbind,ro``)."""
    target.mkdir()
    done = run(["mount", "-t", mount.type, "-o", ",".join(mount.options), mount.source, target])
    assert done.returncode == 0, done.stderr
    try:
        yield target
    finally:
        assert run(["umount", "--recursive", target]).returncode == 0


def _tar_names(sn: Snapshotter, key: str) -> dict[str, tarfile.TarInfo]:
    snap = sn.stat(key)
    parent = sn.stat(snap.parent).id if snap.parent else None
    stream = sn.driver.diff(snap.id, parent)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            return {m.name.rstrip("/"): m for m in tar}
    finally:
        stream.close()


def test_prepare_gives_a_writable_bind_mount_and_commit_makes_layer_vhd(sn: Snapshotter) -> None:
    mounts = sn.prepare("ns/1/a", None, {"containerd.io/snapshot.ref": "x"})
    assert [(m.type, m.options) for m in mounts] == [("bind", ("rbind", "rw"))]
    assert sn.mounts("ns/1/a") == mounts
    assert os.path.ismount(mounts[0].source) or os.path.ismount(Path(mounts[0].source).parent)
    active = sn.stat("ns/1/a")
    assert (active.kind, active.parent, active.labels) == (
        Kind.ACTIVE, None, {"containerd.io/snapshot.ref": "x"}
    )  # fmt: skip
    folder = sn.driver.root.layer_dir(active.id)
    assert (folder / SANDBOX_VHDX).is_file()
    Path(mounts[0].source, "hello").write_text("hi\n")

    sn.commit("ns/2/a", "ns/1/a", {"l": "v"})
    done = sn.stat("ns/2/a")
    assert (done.kind, done.id, done.labels) == (Kind.COMMITTED, active.id, {"l": "v"})
    with pytest.raises(NotFound):
        sn.stat("ns/1/a")
    assert not (folder / SANDBOX_VHDX).exists()
    assert_e2fsck_clean(folder / LAYER_VHD)
    assert sn.driver.view_count(active.id) == 0  # the view was released
    assert list(kernel.mounts_below(sn.driver.root.root / "mounts")) == []
    assert set(_tar_names(sn, "ns/2/a")) == {"hello"}


def test_a_chain_with_whiteouts_and_opaque_dirs(sn: Snapshotter, tmp_path: Path) -> None:
    base = _commit_base(sn)
    src = Path(sn.prepare("ns/3/extract-top", base)[0].source)
    assert sorted(os.listdir(src)) == ["etc", "gone", "opq"]
    assert (src / "etc/os").read_text() == "lcow\n"
    (src / "gone").unlink()
    (src / "opq/old").unlink()
    (src / "opq").rmdir()
    (src / "opq").mkdir()  # overlayfs makes the new directory opaque
    (src / "opq/new").write_text("new\n")
    sn.commit("ns/4/top", "ns/3/extract-top")
    top = sn.stat("ns/4/top")
    assert top.parent == base
    assert_e2fsck_clean(sn.driver.root.layer_dir(top.id) / LAYER_VHD)
    names = _tar_names(sn, "ns/4/top")
    assert ".wh.gone" in names
    assert "opq/.wh..wh..opq" in names and "opq/new" in names

    (view,) = sn.view("ns/5/view", "ns/4/top")
    assert view.options == ("rbind", "ro")
    with _mounted(view, tmp_path / "view") as seen:
        assert sorted(os.listdir(seen)) == ["etc", "opq"]
        assert sorted(os.listdir(seen / "opq")) == ["new"]
        with pytest.raises(OSError, match="Read-only"):
            (seen / "x").write_text("no")
    assert sn.stat("ns/5/view").kind is Kind.VIEW


def test_a_view_of_one_layer_shows_only_its_content(sn: Snapshotter, tmp_path: Path) -> None:
    base = _commit_base(sn)
    (view,) = sn.view("ns/3/view", base)
    with _mounted(view, tmp_path / "view") as seen:
        assert sorted(os.listdir(seen)) == ["etc", "gone", "opq"]  # no lost+found
        with pytest.raises(OSError, match="Read-only"):
            (seen / "x").write_text("no")
    (empty,) = sn.view("ns/4/empty", None)
    assert os.listdir(empty.source) == []


def test_errors_name_the_snapshot_with_containerd_s_categories(sn: Snapshotter) -> None:
    base = _commit_base(sn)
    sn.prepare("ns/3/active", base)
    sn.view("ns/4/view", base)
    with pytest.raises(AlreadyExists, match="ns/3/active"):
        sn.prepare("ns/3/active", base)
    with pytest.raises(AlreadyExists):
        sn.view(base, None)
    with pytest.raises(NotFound, match="ns/9/none"):
        sn.prepare("ns/5/x", "ns/9/none")
    with pytest.raises(InvalidArgument, match="not committed"):
        sn.prepare("ns/5/x", "ns/3/active")
    with pytest.raises(FailedPrecondition, match="not active"):
        sn.commit("ns/6/c", "ns/4/view")
    with pytest.raises(FailedPrecondition, match="not active"):
        sn.commit("ns/6/c", base)
    with pytest.raises(AlreadyExists, match=base):
        sn.commit(base, "ns/3/active")
    with pytest.raises(FailedPrecondition, match="children"):
        sn.remove(base)
    with pytest.raises(FailedPrecondition, match="committed"):
        sn.mounts(base)
    for call in (sn.stat, sn.mounts, sn.remove, sn.usage):
        with pytest.raises(NotFound, match="ns/7/unknown"):
            call("ns/7/unknown")
    with pytest.raises(NotFound):
        sn.commit("ns/8/c", "ns/7/unknown")
    with pytest.raises(NotFound):
        sn.update("ns/7/unknown", {})
    with pytest.raises(InvalidArgument):
        sn.prepare("", None)
    with pytest.raises(InvalidArgument):
        sn.prepare("ns/9/hostile", None, {"\x1b]0;title\x07": "v" * 5000})
    # nothing of the refused calls is left: every folder belongs to a snapshot
    assert sn.cleanup() == []
    assert {s.key for s in sn.walk()} == {base, "ns/3/active", "ns/4/view"}
    assert len(sn.driver.root.layer_ids()) == 3


def test_usage_update_and_walk(sn: Snapshotter) -> None:
    base = _commit_base(sn)
    usage = sn.usage(base)
    assert usage.size == len("lcow\n") + len("bye\n") + len("old\n")
    assert usage.inodes == 6  # the root, etc, etc/os, gone, opq, opq/old
    sn.prepare("ns/3/a", base)
    src = _source(sn, "ns/3/a")
    (src / "big").write_bytes(b"x" * 10000)
    assert sn.usage("ns/3/a").size == 10000
    assert sn.usage("ns/3/a").inodes == 2  # upper/ and big

    info = sn.update("ns/3/a", {"a": "1", "b": "2"})
    assert info.labels == {"a": "1", "b": "2"}
    info = sn.update("ns/3/a", {"b": "3", "c": "4"}, ["labels.b", "labels.a"])
    assert info.labels == {"b": "3"}
    info = sn.update("ns/3/a", {"b": "", "d": "5"}, ["labels.b", "labels.d"])
    assert info.labels == {"d": "5"}
    info = sn.update("ns/3/a", {"b": "3"})  # no mask: every label replaced
    assert sn.stat("ns/3/a").labels == {"b": "3"}
    with pytest.raises(InvalidArgument, match="parent"):
        sn.update("ns/3/a", {}, ["parent"])

    assert [s.key for s in sn.walk(["kind==committed"])] == [base]
    assert [s.key for s in sn.walk([f"parent=={base}"])] == ["ns/3/a"]
    assert [s.key for s in sn.walk(['labels."b"==3'])] == ["ns/3/a"]
    assert {s.key for s in sn.walk(["kind==active", "name==" + base])} == {base, "ns/3/a"}
    with pytest.raises(InvalidArgument):
        sn.walk(["name~=.*"])


def test_remove_releases_views_and_folders(sn: Snapshotter) -> None:
    base = _commit_base(sn)
    sn.view("ns/3/v", base)
    sn.prepare("ns/4/a", base)
    ids = [sn.stat(k).id for k in ("ns/3/v", "ns/4/a")]
    assert [sn.driver.view_count(i) for i in ids] == [1, 1]
    sn.remove("ns/3/v")
    sn.remove("ns/4/a")
    for layer_id in ids:
        assert sn.driver.view_count(layer_id) == 0
        assert not sn.driver.root.layer_dir(layer_id).exists()
    sn.remove(base)
    assert sn.walk() == []
    assert sn.driver.root.layer_ids() == []
    assert list(kernel.mounts_below(sn.driver.root.root / "mounts")) == []


def test_a_restarted_snapshotter_adopts_the_views(root: Path) -> None:
    first = _open(root)
    base = _commit_base(first)
    src = Path(first.prepare("ns/3/a", base)[0].source)
    (src / "kept").write_text("still here\n")
    with open(src / "kept") as held:  # a container using the mount across the restart
        first.close()
        second = _open(root)
        try:
            assert second.mounts("ns/3/a")[0].source == str(src)
            assert second.driver.view_count(second.stat("ns/3/a").id) == 1
            assert held.read() == "still here\n"
            (src / "more").write_text("after\n")
        finally:
            second.close()
    third = _open(root)
    third.commit("ns/4/a", "ns/3/a")
    assert set(_tar_names(third, "ns/4/a")) == {"kept", "more"}
    third.close()


def test_startup_reconciles_the_database_and_the_folders(root: Path) -> None:
    sn = _open(root)
    base = _commit_base(sn)
    sn.prepare("ns/3/child", base)
    lost = _commit_base_as(sn, "ns/5/lost")
    orphan_id = "sn" + "0" * 32
    sn.driver.create(orphan_id)  # a folder no row names (a crash before the row)
    sn.close()
    # a crash that left a row without its folder: the row and its descendants are dropped
    with sqlite3.connect(root / METASTORE) as db:
        (lost_folder,) = db.execute("SELECT id FROM snapshots WHERE key = ?", (lost,)).fetchone()
    Driver(root, ["lcow.backend=host"]).remove(lost_folder)

    again = _open(root)
    try:
        assert {s.key for s in again.walk()} == {base, "ns/3/child"}
        assert again.driver.view_count(again.stat("ns/3/child").id) == 1
        assert orphan_id in again.driver.root.layer_ids()
        assert again.cleanup() == [orphan_id]
        assert again.driver.view_count(again.stat("ns/3/child").id) == 1  # views untouched
    finally:
        again.close()


def _commit_base_as(sn: Snapshotter, name: str) -> str:
    src = Path(sn.prepare(name + "-extract", None)[0].source)
    (src / "f").write_text("f\n")
    sn.commit(name, name + "-extract")
    return name


def test_an_interrupted_commit_is_finished_or_rolled_back(root: Path) -> None:
    sn = _open(root)
    base = _commit_base(sn)
    for key in ("ns/3/converted", "ns/4/not-yet"):
        (Path(sn.prepare(key, base)[0].source) / "f").write_text(key)
    converted = sn.stat("ns/3/converted")
    # what a kill after the conversion leaves: layer.vhd in place, the row still active with
    # its name reserved; and a kill before it: the sandbox, the row with its name reserved
    sn.driver.put(converted.id)
    with sn.driver.diff(converted.id, sn.stat(base).id) as stream:
        sn.driver.apply_diff(converted.id, None, stream)
    with sn.store.transaction() as tx:
        for key, name in (("ns/3/converted", "ns/5/done"), ("ns/4/not-yet", "ns/6/never")):
            tx.replace(key, tx.require(key).but(pending_name=name, pending_labels={"n": name}))
    sn.close()

    again = _open(root)
    try:
        done = again.stat("ns/5/done")
        assert (done.kind, done.id, done.labels) == (Kind.COMMITTED, converted.id,
                                                     {"n": "ns/5/done"})  # fmt: skip
        assert again.driver.view_count(converted.id) == 0
        rolled = again.stat("ns/4/not-yet")
        assert rolled.kind is Kind.ACTIVE and rolled.pending_name is None
        assert (_source(again, "ns/4/not-yet") / "f").read_text() == "ns/4/not-yet"
        assert again.driver.view_count(rolled.id) == 1
        with pytest.raises(NotFound):
            again.stat("ns/6/never")
        again.commit("ns/6/never", "ns/4/not-yet")
        assert_e2fsck_clean(again.driver.root.layer_dir(rolled.id) / LAYER_VHD)
    finally:
        again.close()


def test_a_failed_commit_leaves_the_snapshot_active_and_mounted(
    sn: Snapshotter, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _commit_base(sn)
    sn.prepare("ns/3/a", base)
    (_source(sn, "ns/3/a") / "kept").write_text("kept\n")
    layer_id = sn.stat("ns/3/a").id

    def full_disk_apply_diff(*args: object, **kwargs: object) -> int:  # fault injection
        raise NoSpace(f"{layer_id}: layer.vhd: no space left on device", subject=layer_id)

    monkeypatch.setattr(sn.driver, "apply_diff", full_disk_apply_diff)
    with pytest.raises(NoSpace):
        sn.commit("ns/4/a", "ns/3/a")
    monkeypatch.undo()
    snap = sn.stat("ns/3/a")
    assert (snap.kind, snap.pending_name, snap.held) == (Kind.ACTIVE, None, True)
    with pytest.raises(NotFound):
        sn.stat("ns/4/a")  # the name is free again
    assert sn.driver.view_count(layer_id) == 1
    assert (_source(sn, "ns/3/a") / "kept").read_text() == "kept\n"
    sn.commit("ns/4/a", "ns/3/a")
    assert set(_tar_names(sn, "ns/4/a")) == {"kept"}


def test_views_lost_to_a_reboot_are_mounted_again_at_startup(root: Path) -> None:
    sn = _open(root)
    base = _commit_base(sn)
    (Path(sn.prepare("ns/3/a", base)[0].source) / "kept").write_text("kept\n")
    sn.view("ns/4/v", base)
    sn.close()
    Driver(root, ["lcow.backend=host"]).cleanup()  # every mount gone, as after a reboot
    assert list(kernel.mounts_below(root / "mounts")) == []
    again = _open(root)
    try:
        for key in ("ns/3/a", "ns/4/v"):
            assert again.driver.view_count(again.stat(key).id) == 1
        assert (_source(again, "ns/3/a") / "kept").read_text() == "kept\n"
        assert (_source(again, "ns/3/a") / "etc/os").read_text() == "lcow\n"
        assert sorted(os.listdir(_source(again, "ns/4/v"))) == ["etc", "gone", "opq"]
    finally:
        again.close()


def test_other_snapshots_go_on_while_one_is_converted(
    sn: Snapshotter, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _commit_base(sn)
    sn.prepare("ns/3/slow", base)
    (_source(sn, "ns/3/slow") / "f").write_text("slow\n")
    slow_id = sn.stat("ns/3/slow").id
    converting, go_on = threading.Event(), threading.Event()
    real_apply_diff = sn.driver.apply_diff

    def held_apply_diff(layer_id: str, *args: Any, **kwargs: Any) -> int:  # fault injection
        if layer_id == slow_id:
            converting.set()
            assert go_on.wait(60)
        return real_apply_diff(layer_id, *args, **kwargs)

    monkeypatch.setattr(sn.driver, "apply_diff", held_apply_diff)
    errors: list[BaseException] = []

    def commit_slow() -> None:
        try:
            sn.commit("ns/4/slow", "ns/3/slow")
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=commit_slow)
    worker.start()
    try:
        assert converting.wait(60)
        # the snapshot being committed is off limits, the rest of the key space is not
        for call in (sn.mounts, sn.remove):
            with pytest.raises(FailedPrecondition, match="being committed"):
                call("ns/3/slow")
        with pytest.raises(FailedPrecondition, match="being committed"):
            sn.commit("ns/4/other", "ns/3/slow")
        with pytest.raises(AlreadyExists):
            sn.prepare("ns/4/slow", base)
        with pytest.raises(InvalidArgument):
            sn.prepare("ns/5/x", "ns/3/slow")
        sn.prepare("ns/5/fast", base)
        (_source(sn, "ns/5/fast") / "g").write_text("fast\n")
        sn.commit("ns/6/fast", "ns/5/fast")
        assert sn.cleanup() == []
        assert sn.stat("ns/3/slow").pending_name == "ns/4/slow"
    finally:
        go_on.set()
        worker.join(60)
    assert errors == []
    assert set(_tar_names(sn, "ns/4/slow")) == {"f"}
    assert set(_tar_names(sn, "ns/6/fast")) == {"g"}


def test_an_unpack_snapshot_is_a_raw_sandbox_mounted_without_the_storage_daemon(
    root: Path,
) -> None:
    sn = _open(root)
    try:
        base = _commit_base(sn)  # prepared as extract-base: raw too
        key = "ns/3/extract-1234 sha256:" + "c" * 64  # containerd's unpacker's key
        src = _source_of(sn.prepare(key, base))
        folder = sn.driver.root.layer_dir(sn.stat(key).id)
        assert (folder / SANDBOX_RAW).is_file() and not (folder / SANDBOX_VHDX).exists()
        backend = sn.driver.backend
        assert isinstance(backend, HostBackend)
        assert backend.daemon.pid() is None  # nothing exported: no storage daemon
        (src / "etc/os").write_text("changed\n")
        (src / "gone").unlink()
        (src / "new").write_text("new\n")

        sn.close()  # a reboot: every mount gone; the raw sandbox is mounted again at startup
        Driver(root, ["lcow.backend=host"]).cleanup()
        sn = _open(root)
        src = _source(sn, key)
        assert (src / "new").read_text() == "new\n" and not (src / "gone").exists()
        usage = sn.usage(key)  # read while mounted: frozen, then the raw file itself
        assert usage.size >= len("changed\nnew\n") and usage.inodes >= 4, usage

        sn.commit("ns/4/top", key)
        assert not (folder / SANDBOX_RAW).exists()
        assert_e2fsck_clean(folder / LAYER_VHD)
        names = _tar_names(sn, "ns/4/top")
        assert {"etc/os", "new", ".wh.gone"} <= set(names), sorted(names)
        assert list(kernel.mounts_below(root / "mounts")) == []

        other = sn.stat(_prepared(sn, "ns/5/c", "ns/4/top")).id  # not an unpack: a VHDX
        assert (sn.driver.root.layer_dir(other) / SANDBOX_VHDX).is_file()
    finally:
        sn.close()


def _source_of(mounts: list[Mount]) -> Path:
    (mount,) = mounts
    return Path(mount.source)


def _prepared(sn: Snapshotter, key: str, parent: str) -> str:
    sn.prepare(key, parent)
    return key
