"""Conformance cases: Remove and Cleanup; Get and Put (reference counts, Create-only layers,
missing ancestors); the longest id through every operation."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

from lcow.errors import LcowError, NotFound
from lcow.testing.backend_suite.helpers import (
    layer_listing,
    layer_tar,
    leftovers,
    raises,
    read_view_file,
    unpack_size,
    view_names,
    visible_names,
)
from lcow.testing.backend_suite.spec import (
    CHAIN,
    LAYER_VHD,
    LONGEST_ID,
    REMOVING,
    SANDBOX_VHDX,
    DriverFactory,
)

__all__ = [
    "test_cleanup_sweeps",
    "test_get_create_only",
    "test_get_missing_ancestor",
    "test_get_put_counts",
    "test_longest_id",
    "test_remove",
    "test_remove_tears_down_views",
]


# -- Remove and Cleanup --------------------------------------------------------------------------


def test_remove(make: DriverFactory, tmp: Path) -> None:
    """Remove deletes read-only, writable and content-less layers without a ``-removing``
    trace; an unknown id succeeds and changes nothing."""
    root = tmp / "root"
    driver = make(root)
    before = visible_names(root)
    driver.remove("never-created")
    assert visible_names(root) == before
    driver.create("empty", None)
    driver.create("ro", None)
    driver.apply_diff("ro", None, io.BytesIO(layer_tar({"f": b"x"})))
    driver.create_read_write("rw", "ro", None)
    for layer_id in ("rw", "ro", "empty"):
        driver.remove(layer_id)
        assert not (root / layer_id).exists()
        assert not (root / (layer_id + REMOVING)).exists()
        assert not driver.exists(layer_id)
    driver.remove("ro")
    assert leftovers(root) == []
    assert (root / "cache" / SANDBOX_VHDX).is_file(), "Remove must not touch the template"


def test_cleanup_sweeps(make: DriverFactory, tmp: Path) -> None:
    """Cleanup deletes every ``*-removing`` directory and the temporaries interrupted writes
    leave, and nothing else; on a missing root it succeeds."""
    root = tmp / "root"
    driver = make(root)
    driver.create("keep", None)
    driver.apply_diff("keep", None, io.BytesIO(layer_tar({"f": b"x"})))
    (root / ("gone" + REMOVING) / "sub").mkdir(parents=True)
    (root / ("gone" + REMOVING) / "sub" / LAYER_VHD).write_bytes(b"x" * 100)
    (root / ("empty" + REMOVING)).mkdir()
    (root / ("plainfile" + REMOVING)).write_bytes(b"a file, not a folder")
    (root / "keep" / ".layer.vhd.tmp-0123456789ab").write_bytes(b"partial")
    (root / "keep" / ".layerchain.json.tmp-0123456789ab").write_bytes(b"partial")
    (root / "cache" / ".sandbox.vhdx.tmp-0123456789ab.raw").write_bytes(b"partial")
    driver.cleanup()
    assert not (root / ("gone" + REMOVING)).exists()
    assert not (root / ("empty" + REMOVING)).exists()
    assert (root / ("plainfile" + REMOVING)).is_file()
    (root / ("plainfile" + REMOVING)).unlink()
    assert leftovers(root) == []
    assert layer_listing(root / "keep") == {CHAIN, LAYER_VHD}
    assert read_view_file(driver, "keep", "/f") == b"x"
    other = make(tmp / "vanishing")
    os.rename(tmp / "vanishing", tmp / "elsewhere")
    other.cleanup()


# -- Get and Put ---------------------------------------------------------------------------------


def test_get_put_counts(make: DriverFactory, tmp: Path) -> None:
    """Two Gets and one Put keep the view; the second Put releases it; Put without Get is a
    no-op; Cleanup releases every view."""
    driver = make(tmp / "root")
    driver.create("l", None)
    driver.apply_diff("l", None, io.BytesIO(layer_tar({"f": b"data"})))
    driver.put("l")
    driver.put("never-created")
    assert driver.view_count("l") == 0
    first = driver.get("l")
    second = driver.get("l", "mount-label-ignored")
    assert driver.view_count("l") == 2
    assert first.path == second.path
    driver.put("l")
    assert driver.view_count("l") == 1
    assert first.readfile("/f") == b"data"
    driver.put("l")
    assert driver.view_count("l") == 0
    driver.put("l")
    assert driver.view_count("l") == 0
    driver.get("l")
    driver.get("l")
    driver.cleanup()
    assert driver.view_count("l") == 0
    assert read_view_file(driver, "l", "/f") == b"data"


def test_remove_tears_down_views(make: DriverFactory, tmp: Path) -> None:
    """Remove drops every view of the id whatever the count; later Puts are no-ops and a
    re-created id starts empty."""
    root = tmp / "root"
    driver = make(root)
    driver.create("l", None)
    driver.apply_diff("l", None, io.BytesIO(layer_tar({"f": b"data"})))
    driver.get("l")
    driver.get("l")
    driver.remove("l")
    assert driver.view_count("l") == 0
    assert not (root / "l").exists() and leftovers(root) == []
    driver.put("l")
    driver.create("l", None)
    assert view_names(driver, "l") == []


def test_get_create_only(make: DriverFactory, tmp: Path) -> None:
    """Get on a Create-only layer gives an empty root 0755 owned by 0:0 (the original failed);
    a Create-only child shows its parent's content."""
    driver = make(tmp / "root")
    driver.create("empty", None)
    view = driver.get("empty")
    try:
        info = view.lstat("/")
        assert stat.S_ISDIR(info.mode) and stat.S_IMODE(info.mode) == 0o755
        assert (info.uid, info.gid) == (0, 0)
        assert view.readdir("/") == []
        raises(NotFound, lambda: view.lstat("/missing"))
    finally:
        driver.put("empty")
    driver.apply_diff("empty", None, io.BytesIO(layer_tar({"f": b"x"})))
    driver.create("child", "empty")
    assert view_names(driver, "child") == ["f"]


def test_get_missing_ancestor(make: DriverFactory, tmp: Path) -> None:
    """A chain naming a folder that no longer exists fails Get with LCOW's layer-details error
    rather than silently dropping that layer's content."""
    root = tmp / "root"
    driver = make(root)
    driver.create("base", None)
    driver.apply_diff("base", None, io.BytesIO(layer_tar({"f": b"x"})))
    driver.create("child", "base")
    os.rename(root / "base", tmp / "base-moved-away")
    exc = raises(LcowError, lambda: driver.get("child"))
    expected = f"lcowdriver: get: child failed to get layer details for {root / 'base'}"
    assert str(exc).startswith(expected), str(exc)
    assert driver.view_count("child") == 0


def test_longest_id(make: DriverFactory, tmp: Path) -> None:
    """An id of :data:`LONGEST_ID`'s length works in every operation: the temporary and
    ``-removing`` names derived from it fit ``NAME_MAX``."""
    root = tmp / "root"
    driver = make(root)
    base, child = LONGEST_ID, "C" * len(LONGEST_ID)
    driver.create(base, None)
    data = layer_tar({"f": b"long"})
    assert driver.apply_diff(base, None, io.BytesIO(data)) == unpack_size(data)
    assert read_view_file(driver, base, "/f") == b"long"
    driver.create(child, base)
    assert [str(c) for c in driver.changes(child, base)] == []
    assert driver.diff_size(base, None) == 4
    driver.remove(child)
    driver.remove(base)
    driver.cleanup()
    assert not driver.exists(base)
    assert leftovers(root) == []
