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

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from lcow.graphdriver.driver import Driver
from tests.harness.crash.fixtures import write_layer_tar
from tests.harness.crash.harness import run_kills
from tests.harness.crash.rootstate import temporaries
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
