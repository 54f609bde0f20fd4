"""Commit while the client still has the active snapshot mounted keeps what it wrote.

containerd's snapshotter suite commits before unmounting (StatComitted, TransitivityTest,
PreareViewFailingtest, RemoveIntermediateSnapshot), and a ``ctr snapshots commit`` of a
running container's snapshot does the same: the client's bind mount then keeps the sandbox's
filesystem alive after the snapshotter's own unmount, and its writes must still reach the
committed layer.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lcow.backends.host import kernel
from lcow.graphdriver.driver import Driver
from lcow.snapshots.snapshotter import Snapshotter
from lcow.storage.dataroot import LAYER_VHD
from tests.helpers import assert_e2fsck_clean, host_leftovers, requires, run

pytestmark = requires("host", "mke2fs", "e2fsck")


@pytest.fixture
def sn(tmp_path: Path) -> Iterator[Snapshotter]:
    root = tmp_path / "root"
    snapshotter = Snapshotter(Driver(root, ["lcow.backend=host"]))
    try:
        yield snapshotter
    finally:
        snapshotter.close()
        Driver(root, ["lcow.backend=host"]).cleanup()
        assert host_leftovers(tmp_path) == []


def test_commit_under_a_client_s_bind_mount_keeps_its_writes(
    sn: Snapshotter, tmp_path: Path
) -> None:
    (mount,) = sn.prepare("ns/1/a", None)
    target = tmp_path / "client"
    target.mkdir()
    done = run(["mount", "-t", mount.type, "-o", ",".join(mount.options), mount.source, target])
    assert done.returncode == 0, done.stderr
    try:
        (target / "dir").mkdir()
        (target / "dir/file").write_text("written before Commit\n")
        (target / "big").write_bytes(b"x" * 300_000)
        sn.commit("ns/2/a", "ns/1/a")
    finally:
        assert run(["umount", "--lazy", target]).returncode == 0

    layer = sn.stat("ns/2/a").id
    assert_e2fsck_clean(sn.driver.root.layer_dir(layer) / LAYER_VHD)
    assert _contents(sn, layer) == {
        "dir": b"",
        "dir/file": b"written before Commit\n",
        "big": b"x" * 300_000,
    }


def test_a_sandbox_unmounted_from_outside_is_not_flushed_through_its_parent_filesystem(
    sn: Snapshotter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flush before the unmount freezes the sandbox's own mount, never the directory
    under it (that would freeze the filesystem holding the data root)."""
    (mount,) = sn.prepare("ns/1/a", None)
    Path(mount.source, "kept").write_text("kept\n")
    home = sn.driver.root.root / "mounts"
    (sandbox,) = [p for p, fstype in kernel.mounts_below(home / "d") if fstype == "ext4"]
    kernel.umount(sandbox, lazy=True)  # someone unmounts it behind our back; the view holds it

    frozen: list[tuple[str, bool]] = []
    real_freeze = kernel.freeze

    def freeze_spy(mountpoint: str | os.PathLike[str]) -> None:
        """Record each freeze; refuse (not freeze) anything that is not a mount point."""
        is_mount = os.path.ismount(mountpoint)
        frozen.append((os.fspath(mountpoint), is_mount))
        if not is_mount:
            raise OSError("freeze_spy: refused a directory that is not a mount point")
        real_freeze(mountpoint)

    monkeypatch.setattr(kernel, "freeze", freeze_spy)
    sn.commit("ns/2/a", "ns/1/a")
    assert all(is_mount for _, is_mount in frozen), frozen
    assert _contents(sn, sn.stat("ns/2/a").id) == {"kept": b"kept\n"}


def _contents(sn: Snapshotter, layer: str) -> dict[str, bytes]:
    """The layer's own content as the driver's Diff exports it: name -> bytes (b"" if not a
    file)."""
    found: dict[str, bytes] = {}
    stream = sn.driver.diff(layer)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                data = tar.extractfile(member) if member.isfile() else None
                found[member.name.rstrip("/")] = data.read() if data is not None else b""
    finally:
        stream.close()
    return found
