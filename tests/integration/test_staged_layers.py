"""Staged layers (``Driver.stage`` / ``apply_diff_staged`` / ``publish``): a layer built out of
sight shows whole or not at all, bottom-up, durably; Cleanup sweeps a stage only once no writer
holds its layer's lock. Oracles: the driver's own listing, ``e2fsck -fn``, another process's
lock, and ``strace`` for the order of syncs and the rename."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from lcow.errors import AlreadyExists, NotFound
from lcow.graphdriver.driver import Driver
from tests.helpers import (
    LockHeldElsewhere,
    TarEntry,
    assert_e2fsck_clean,
    requires,
    run,
    write_tar,
)


def _tar(tmp_path: Path, name: str) -> Path:
    return write_tar(
        tmp_path / f"{name}.tar",
        [TarEntry(name, kind="dir", mode=0o755), TarEntry(f"{name}/f", data=name.encode() * 999)],
    )


def _stages(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if ".tmp-" in p.name)


def test_a_staged_layer_shows_only_when_published_whole(tmp_path: Path) -> None:
    driver = Driver(str(tmp_path / "root"), ["lcow.backend=userspace"])
    staged = driver.stage("base", None)
    size = driver.apply_diff_staged(staged, _tar(tmp_path, "base"), verify=lambda: {"x": 1})
    assert size > 0
    assert not driver.exists("base")
    assert driver.root.layer_ids() == []
    driver.publish(staged)
    assert driver.exists("base")
    assert driver.root.layer_ids() == ["base"]
    assert driver.root.read_meta("base")["x"] == 1  # what verify returned, with the image
    assert_e2fsck_clean(driver.root.layer_dir("base") / "layer.vhd")
    assert _stages(driver.root.root) == []
    with pytest.raises(AlreadyExists):
        driver.stage("base", None)


def test_a_child_is_published_only_over_its_parent(tmp_path: Path) -> None:
    driver = Driver(str(tmp_path / "root"), ["lcow.backend=userspace"])
    base = driver.stage("base", None)
    child = driver.stage("child", "base")
    driver.apply_diff_staged(child, _tar(tmp_path, "child"))  # converted first, in any order
    with pytest.raises(NotFound):
        driver.publish(child)
    assert not driver.exists("child")
    driver.apply_diff_staged(base, _tar(tmp_path, "base"))
    driver.publish(base)
    driver.publish(child)
    assert driver.root.read_chain("child") == [driver.root.layer_dir("base")]
    view = driver.get("child")
    try:
        assert view.readfile("/base/f") == b"base" * 999
        assert view.readfile("/child/f") == b"child" * 999
    finally:
        driver.put("child")


def test_a_layer_that_appeared_meanwhile_wins(tmp_path: Path) -> None:
    driver = Driver(str(tmp_path / "root"), ["lcow.backend=userspace"])
    staged = driver.stage("l1", None)
    driver.apply_diff_staged(staged, _tar(tmp_path, "staged"))
    driver.create("l1", None)
    driver.apply_diff("l1", None, _tar(tmp_path, "other"))
    before = (driver.root.layer_dir("l1") / "layer.vhd").read_bytes()
    with pytest.raises(AlreadyExists):
        driver.publish(staged)
    assert (driver.root.layer_dir("l1") / "layer.vhd").read_bytes() == before
    assert _stages(driver.root.root) == []


def test_cleanup_sweeps_a_stage_only_when_its_lock_is_free(tmp_path: Path) -> None:
    root = tmp_path / "root"
    driver = Driver(str(root), ["lcow.backend=userspace"])
    staged = driver.stage("l1", None)
    driver.apply_diff_staged(staged, _tar(tmp_path, "l1"))
    with LockHeldElsewhere(root, "l1") as holder:
        Driver(str(root), ["lcow.backend=userspace"]).cleanup()  # another driver: a writer's
        assert _stages(root) == [staged.folder.name]
        holder.release()
    Driver(str(root), ["lcow.backend=userspace"]).cleanup()  # the writer died: garbage
    assert _stages(root) == []
    assert not driver.exists("l1")


_PUBLISH = """
import sys
from lcow.graphdriver.driver import Driver
driver = Driver(sys.argv[1], ["lcow.backend=userspace"])
staged = driver.stage("l1", None)
driver.apply_diff_staged(staged, sys.argv[2])
print(staged.folder, flush=True)
driver.publish(staged)
"""


@requires("strace")
def test_publish_syncs_the_layer_before_its_one_rename_and_the_root_after(tmp_path: Path) -> None:
    root, trace = tmp_path / "root", tmp_path / "strace.log"
    proc = run(
        [
            "strace", "-f", "-qq", "-y", "-o", trace,
            "-e", "trace=rename,renameat,renameat2,fsync,fdatasync",
            sys.executable, "-c", _PUBLISH, root, _tar(tmp_path, "l1"),
        ]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    stage, folder = proc.stdout.strip(), str(root / "l1")
    calls = [line.split(None, 1)[1] for line in trace.read_text().splitlines() if "(" in line]
    renames = [i for i, call in enumerate(calls) if call.startswith("rename") and folder in call]
    (rename,) = [i for i in renames if re.findall(r'"([^"]*)"', calls[i])[-1] == folder]
    assert re.findall(r'"([^"]*)"', calls[rename])[0] == stage

    def synced(path: str) -> list[int]:
        return [i for i, call in enumerate(calls) if re.match(rf"f(data)?sync\(\d+<{path}>", call)]

    assert [i for i in synced(re.escape(stage)) if i < rename], "stage folder not synced first"
    assert [
        i for i in synced(re.escape(f"{stage}/.layerchain.json.tmp-") + "[0-9a-f]+") if i < rename
    ]
    assert [i for i in synced(re.escape(str(root))) if i > rename], "rename not made durable"
