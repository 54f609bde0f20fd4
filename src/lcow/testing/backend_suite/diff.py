"""Conformance cases: Diff, Changes and DiffSize of empty layers, of an empty child over
content, and against a missing parent."""

from __future__ import annotations

import functools
import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

from lcow.errors import NotFound
from lcow.testing.backend_suite.helpers import layer_tar, raises
from lcow.testing.backend_suite.spec import DriverFactory

__all__ = [
    "test_empty_child_of_content",
    "test_empty_layer_diff",
    "test_missing_parent_is_not_found",
]


# -- Diff, Changes, DiffSize ---------------------------------------------------------------------


def test_empty_layer_diff(make: DriverFactory, tmp: Path) -> None:
    """An empty layer has an empty Diff (a valid tar with no entries), no Changes and DiffSize
    0, against no parent and against its direct parent."""
    driver = make(tmp / "root")
    driver.create("base", None)
    driver.create("child", "base")
    for layer_id, parent in (("base", None), ("child", "base")):
        with driver.diff(layer_id, parent) as stream:
            data = stream.read()
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            assert tar.getmembers() == []
        assert driver.changes(layer_id, parent) == []
        assert driver.diff_size(layer_id, parent) == 0


def test_empty_child_of_content(make: DriverFactory, tmp: Path) -> None:
    """An empty child of a populated base: nothing against the base; against no parent (not
    the direct one) the view's whole content."""
    driver = make(tmp / "root")
    driver.create("base", None)
    data = layer_tar({"d": None, "d/f": b"12345", "g": b"67"})
    driver.apply_diff("base", None, io.BytesIO(data))
    driver.create("child", "base")
    assert driver.changes("child", "base") == []
    assert driver.diff_size("child", "base") == 0
    changes = sorted((c.path, int(c.kind)) for c in driver.changes("child", None))
    assert changes == [("/d", 1), ("/d/f", 1), ("/g", 1)]
    assert driver.diff_size("child", None) == 7
    with driver.diff("child", None) as stream:
        exported = stream.read()
    with tarfile.open(fileobj=io.BytesIO(exported), mode="r:") as tar:
        assert sorted(m.name.rstrip("/") for m in tar.getmembers()) == ["d", "d/f", "g"]


def test_missing_parent_is_not_found(make: DriverFactory, tmp: Path) -> None:
    """Diff, Changes and DiffSize against a parent that does not exist (or whose chain names a
    folder that is gone) fail NotFound naming it, instead of comparing with an empty tree."""
    root = tmp / "root"
    driver = make(root)
    driver.create("base", None)
    driver.apply_diff("base", None, io.BytesIO(layer_tar({"f": b"x"})))
    driver.create("top", "base")
    calls: list[Callable[[], object]] = [
        lambda: driver.changes("top", "deadbeef"),
        lambda: driver.diff_size("top", "deadbeef"),
        lambda: driver.diff("top", "deadbeef"),
    ]
    for call in calls:
        exc = raises(NotFound, call)
        assert "deadbeef" in str(exc), str(exc)
    driver.create("other", None)
    os.rename(root / "base", tmp / "base-moved-away")
    for op in ("changes", "diff_size", "diff"):
        exc = raises(NotFound, functools.partial(getattr(driver, op), "top", "other"))
        assert str(root / "base") in str(exc), str(exc)
