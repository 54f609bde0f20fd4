"""Walk's filters on real snapshots answer as containerd's own snapshotters do.

containerd's adaptors (``snapshots/storage``, ``metadata``) give every snapshot a ``parent``
field (``""`` without a parent) and compare ``!=`` against ``""`` for an absent label; its
snapshotter suite's Walk case relies on ``parent!=""`` selecting the snapshots with a parent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lcow.graphdriver.driver import Driver
from lcow.snapshots.snapshotter import Snapshotter
from tests.helpers import host_leftovers, requires

pytestmark = requires("host", "mke2fs")


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


def _keys(sn: Snapshotter, *filters: str) -> set[str]:
    return {s.key for s in sn.walk(filters)}


def test_parent_and_absent_labels_compare_as_empty_strings(sn: Snapshotter) -> None:
    sn.prepare("p-tmp", None)
    sn.commit("p", "p-tmp")
    sn.prepare("a-np", None)
    sn.prepare("a", "p", {"l": "2"})
    sn.view("v", "p", {"l": "3"})

    assert _keys(sn, 'parent!=""') == {"a", "v"}
    assert _keys(sn, 'parent==""') == {"p", "a-np"}
    assert _keys(sn, "parent") == {"p", "a-np", "a", "v"}
    assert _keys(sn, 'labels.l!=""') == {"a", "v"}
    assert _keys(sn, "labels.l!=2") == {"p", "a-np", "v"}
    assert _keys(sn, "labels.l") == {"a", "v"}
    assert _keys(sn, 'parent!="",kind==active') == {"a"}
