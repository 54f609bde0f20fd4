"""Load, CI-sized (hardening issue part 4; the full 32 x 1,000 run is
``benchmarks/bench_load.py``, results in ``benchmarks/RELIABILITY.md``).

8 clients x 50 mixed operations (:mod:`tests.harness.load`: Create/ApplyDiff or
CreateReadWrite with a write through the view, Gets of their own and of a shared layer,
Changes, DiffSize, Diff, queries, Puts, Remove; every answer checked) through the Python API
(threads sharing one host-backend Driver) and through the plugin socket (``lcow plugin serve``
as its own process). No errors; ``Driver.view_count`` equals the clients' own tallies for every
layer; memory bounded; nothing left mounted, attached or running afterwards.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.harness.load import run_plugin_load
from tests.harness.spawn import child_env, python_module
from tests.helpers import host_leftovers, requires

pytestmark = requires("host", "mke2fs")

CLIENTS, OPS, KEEP = 8, 50, 2
RSS_LIMIT_MIB = 400  # an interpreter with lcow is ~40 MiB; a leak per operation would show


def test_api_load_counts_exact(tmp_path: Path) -> None:
    """Threads sharing one Driver; run in a process of its own so its RSS is the load's."""
    proc = subprocess.run(
        python_module("tests.harness.load", "api", str(tmp_path / "home"),
                      str(CLIENTS), str(OPS), str(KEEP)),
        capture_output=True, check=False, timeout=300, env=child_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    result = json.loads(proc.stdout)
    assert result["ops"] == CLIENTS * OPS
    assert result["errors"] == []
    assert result["count_mismatches"] == {}
    assert result["shared_count"] >= KEEP  # plus Gets a quota cut short before their Put
    assert result["memory_mib"]["peak"] < RSS_LIMIT_MIB, result["memory_mib"]
    assert host_leftovers(tmp_path) == []


def test_plugin_load_counts_exact(tmp_path: Path) -> None:
    """Connections to ``lcow plugin serve``; counts read from the data root's mount table."""
    result, status = run_plugin_load(tmp_path, CLIENTS, OPS, KEEP, interval=0.2)
    assert status == 0
    assert result.ops == CLIENTS * OPS
    assert result.errors == []
    assert result.count_mismatches == {}
    assert result.shared_count >= KEEP
    assert result.memory["peak"] < RSS_LIMIT_MIB, result.memory
    assert result.latencies["Get"]["n"] >= CLIENTS
    assert host_leftovers(tmp_path) == []
