#!/usr/bin/env python3
"""Load (hardening issue part 4): concurrent clients x mixed operations on the plugin socket and
on the Python API, with exact reference counts and memory sampled over time.

    sudo nice .venv/bin/python benchmarks/bench_load.py [--parts api,plugin] [--clients 32]
        [--ops 1000] [--keep 8] [--interval 0.5] [--work /var/tmp/lcow-load] [--out FILE.json]

Each of ``--clients`` threads does ``--ops`` operations (so 32 x 1,000 = 32,000 per part) in
cycles on a layer of its own over a shared base, alternating read-only cycles (Create,
ApplyDiff, Get of the shared layer, Exists, Get, Changes, DiffSize, Diff, GetMetadata, Status,
Put, Put of the shared layer, Remove) and writable ones (CreateReadWrite, Get of the sandbox, a
file written into the view, Changes, DiffSize, Diff, Put, Remove); every answer is checked
(:mod:`tests.harness.load`). ``--keep`` clients keep one Get of the shared layer. Host backend.

Part ``api`` — the threads share one ``Driver`` in a process of their own
(``python -m tests.harness.load api …``); its RSS is sampled from inside. Part ``plugin`` — the
threads (in this process) each hold a connection to ``lcow plugin serve`` running as its own
process; the server's RSS is sampled. Afterwards, for both: errors must be 0, and
``Driver.view_count`` of every layer must equal the sum of the clients' own tallies; then the
kept Gets are put back, Cleanup runs, and nothing may be left mounted, attached or running
under the work folder. Reported: operations/s, errors, count mismatches, RSS (sampled every
``--interval`` s) before the load, its peak in each quarter of the operations, at the end, and
its growth from the second quarter to the last (flat: at most 10 % or 16 MiB), latency
percentiles per operation, and the load average before and after. Exits 1 on any error,
mismatch, leftover or growing memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from tests.harness.crash.rootstate import host_leftovers  # noqa: E402
from tests.harness.load import run_plugin_load  # noqa: E402
from tests.harness.spawn import child_env, python_module  # noqa: E402


def log(message: str) -> None:
    print(f"[bench_load {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def api_part(work: Path, clients: int, ops: int, keep: int) -> dict[str, Any]:
    """The API load in a child process (its memory is the load's alone)."""
    home = work / "api-home"
    proc = subprocess.run(
        python_module("tests.harness.load", "api", str(home), str(clients), str(ops), str(keep)),
        capture_output=True, check=False, env=child_env(),
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"api load failed: {proc.stderr.decode(errors='replace')[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    result["leftovers"] = host_leftovers(work)
    return result


def plugin_part(work: Path, clients: int, ops: int, keep: int, interval: float) -> dict[str, Any]:
    """The plugin load: clients here, ``lcow plugin serve`` in its own process."""
    base = work / "plugin"
    base.mkdir()
    loaded, status = run_plugin_load(base, clients, ops, keep, interval)
    result = loaded.to_json()
    result["server_exit"] = status
    result["leftovers"] = host_leftovers(work)
    return result


def summary(name: str, result: dict[str, Any]) -> str:
    memory = result["memory_mib"]
    return (
        f"{name}: {result['clients']} clients x {result['ops_each']} = {result['ops']} ops in "
        f"{result['seconds']:.1f} s ({result['ops_per_second']:.0f}/s), "
        f"{len(result['errors'])} errors, {len(result['count_mismatches'])} count mismatches, "
        f"shared count {result['shared_count']}; RSS MiB before {memory['before']}, peak per "
        f"quarter {memory['quarters']}, end {memory['end']}, growth {memory['growth']} "
        f"({'flat' if memory['flat'] else 'GROWING'}); leftovers {result['leftovers']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="api,plugin")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--ops", type=int, default=1000, help="operations per client")
    parser.add_argument("--keep", type=int, default=8)
    parser.add_argument("--interval", type=float, default=0.5, help="RSS sampling (s)")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/lcow-load"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "load_before": os.getloadavg(),
        }
    }
    failed = False
    for part in args.parts.split(","):
        log(f"{part}: {args.clients} clients x {args.ops} operations")
        if part == "api":
            result = api_part(args.work, args.clients, args.ops, args.keep)
        elif part == "plugin":
            result = plugin_part(args.work, args.clients, args.ops, args.keep, args.interval)
        else:
            raise SystemExit(f"unknown part {part}")
        report[part] = result
        log(summary(part, result))
        failed |= bool(result["errors"] or result["count_mismatches"] or result["leftovers"])
        failed |= not result["memory_mib"]["flat"]
    report["machine"]["load_after"] = os.getloadavg()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    if not failed:
        shutil.rmtree(args.work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
