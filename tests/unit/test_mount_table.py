"""The host backend's mount table file: round trip, reboots, damage (no mounts needed)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from lcow.backends.host.table import DiskEntry, MountState, MountTable, ViewEntry, boot_id
from lcow.errors import CorruptImage


def _table(tmp_path: Path) -> MountTable:
    return MountTable(tmp_path)


def test_transactions_persist(tmp_path: Path) -> None:
    table = _table(tmp_path)
    with table.transaction() as state:
        state.disks["base:12"] = DiskEntry("0", "/r/base/layer.vhd", False, "/dev/loop3", False)
        state.views["base"] = ViewEntry("d/0", False, ["base:12"], count=2)
    again = _table(tmp_path).peek()
    assert again.disks["base:12"].device == "/dev/loop3"
    assert again.views["base"].count == 2 and again.boot_id == boot_id()


def test_nested_transactions_share_one_state(tmp_path: Path) -> None:
    table = _table(tmp_path)
    with table.transaction() as outer, table.transaction() as inner:  # no self-deadlock
        assert inner is outer
        inner.views["x"] = ViewEntry("v/x", True, [])
    assert "x" in table.peek().views


def test_other_threads_wait_for_the_lock(tmp_path: Path) -> None:
    table = _table(tmp_path)
    order: list[str] = []
    with table.transaction():
        worker = threading.Thread(target=lambda: _record(table, order))
        worker.start()
        worker.join(0.2)
        assert worker.is_alive()  # blocked on the flock
        order.append("outer")
    worker.join(5)
    assert order == ["outer", "inner"]


def _record(table: MountTable, order: list[str]) -> None:
    with table.transaction():
        order.append("inner")


def test_another_boot_starts_empty(tmp_path: Path) -> None:
    stale = MountState("another-boot", views={"x": ViewEntry("v/x", True, [])})
    (tmp_path / "state.json").write_bytes(stale.to_json())
    assert _table(tmp_path).peek().views == {}


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"{",
        b"[]",
        b'{"version": 99}',
        b"[" * 100_000 + b"]" * 100_000,
        json.dumps(
            {"version": 1, "boot_id": "b", "disks": {"k": {"slot": 1}}, "views": {}}
        ).encode(),
    ],
    ids=["empty", "truncated", "array", "version", "deep", "fields"],
)
def test_damage_is_reported_then_starts_afresh(tmp_path: Path, text: bytes) -> None:
    with pytest.raises(CorruptImage):
        MountState.from_json(text)
    (tmp_path / "state.json").write_bytes(text)
    assert _table(tmp_path).peek().disks == {}
