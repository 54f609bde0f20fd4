#!/usr/bin/env python3
"""Run the atheris harnesses of ``fuzz/`` for a number of executions each; report the figures.

    .venv/bin/python tools/fuzz.py --runs 200000                      # every harness
    .venv/bin/python tools/fuzz.py --runs 5000 --harness vhdx,layerchain
    .venv/bin/python tools/fuzz.py --runs 200000 --merge              # keep new coverage

Needs the ``fuzz`` extra (``pip install -e '.[fuzz]'``). Harnesses run one at a time under
``nice``, each as ``python fuzz/fuzz_<name>.py -runs=N`` over a scratch corpus seeded from the
committed ``fuzz/corpus/<name>/`` (``--merge`` folds inputs that add coverage back into it).
A finding — an exception other than ``LcowError``, a hang past ``--timeout`` seconds or RSS past
``--rss-limit-mb`` — stops that harness and is saved under ``--artifacts`` (default
``fuzz/findings/``); turn each into a file of ``fuzz/regressions/<name>/`` once fixed. Prints
a markdown table (executions, seconds, rate, findings) and exits 1 if anything was found.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
HARNESSES = (
    "tar_reader",
    "tarscan",
    "ext4_reader",
    "vhd_footer",
    "vhdx",
    "layerchain",
    "plugin_request",
)

_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_STATUS = re.compile(r"^#(\d+)\s", re.MULTILINE)
_UNITS = re.compile(r"stat::number_of_executed_units: (\d+)")


@dataclass
class HarnessRun:
    """What one harness did."""

    harness: str
    runs: int = 0
    seconds: float = 0.0
    exit_code: int = 0
    findings: list[str] = field(default_factory=list)
    corpus: int = 0

    @property
    def rate(self) -> float:
        """Executions per second."""
        return self.runs / self.seconds if self.seconds else 0.0


def executions(log: str) -> int:
    """Executions libFuzzer reports (final stats, ``Done``, or the last status line)."""
    for pattern in (_UNITS, _DONE, _STATUS):
        found = pattern.findall(log)
        if found:
            last = found[-1]
            return int(last[0] if isinstance(last, tuple) else last)
    return 0


def run_harness(
    name: str, runs: int, *, timeout: int, rss_mb: int, artifacts: Path, merge: bool, nice: int
) -> HarnessRun:
    """Fuzz one harness for ``runs`` executions."""
    seeds = FUZZ / "corpus" / name
    artifacts.mkdir(parents=True, exist_ok=True)
    before = set(artifacts.glob(f"{name}-*"))
    result = HarnessRun(name)
    with tempfile.TemporaryDirectory(prefix=f"lcow-fuzz-{name}-") as work:
        argv = [
            "nice", "-n", str(nice), sys.executable, str(FUZZ / f"fuzz_{name}.py"),
            f"-runs={runs}", f"-timeout={timeout}", f"-rss_limit_mb={rss_mb}",
            f"-artifact_prefix={artifacts}/{name}-", "-print_final_stats=1", work, str(seeds),
        ]  # fmt: skip
        started = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", check=False)
        result.seconds = round(time.monotonic() - started, 1)
        result.exit_code = proc.returncode
        log = proc.stdout + proc.stderr
        (artifacts / f"{name}.log").write_text(log[-200_000:])
        result.runs = executions(log)
        result.findings = sorted(str(p) for p in set(artifacts.glob(f"{name}-*")) - before)
        result.findings = [f for f in result.findings if not f.endswith(".log")]
        if proc.returncode != 0 and not result.findings:
            result.findings.append(f"exit {proc.returncode} without an artifact (see {name}.log)")
        if merge:
            # libFuzzer's merge re-runs the harness script itself (``#!/usr/bin/env python3``):
            # put this interpreter first on PATH
            env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
            subprocess.run(
                [sys.executable, str(FUZZ / f"fuzz_{name}.py"), "-merge=1", str(seeds), work],
                capture_output=True, check=False, env=env,
            )  # fmt: skip
        result.corpus = sum(1 for _ in seeds.iterdir())
    return result


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the harnesses one after the other, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000, help="executions per harness")
    parser.add_argument("--harness", default=",".join(HARNESSES), help="comma-separated names")
    parser.add_argument("--timeout", type=int, default=20, help="seconds one input may take")
    parser.add_argument("--rss-limit-mb", type=int, default=2048, help="memory limit")
    parser.add_argument("--artifacts", type=Path, default=FUZZ / "findings")
    parser.add_argument("--merge", action="store_true", help="merge new coverage into the corpus")
    parser.add_argument("--nice", type=int, default=10, help="niceness of the fuzzers")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    names = [n for n in args.harness.split(",") if n]
    unknown = [n for n in names if n not in HARNESSES]
    if unknown:
        parser.error(f"unknown harnesses: {', '.join(unknown)} (have {', '.join(HARNESSES)})")

    results = []
    for name in names:
        result = run_harness(
            name, args.runs, timeout=args.timeout, rss_mb=args.rss_limit_mb,
            artifacts=args.artifacts, merge=args.merge, nice=args.nice,
        )  # fmt: skip
        results.append(result)
        print(f"{name}: {result.runs} runs, {len(result.findings)} findings", file=sys.stderr)
    print("| harness | executions | seconds | exec/s | findings | corpus files |")
    print("|---|---:|---:|---:|---|---:|")
    for r in results:
        found = ", ".join(Path(f).name for f in r.findings) or "none"
        print(
            f"| {r.harness} | {r.runs:,} | {r.seconds:.0f} | {r.rate:,.0f} | {found} | {r.corpus} |"
        )
    total = sum(r.runs for r in results)
    print(f"\n{total:,} executions in total, {sum(len(r.findings) for r in results)} findings")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 1 if any(r.findings for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
