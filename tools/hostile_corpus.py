#!/usr/bin/env python3
"""Write the hostile tar corpus and run it through every sink; print a markdown table.

    .venv/bin/python tools/hostile_corpus.py --out /var/tmp/lcow-hostile            # all cases
    .venv/bin/python tools/hostile_corpus.py --out DIR --cases dotdot-leading,fifo   # some
    .venv/bin/python tools/hostile_corpus.py --out DIR --write-only                  # just write
    .venv/bin/python tools/hostile_corpus.py --out DIR --mount --json report.json    # + kernel
    .venv/bin/python tools/hostile_corpus.py --out DIR --from-json report.json --compact

Each case runs in a fresh interpreter (``python -m tests.harness.hostile.run``) through the sinks
of ``tests.harness.hostile.sinks.SINKS`` — ``tar2ext4``, ``apply_diff``, ``import``, the plugin's
ApplyDiff and ``extract_archive`` of a host-backend view (root, loop devices, overlayfs, FUSE and
qemu-storage-daemon; judged by each case's ``extract_expect``). Per case and sink
the table gives the expected and actual outcome, the message, seconds and peak RSS, and the
verdict: the right error naming the entry with nothing left behind, or a layer that passes
``e2fsck -fn``, lcow's reader and the case's property (``--mount``: also through a read-only
kernel mount, needs root). Exits 1 if any case failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.harness; lcow from the environment (or PYTHONPATH)

from tests.harness.hostile.corpus import ALL_CASES, case_path, write_case  # noqa: E402
from tests.harness.hostile.reports import CaseReport, compact_table, markdown_table  # noqa: E402
from tests.harness.hostile.run import run_isolated  # noqa: E402
from tests.harness.hostile.sinks import SINKS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, write the corpus, run it, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="corpus directory")
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--sinks", default=",".join(SINKS), help="comma-separated sinks")
    parser.add_argument("--skip-slow", action="store_true", help="leave out the slow cases")
    parser.add_argument("--write-only", action="store_true", help="write the corpus and stop")
    parser.add_argument("--mount", action="store_true", help="also check through a kernel mount")
    parser.add_argument("--json", type=Path, help="also write the reports as JSON")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument(
        "--compact", action="store_true", help="one row per case instead of one per case and sink"
    )
    parser.add_argument(
        "--from-json", type=Path, help="print the table of an earlier --json report and exit"
    )
    args = parser.parse_args(argv)

    if args.from_json:
        old = [CaseReport.from_json(r) for r in json.loads(args.from_json.read_text())]
        print(compact_table(old) if args.compact else markdown_table(old))
        return 0
    if args.list:
        for case in ALL_CASES.values():
            slow = " (slow)" if case.slow else ""
            print(f"{case.name}: {case.description} -> {case.expect.outcome}{slow}")
        return 0
    names = [n for n in args.cases.split(",") if n] or list(ALL_CASES)
    unknown = [n for n in names if n not in ALL_CASES]
    if unknown:
        parser.error(f"unknown cases: {', '.join(unknown)}")
    if args.skip_slow:
        names = [n for n in names if not ALL_CASES[n].slow]
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = case_path(args.out, ALL_CASES[name])
        if not path.exists():
            write_case(args.out, ALL_CASES[name])
    if args.write_only:
        print(f"wrote {len(names)} cases to {args.out}")
        return 0

    sinks = [s for s in args.sinks.split(",") if s]
    reports: list[CaseReport] = []
    started = time.monotonic()
    for name in names:
        report = run_isolated(name, case_path(args.out, ALL_CASES[name]), sinks, mount=args.mount)
        reports.append(report)
        mark = "pass" if report.passed else "FAIL"
        print(f"{name}: {mark}", file=sys.stderr)
    print(compact_table(reports) if args.compact else markdown_table(reports))
    failed = [r.case for r in reports if not r.passed]
    runs = sum(len(r.sinks) for r in reports)
    print(
        f"\n{len(reports)} cases, {runs} sink runs, {len(failed)} failed "
        f"({time.monotonic() - started:.0f} s)" + (f": {', '.join(failed)}" if failed else "")
    )
    if args.json:
        args.json.write_text(json.dumps([r.to_json() for r in reports], indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
