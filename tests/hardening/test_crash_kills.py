"""Crash safety under SIGKILL, CI-sized (hardening issue part 3; the full run is
``tools/crash_harness.py``, results in ``benchmarks/RELIABILITY.md``).

:func:`tests.harness.crash.harness.run_kills` kills a child process doing ApplyDiff,
CreateReadWrite, Remove, ``lcow import`` and (host backend) Get and Put at random moments; after
each kill a fresh process opens the driver, checks the counts it adopts, runs Cleanup and
verifies that every layer is whole or absent (``e2fsck -fn``, ``qemu-img check``, content read
back through ``Driver.diff``), nothing is mounted, attached or running, and Get/Put still works.
Plus kill-at-a-point regressions for what the harness found.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from lcow.backends.host import STATE_FOLDER, kernel
from lcow.graphdriver.driver import Driver
from tests.harness.crash.fixtures import write_layer_tar
from tests.harness.crash.harness import run_kills
from tests.harness.crash.rootstate import attached_loops, settled_leftovers, temporaries
from tests.helpers import host_leftovers, requires

KILLS = int(os.environ.get("LCOW_CRASH_KILLS", "30"))
SEED = int(os.environ.get("LCOW_CRASH_SEED", "20261128"))


@requires("host", "mke2fs", "e2fsck", "qemu-img")
@pytest.mark.slow
def test_sigkills_leave_layers_whole_or_absent(tmp_path: Path) -> None:
    """30 kills over both backends and every operation: no finding, nothing left."""
    started = time.monotonic()
    campaign = run_kills(tmp_path / "crash", KILLS, seed=SEED, scale=0.5, calibration_runs=1)
    elapsed = time.monotonic() - started
    table = campaign.table()
    print(f"\n{len(campaign.kills)} kills (+{campaign.unkilled} unkilled) in {elapsed:.0f} s")
    for name, row in table.items():
        print(f"  {name}: {row['kills']} kills, {dict(row['phases'])}, {dict(row['outcomes'])}")
    assert not campaign.problems, "\n".join(campaign.problems)
    assert len(campaign.kills) == KILLS
    assert len(table) == 10  # 4 operations on userspace, 6 on host
    phases = Counter(k.phase for k in campaign.kills)
    assert phases["in flight"] >= KILLS // 2, phases
    assert host_leftovers(tmp_path) == []
    assert temporaries(tmp_path) == []


@requires("host", "mke2fs", "e2fsck", "qemu-img")
@pytest.mark.slow
def test_sigkills_of_a_lingering_front_end_leave_layers_whole_or_absent(tmp_path: Path) -> None:
    """The host operations again, each child lingering as the plugin and the snapshotter do:
    a killed front end leaves idle sandboxes mounted and deletions half done."""
    kills = max(6, KILLS // 2)
    campaign = run_kills(tmp_path / "crash", kills, backends=("host",), seed=SEED + 1,
                         scale=0.5, calibration_runs=1, linger=60)  # fmt: skip
    assert not campaign.problems, "\n".join(campaign.problems)
    assert len(campaign.kills) == kills
    assert len(campaign.table()) == 6
    assert host_leftovers(tmp_path) == []
    assert temporaries(tmp_path) == []


# -- kills at chosen points --------------------------------------------------------------------

# python -c AT_POINT ROOT LAYER: SIGKILL itself when the host backend renames its mount table
# into place (after writing the temporary), in the middle of a Get.
AT_POINT = r"""
import os, signal, sys
from lcow.graphdriver.driver import Driver

real_replace = os.replace

def replace(src, dst, *rest, **kwargs):
    if str(dst).endswith("/mounts/state.json"):
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst, *rest, **kwargs)

driver = Driver(sys.argv[1], ["lcow.backend=host"])
os.replace = replace
driver.get(sys.argv[2])
sys.exit(3)
"""


@requires("host")
def test_kill_while_saving_the_mount_table_leaves_no_temporary(tmp_path: Path) -> None:
    """Found by the harness: a process killed between writing ``mounts/.state.json.tmp-<pid>``
    and renaming it left the temporary for good; now the next save replaces it."""
    root = tmp_path / "root"
    driver = Driver(root, ["lcow.backend=host"])
    driver.create("base")
    driver.apply_diff("base", None, write_layer_tar(tmp_path / "l.tar", 1, dirs=2, files=3))
    proc = subprocess.run(
        [sys.executable, "-c", AT_POINT, str(root), "base"], capture_output=True, check=False
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode(errors="replace")[-2000:]
    again = Driver(root, ["lcow.backend=host"])  # reconciles: the unrecorded mount is undone
    try:
        assert temporaries(root) == []
        state = json.loads((root / "mounts" / "state.json").read_bytes())
        assert state["views"] == {} and state["disks"] == {}
        assert host_leftovers(root) == []
        view = again.get("base")
        assert {i.name for i in view.readdir("/")} >= {"s1", "opaque"}
        again.put("base")
    finally:
        again.cleanup()
    assert host_leftovers(root) == []


# python -c AFTER_RENAME ROOT LAYER TAR: SIGKILL itself right after ApplyDiff renamed the new
# layer.vhd into place, before it deletes the sandbox the layer had.
AFTER_RENAME = r"""
import os, signal, sys
from lcow.graphdriver.driver import Driver

real_replace = os.replace

def replace(src, dst, *rest, **kwargs):
    real_replace(src, dst, *rest, **kwargs)
    if str(dst).endswith("/layer.vhd"):
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
Driver(sys.argv[1]).apply_diff(sys.argv[2], None, sys.argv[3])
sys.exit(3)
"""


@requires("mke2fs")
def test_kill_after_apply_diff_replaced_a_sandbox_leaves_no_stale_sandbox(tmp_path: Path) -> None:
    """Found by review of the harness's checks: ApplyDiff over a layer with a sandbox renames
    ``layer.vhd`` into place, then deletes ``sandbox.vhdx``; killed in between, the shadowed
    sandbox (20 GB virtual, never read again: ``layer.vhd`` wins) stayed for good. Cleanup
    now deletes it."""
    root = tmp_path / "root"
    tar = write_layer_tar(tmp_path / "l.tar", 1, dirs=2, files=3)
    Driver(root).create_read_write("rw", None, None)
    proc = subprocess.run(
        [sys.executable, "-c", AFTER_RENAME, str(root), "rw", str(tar)],
        capture_output=True, check=False,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode(errors="replace")[-2000:]
    assert (root / "rw" / "sandbox.vhdx").exists()  # the window the kill hit
    driver = Driver(root)
    driver.cleanup()
    assert sorted(os.listdir(root / "rw")) == ["layer.vhd", "layerchain.json", "lcow-layer.json"]
    assert {i.name for i in driver.get("rw").readdir("/")} == {"s1", "opaque"}
    driver.put("rw")
    assert temporaries(root) == []


# python -c FROZEN ROOT LAYER: Get the layer and write to its sandbox, then read its Changes
# (a mounted sandbox is frozen while it is read) and SIGKILL itself as soon as the sandbox is
# frozen (a kill anywhere in the freeze ioctl ends there too: the ioctl completes first). A Put
# freezes only a sandbox another mount still holds; the same thaw-first rule covers it.
FROZEN = r"""
import os, signal, sys
from lcow.backends.host import kernel
from lcow.graphdriver.driver import Driver

driver = Driver(sys.argv[1], ["lcow.backend=host"])
view = driver.get(sys.argv[2])
with open(os.path.join(view.path, "written"), "wb") as f:
    f.write(b"before the kill")
real_freeze = kernel.freeze

def freeze(mountpoint):
    real_freeze(mountpoint)
    os.kill(os.getpid(), signal.SIGKILL)

kernel.freeze = freeze
driver.changes(sys.argv[2])
sys.exit(3)
"""


def _frozen(mountpoint: Path) -> bool:
    """Whether the filesystem mounted at ``mountpoint`` is frozen (the kernel refuses a
    second freeze); one that is not is left as it was."""
    try:
        kernel.freeze(mountpoint)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return True
        raise
    kernel.thaw(mountpoint)
    return False


def _kill_while_frozen(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A data root whose sandbox ``rw`` a killed reader left mounted and frozen; the loop
    devices then attached below it."""
    root = tmp_path / "root"
    Driver(root, ["lcow.backend=host"]).create_read_write("rw", None, None)
    proc = subprocess.run(
        [sys.executable, "-c", FROZEN, str(root), "rw"], capture_output=True, check=False
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode(errors="replace")[-2000:]
    devices = attached_loops(root)
    assert len(devices) == 1, devices  # the sandbox's, on the storage daemon's export
    assert _frozen(root / STATE_FOLDER / "d" / "0")
    return root, devices


@requires("host", "mke2fs")
def test_a_put_killed_while_the_sandbox_is_frozen_leaves_no_superblock(tmp_path: Path) -> None:
    """Found by the crash campaign (two per run): a Put killed between freezing its sandbox
    and thawing it left the ext4 frozen (a read of a mounted sandbox freezes it too; a Put
    now only when another mount holds it); Cleanup unmounted it, but a frozen superblock
    holds itself alive, so the ext4, its loop device and the dead FUSE export file it sat on
    stayed for good (``losetup``: backing ``/``). Now the next process thaws it first."""
    root, devices = _kill_while_frozen(tmp_path)
    driver = Driver(root, ["lcow.backend=host"])
    driver.cleanup()
    left, _ = settled_leftovers(root, devices=devices)
    assert left == []
    view = driver.get("rw")
    try:
        assert Path(view.path, "written").read_bytes() == b"before the kill"
    finally:
        driver.put("rw")
    assert settled_leftovers(root, devices=devices)[0] == []


@requires("host", "mke2fs")
def test_a_view_adopted_after_a_kill_while_frozen_is_writable(tmp_path: Path) -> None:
    """The same kill, then a process that adopts the view (its count was still taken): the
    sandbox is thawed when the table is adopted, or writes to the view would block for good."""
    root, devices = _kill_while_frozen(tmp_path)
    driver = Driver(root, ["lcow.backend=host"])
    try:
        assert driver.view_count("rw") == 1
        assert not _frozen(root / STATE_FOLDER / "d" / "0")
    finally:
        driver.cleanup()
    assert settled_leftovers(root, devices=devices)[0] == []
