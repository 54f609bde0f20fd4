"""lcow's conformance suite (:mod:`lcow.testing`) on the containerd snapshotter's views.

Layers are built the way containerd unpacks an image: Prepare over the committed parent, mount
the returned bind mount (``mount -t bind -o rbind,rw``), write the layer's content into it,
unmount, Commit under the layer's name. The suite's checks then read the views containerd would
get (the mounts of a View, or of a Prepare on top, mounted the same way) through the host
backend's :class:`~lcow.backends.host.hostfs.HostFS`, against the suite's own expected trees.

Every case of :mod:`lcow.testing.graphtest` and :mod:`lcow.testing.backend_suite` is either
run here (:data:`RUN`) or listed with the reason it cannot apply to a snapshotter
(:data:`NOT_ON_SNAPSHOTTER`: not collected, so CI shows no skips); a new suite case fails
:func:`test_every_suite_case_is_run_or_listed` until it is placed.
"""

from __future__ import annotations

import inspect
import itertools
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lcow.backends.base import ContainerFS
from lcow.backends.host.hostfs import HostFS
from lcow.errors import NotFound
from lcow.graphdriver.driver import Driver
from lcow.snapshots.snapshotter import Mount, Snapshotter
from lcow.testing import backend_suite, graphtest
from lcow.testing.graphtest import (
    add_many_files,
    change_many_files,
    check_changes,
    check_many_files,
    check_many_layers,
    read_dir,
    verify_base,
    write_base,
    write_layer,
)
from tests.helpers import host_leftovers, requires, run

__all__ = ["NOT_ON_SNAPSHOTTER", "RUN"]

_DRIVER_API = (
    "the Driver's own API and data-root layout (InitDriver options, ids, layerchain.json, "
    "reference counts, sweeping); a snapshotter reaches the driver only through its own calls "
    "with generated ids, and this case runs on the same host backend in test_driver.py"
)
_APPLY_DIFF = (
    "ApplyDiff of a caller's tar is a Driver operation; containerd writes a layer into "
    "Prepare's mounts and Commits it, which the view cases here build every layer with"
)
_SANDBOX_OPTIONS = (
    "CreateReadWrite's sandbox options: Prepare receives no sandbox size from containerd"
)
_DIFF = (
    "Diff/Changes/DiffSize against an arbitrary or missing parent are Driver operations; "
    "containerd's differ compares mounts itself and the snapshotter offers only Usage"
)

#: Suite cases that cannot apply to a snapshotter's views, with the reason.
NOT_ON_SNAPSHOTTER: dict[str, str] = {
    **{
        f"backend_suite.{name}": _DRIVER_API
        for name in (
            "test_bad_ids",
            "test_cleanup_sweeps",
            "test_corrupt_chain",
            "test_create_again",
            "test_create_layout",
            "test_create_missing_parent",
            "test_exists",
            "test_get_missing_ancestor",
            "test_get_put_counts",
            "test_init_layout",
            "test_init_option_error",
            "test_init_options_accepted",
            "test_init_unknown_lcow_key",
            "test_longest_id",
            "test_metadata_and_layer_path",
            "test_moved_root",
            "test_remove",
            "test_remove_tears_down_views",
            "test_string_and_status",
            "test_windows_chain",
            "test_create_read_write_default",
        )
    },
    **{
        f"backend_suite.{name}": _APPLY_DIFF
        for name in (
            "test_apply_diff_failure",
            "test_apply_diff_failure_keeps_sandbox",
            "test_apply_diff_layout",
            "test_apply_diff_missing_layer",
            "test_apply_diff_replaces_sandbox",
            "test_apply_diff_unpack_size",
        )
    },
    **{
        f"backend_suite.{name}": _SANDBOX_OPTIONS
        for name in (
            "test_create_read_write_exact_size",
            "test_create_read_write_sized",
            "test_sandbox_option_error",
        )
    },
    **{
        f"backend_suite.{name}": _DIFF
        for name in (
            "test_empty_child_of_content",
            "test_empty_layer_diff",
            "test_missing_parent_is_not_found",
        )
    },
    "backend_suite.test_get_create_only": (
        "Get of a Create-only layer has no snapshotter form (every snapshot has a sandbox or "
        "a layer.vhd); its views' expectations run here as graphtest.test_create_empty and "
        "graphtest.test_create_snap"
    ),
    "graphtest.test_set_quota": _SANDBOX_OPTIONS,
}

#: Suite cases run here on snapshotter views; the Diff/ApplyDiff round trip of DiffApply is
#: a Driver operation, so only its view checks run (on layers built by Prepare and Commit).
RUN = frozenset(
    {
        "graphtest.test_create_empty",
        "graphtest.test_create_base",
        "graphtest.test_create_snap",
        "graphtest.test_deep_layer_read",
        "graphtest.test_diff_apply",
        "graphtest.test_changes",
    }
)

pytestmark = requires("root", "host", "mke2fs")


class Mounter:
    """Mounts a snapshotter's mounts the way containerd does, each at a fresh target."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mounted: list[Path] = []
        self._names = itertools.count()

    def mount(self, mounts: list[Mount]) -> Path:
        (mount,) = mounts
        target = self.base / f"m{next(self._names)}"
        target.mkdir(parents=True)
        options = ",".join(mount.options)
        done = run(["mount", "-t", mount.type, "-o", options, mount.source, target])
        assert done.returncode == 0, done.stderr
        self.mounted.append(target)
        return target

    def unmount(self, target: Path) -> None:
        done = run(["umount", "--recursive", target])
        assert done.returncode == 0, done.stderr
        self.mounted.remove(target)
        target.rmdir()

    def unmount_all(self) -> None:
        for target in list(reversed(self.mounted)):
            self.unmount(target)


class SnapshotViews:
    """:class:`graphtest.Views` over committed snapshots: each Get is a new View (or a Prepare
    on top, ``kind="active"``) mounted as containerd mounts it; its Put unmounts and removes it."""

    def __init__(self, sn: Snapshotter, mounter: Mounter, kind: str) -> None:
        self.sn = sn
        self.mounter = mounter
        self.create: Callable[[str, str | None], list[Mount]] = (
            sn.view if kind == "view" else sn.prepare
        )
        self.held: dict[str, list[tuple[str, Path]]] = {}
        self._keys = itertools.count()

    def get(self, layer_id: str) -> ContainerFS:
        key = f"check/{next(self._keys)}/{layer_id}"
        target = self.mounter.mount(self.create(key, layer_id))
        self.held.setdefault(layer_id, []).append((key, target))
        return HostFS(str(target))

    def put(self, layer_id: str) -> None:
        key, target = self.held[layer_id].pop()
        self.mounter.unmount(target)
        self.sn.remove(key)


class SnapshotBuilder(graphtest.ViewWriter):
    """A layer written as containerd's unpacker writes one: Prepare over the parent, content
    into the mounted bind, Commit under ``name``."""

    def __init__(self, sn: Snapshotter, mounter: Mounter, name: str, parent: str | None) -> None:
        self.sn = sn
        self.mounter = mounter
        self.name = name
        self.key = f"extract/{name}"
        mounts = sn.prepare(self.key, parent, {"containerd.io/snapshot.ref": name})
        self.target = mounter.mount(mounts)
        self.view = HostFS(str(self.target))

    def commit(self) -> None:
        self.mounter.unmount(self.target)
        self.sn.commit(self.name, self.key)


Build = Callable[[str, str | None], SnapshotBuilder]


@pytest.fixture
def sn(tmp_path: Path) -> Iterator[Snapshotter]:
    root = tmp_path / "root"
    snapshotter = Snapshotter(Driver(root, ["lcow.backend=host"]))
    yield snapshotter
    snapshotter.close()
    Driver(root, ["lcow.backend=host"]).cleanup()
    assert host_leftovers(tmp_path) == []


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[Mounter]:
    made = Mounter(tmp_path / "mnt")
    yield made
    made.unmount_all()


@pytest.fixture
def build(sn: Snapshotter, mounter: Mounter) -> Build:
    def builder(name: str, parent: str | None) -> SnapshotBuilder:
        return SnapshotBuilder(sn, mounter, name, parent)

    return builder


@pytest.fixture(params=["view", "active"])
def views(request: pytest.FixtureRequest, sn: Snapshotter, mounter: Mounter) -> SnapshotViews:
    """The checks' reads: through a View's mounts, or through a Prepare's on top."""
    return SnapshotViews(sn, mounter, request.param)


def test_create_empty(sn: Snapshotter, build: Build, views: SnapshotViews) -> None:
    """graphtest's CreateEmpty: an empty committed layer's view is an empty 0755 root owned by
    0:0; once removed, it is gone."""
    build("empty", None).commit()
    view = views.get("empty")
    root = view.lstat("/")
    assert root.is_dir and stat.S_IMODE(root.mode) == 0o755 and (root.uid, root.gid) == (0, 0)
    views.put("empty")
    assert read_dir(views, "empty", "/") == []
    sn.remove("empty")
    with pytest.raises(NotFound):
        sn.stat("empty")


def test_create_base(build: Build, views: SnapshotViews) -> None:
    """graphtest's CreateBase: modes (sticky, setuid), owners and content survive Commit."""
    builder = build("Base", None)
    write_base(builder)
    builder.commit()
    verify_base(views, "Base")


def test_create_snap(build: Build, views: SnapshotViews) -> None:
    """graphtest's CreateSnap: an empty child committed over the base shows the base."""
    builder = build("Base", None)
    write_base(builder)
    builder.commit()
    build("Snap", "Base").commit()
    verify_base(views, "Snap")


def test_deep_layer_read(build: Build, views: SnapshotViews) -> None:
    """graphtest's DeepLayerRead: 128 layers, each Prepared over the last and Committed; the
    top's view follows the ids down the chain and reads the base's file."""
    count = 128
    builder = build("Base", None)
    builder.write("testfile.txt", b"test content", 0o755)
    builder.commit()
    last = "Base"
    for k in range(1, count + 1):
        layer = f"Base-layer-{k}"
        builder = build(layer, last)
        write_layer(builder, k, layer, last)
        builder.commit()
        last = layer
    check_many_layers(views, last, count)
    view = views.get(last)
    try:
        assert view.readfile("/testfile.txt") == b"test content"
    finally:
        views.put(last)


def test_diff_apply(build: Build, views: SnapshotViews) -> None:
    """graphtest's DiffApply, its view checks: an upper layer that rewrites files, removes a
    file and a directory, Committed over the base, shows the upper's tree; the base's view is
    unchanged."""
    count = 10
    builder = build("Base", None)
    add_many_files(builder, count, 3)
    builder.write("file-remove.txt", b"This file should get removed in upper!", 0o755)
    builder.mkdir("var", 0o755)
    builder.mkdir("var/lib", 0o755)
    builder.commit()
    builder = build("Upper", "Base")
    add_many_files(builder, count, 6)
    builder.remove("file-remove.txt")
    builder.remove("var/lib")
    builder.commit()

    check_many_files(views, "Base", count, 3)
    assert "file-remove.txt" in read_dir(views, "Base", "/")
    assert "lib" in read_dir(views, "Base", "/var")
    check_many_files(views, "Upper", count, 6)
    assert "file-remove.txt" not in read_dir(views, "Upper", "/")
    assert "lib" not in read_dir(views, "Upper", "/var")


def test_changes(sn: Snapshotter, build: Build) -> None:
    """graphtest's Changes: the layer Commit makes from what was written into Prepare's mount
    has changeManyFiles' expected changes against its parent, exactly (the driver's Changes of
    the two committed folders is the oracle)."""
    count = 20
    builder = build("Base", None)
    add_many_files(builder, count, 3)
    builder.commit()
    builder = build("Upper", "Base")
    expected = change_many_files(builder, count, 6)
    builder.commit()
    upper, base = sn.stat("Upper").id, sn.stat("Base").id
    check_changes(expected, sn.driver.changes(upper, base))


def _suite_cases() -> set[str]:
    cases = set()
    for prefix, module in (("backend_suite", backend_suite), ("graphtest", graphtest)):
        for name, value in vars(module).items():
            if name.startswith("test_") and inspect.isfunction(value):
                cases.add(f"{prefix}.{name}")
    return cases


def test_every_suite_case_is_run_or_listed() -> None:
    """Each suite case runs here or is listed as not applying (with a reason); none is both,
    none unknown."""
    assert RUN.isdisjoint(NOT_ON_SNAPSHOTTER)
    assert all(reason.strip() for reason in NOT_ON_SNAPSHOTTER.values())
    assert _suite_cases() == RUN | set(NOT_ON_SNAPSHOTTER)
