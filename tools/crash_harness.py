#!/usr/bin/env python3
"""SIGKILL driver operations at random moments and check that recovery leaves every layer whole
or absent, nothing mounted, attached or running (hardening issue, part 3).

    sudo nice .venv/bin/python tools/crash_harness.py [--kills 240] [--backends userspace,host]
        [--ops apply_diff,create_rw,remove,import,get,put] [--seed N] [--scale 1.0]
        [--work /var/tmp/lcow-crash] [--out FILE.json] [--markdown]

Kills are spread round robin over every (backend, operation) pair; ``get`` and ``put`` exist only
on the host backend (which needs root, loop devices, overlayfs and qemu-storage-daemon). What one
kill does and checks is described in :mod:`tests.harness.crash`. Prints a progress line per kill
on stderr and a summary per (backend, operation) on stdout (``--markdown``: as a table); exits 1
when any kill found a problem.
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

from tests.harness.crash.harness import run_kills  # noqa: E402
from tests.harness.crash.records import Campaign, KillRecord  # noqa: E402


def _progress(record: KillRecord) -> None:
    status = "ok" if not record.problems else f"{len(record.problems)} PROBLEMS"
    print(
        f"[{time.strftime('%H:%M:%S')}] kill {record.number:3d} {record.backend:9s} "
        f"{record.op:10s} {record.variant:22s} {record.delay_ms:8.2f} ms {record.phase:10s} "
        f"-> {record.outcome} ({record.recover_seconds:.2f} s) {status}",
        file=sys.stderr,
        flush=True,
    )
    for problem in record.problems:
        print(f"    {problem}", file=sys.stderr, flush=True)


def _markdown(campaign: Campaign) -> str:
    lines = [
        "| backend | operation | kills | in flight | after done | outcomes | problems |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for name, row in campaign.table().items():
        backend, op = name.split(" ", 1)
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(row["outcomes"].items()))
        lines.append(
            f"| {backend} | {op} | {row['kills']} | {row['phases'].get('in flight', 0)} | "
            f"{row['phases'].get('after done', 0)} | {outcomes} | {row['problems']} |"
        )
    return "\n".join(lines)


def _machine() -> dict[str, Any]:
    def version(argv: list[str]) -> str:
        if shutil.which(argv[0]) is None:
            return ""
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        return (done.stdout or done.stderr).splitlines()[0] if done.stdout or done.stderr else ""

    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "qemu": version(["qemu-storage-daemon", "--version"]),
        "e2fsprogs": version(["e2fsck", "-V"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=240)
    parser.add_argument("--backends", default="userspace,host")
    parser.add_argument("--ops", default=None, help="comma-separated (default: all)")
    parser.add_argument("--seed", type=int, default=20261128)
    parser.add_argument("--scale", type=float, default=1.0, help="size of the tars and image")
    parser.add_argument(
        "--calibration-runs",
        type=int,
        default=3,
        help="unkilled runs per operation variant, to learn its duration",
    )
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/lcow-crash"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument(
        "--linger",
        type=float,
        default=0,
        help="seconds: each child lingers as the plugin does (Driver.linger)",
    )
    args = parser.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    campaign = run_kills(
        args.work,
        args.kills,
        backends=args.backends.split(","),
        ops=args.ops.split(",") if args.ops else None,
        seed=args.seed,
        scale=args.scale,
        calibration_runs=args.calibration_runs,
        progress=_progress,
        linger=args.linger,
    )
    report = {"machine": _machine(), **campaign.to_json()}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        print(_markdown(campaign))
    else:
        print(json.dumps({k: v for k, v in report.items() if k != "records"}, indent=1))
    print(
        f"{len(campaign.kills)} kills (+{campaign.unkilled} unkilled calibration runs) in "
        f"{campaign.seconds:.0f} s, {len(campaign.problems)} "
        f"problems; load average {campaign.load}",
        file=sys.stderr,
    )
    for problem in campaign.problems:
        print(f"PROBLEM {problem}", file=sys.stderr)
    return 1 if campaign.problems else 0


if __name__ == "__main__":
    sys.exit(main())
