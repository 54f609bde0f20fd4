#!/usr/bin/env python3
"""Mutation fuzz of layer images through every reader (RELIABILITY.md, section 6).

    .venv/bin/python tools/reader_fuzz.py [--cases 5000] [--seed 20261206]
        [--seeds mixed,inline,bigdir,extents,verity] [--readers walk,cat,...] [--timeout 20]
        [--rss-mib 1024] [--work /var/tmp/lcow-readerfuzz] [--out report.json] [--markdown]
        [--minimise] [--findings DIR]
    .venv/bin/python tools/reader_fuzz.py --replay FINDING.json [--readers R,...]

Seeds, mutants and readers are described in ``tests/readerfuzz``: each case is one mutant of one
seed image, run through every reader in a forked child; a reader passes with a result or an
``LcowError`` with a message, and fails with any other exception (``crash``), no outcome within
``--timeout`` seconds (``hang``), a dead child (``died``) or a peak RSS past ``--rss-mib``
(``memory``). Prints progress on stderr and a per-reader table at the end (``--markdown``: as
Markdown); ``--out`` keeps the counts and every finding with its mutant; ``--findings DIR``
writes each finding (minimised first with ``--minimise``) as a JSON file that ``--replay`` and
``tests/hardening/test_reader_fuzz.py`` read back. Exit status 1 when anything failed.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.readerfuzz; lcow from the environment (or PYTHONPATH)

from tests.readerfuzz.campaign import Fuzzer, minimise_finding, summarise  # noqa: E402
from tests.readerfuzz.mutate import Mutant  # noqa: E402
from tests.readerfuzz.readers import READERS  # noqa: E402
from tests.readerfuzz.seeds import SEEDS  # noqa: E402


def _table(summary: dict[str, Any], markdown: bool) -> str:
    outcomes = sorted({o for counts in summary["per_reader"].values() for o in counts})
    rows = [["reader", *outcomes, "slowest s"]]
    for reader, counts in summary["per_reader"].items():
        slowest = f"{summary['slowest_seconds'][reader]:.2f}"
        rows.append([reader, *(str(counts.get(o, 0)) for o in outcomes), slowest])
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=20261206, help="random seed of the campaign")
    ap.add_argument("--seeds", default=",".join(SEEDS), help="seed images to mutate")
    ap.add_argument("--readers", default=",".join(READERS))
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per reader")
    ap.add_argument("--rss-mib", type=int, default=1024, help="peak RSS budget per case")
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/lcow-readerfuzz"))
    ap.add_argument("--out", type=Path, default=None, help="JSON report")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--minimise", action="store_true", help="minimise findings (slow)")
    ap.add_argument("--findings", type=Path, default=None, help="write findings here")
    ap.add_argument("--replay", type=Path, default=None, help="run one saved finding")
    args = ap.parse_args()
    readers = args.readers.split(",")
    if args.replay:
        saved = json.loads(args.replay.read_text())
        mutant = Mutant.from_json(saved["mutant"])
        fuzzer = Fuzzer(args.work, seeds=[mutant.seed], readers=readers, timeout=args.timeout)
        result = fuzzer.run(0, mutant)
        for reader, (outcome, detail, seconds) in result.outcomes.items():
            print(f"{reader:9s} {outcome:16s} {seconds:6.2f} s  {detail[-300:]!r}")
        return 1 if result.failures else 0

    started = time.monotonic()
    fuzzer = Fuzzer(
        args.work,
        seeds=args.seeds.split(","),
        readers=readers,
        timeout=args.timeout,
        rss_budget_mib=args.rss_mib,
    )
    rng = random.Random(args.seed)
    results = []
    for number in range(args.cases):
        result = fuzzer.run(number, fuzzer.draw(rng))
        results.append(result)
        for reader, (outcome, detail, _) in result.failures.items():
            print(f"case {number}: {reader}: {outcome}: {detail[-400:]}", file=sys.stderr)
        if (number + 1) % 250 == 0:
            failed = sum(len(r.failures) for r in results)
            print(
                f"[{time.strftime('%H:%M:%S')}] {number + 1} cases, {failed} failures, "
                f"{time.monotonic() - started:.0f} s",
                file=sys.stderr,
            )
    summary = summarise(results, readers)
    summary.update(
        {
            "seed": args.seed,
            "seeds": args.seeds.split(","),
            "timeout": args.timeout,
            "rss_budget_mib": args.rss_mib,
            "seconds": round(time.monotonic() - started, 1),
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }
    )
    if args.findings and summary["findings"]:
        args.findings.mkdir(parents=True, exist_ok=True)
        for k, finding in enumerate(summary["findings"]):
            if args.minimise:
                mutant = Mutant.from_json(finding["mutant"])
                small = minimise_finding(fuzzer, mutant, finding["reader"])
                finding["minimised"] = small.to_json()
            name = f"{finding['reader']}-{finding['outcome']}-{k:03d}.json"
            (args.findings / name).write_text(json.dumps(finding, indent=1) + "\n")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(_table(summary, args.markdown))
    print(
        f"\n{summary['cases']} cases (seed {args.seed}), {summary['failures']} failures, "
        f"peak RSS {summary['max_rss_mib']} MiB, {summary['seconds']} s"
    )
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
