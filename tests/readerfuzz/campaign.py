"""Run mutants through every reader, each case in a forked child with time and memory budgets.

The parent imports lcow and builds the seeds, their structure maps and one data root per seed
(:func:`prepare`), then for each case writes the mutant over ``root/m/layer.vhd`` and forks a
child that runs the readers one after another, reporting each start and outcome on a pipe. The
parent gives every reader ``timeout`` seconds from its start: past it the child is killed, the
reader recorded as a ``hang``, and a new child runs the readers left. A child is also limited in
address space (``RLIMIT_AS``; an allocation past it is a ``MemoryError``, a crash) and in the size
of files it writes (``RLIMIT_FSIZE``), and its peak RSS (``wait4``) must stay within
``rss_budget``. Forking a warm parent costs milliseconds where a fresh interpreter would cost a
third of a second per case.

Failures — ``crash``, ``hang``, ``died`` (killed by a signal), ``memory``, ``empty-message`` —
are kept as findings with their mutant, and can be minimised (:func:`minimise_finding`).
"""

from __future__ import annotations

import io
import json
import os
import random
import resource
import select
import shutil
import signal
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lcow.formats.ext4.reader import Ext4Reader
from lcow.graphdriver.driver import Driver
from tests.readerfuzz.mutate import Mutant, apply, minimise, mutate
from tests.readerfuzz.readers import LAYER, PARENT, READERS, Target, run_reader
from tests.readerfuzz.seeds import BASE_ENTRIES, SEEDS, Field, build_seed, structure_map, tar_of

__all__ = ["FAILURES", "CaseResult", "Fuzzer", "minimise_finding"]

FAILURES = frozenset({"crash", "hang", "died", "memory", "empty-message"})
_AS_LIMIT = 4 << 30
_FSIZE_LIMIT = 256 << 20


@dataclass
class CaseResult:
    """What one mutant did to each reader.

    Attributes:
        number: the case's index in the campaign.
        mutant: the mutant.
        outcomes: reader -> ``(outcome, detail, seconds)``.
        max_rss_kib: the highest peak RSS of the case's children.
    """

    number: int
    mutant: Mutant
    outcomes: dict[str, tuple[str, str, float]] = field(default_factory=dict)
    max_rss_kib: int = 0

    @property
    def failures(self) -> dict[str, tuple[str, str, float]]:
        """The readers that failed."""
        return {r: o for r, o in self.outcomes.items() if o[0] in FAILURES}


@dataclass
class _Seed:
    data: bytes
    fields: list[Field]
    dirs: list[int]
    target: Target


def _signature(outcome: str, detail: str) -> str:
    """What identifies a failure across mutants: the outcome and the last line of the
    traceback plus the innermost lcow frame."""
    lines = [ln for ln in detail.strip().splitlines() if ln.strip()]
    last = lines[-1].split(":")[0] if lines else ""
    frames = [ln.strip() for ln in lines if ln.strip().startswith('File "') and "lcow" in ln]
    return f"{outcome}|{last}|{frames[-1] if frames else ''}"


class Fuzzer:
    """A campaign's seeds and data roots, and the runner of cases."""

    def __init__(
        self,
        work: Path,
        *,
        seeds: Sequence[str] = tuple(SEEDS),
        readers: Sequence[str] = tuple(READERS),
        timeout: float = 20.0,
        rss_budget_mib: int = 1024,
    ) -> None:
        self.work = work
        self.readers = list(readers)
        self.timeout = timeout
        self.rss_budget_kib = rss_budget_mib * 1024
        self.seeds: dict[str, _Seed] = {}
        for name in seeds:
            self.seeds[name] = self._prepare(name)

    def _prepare(self, name: str) -> _Seed:
        """Build seed ``name``, map it, and lay out its data root (base layer + ``m``)."""
        folder = self.work / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        data = build_seed(name, folder / "build")
        root = folder / "root"
        driver = Driver(root)
        driver.create(PARENT)
        driver.apply_diff(PARENT, None, io.BytesIO(tar_of(BASE_ENTRIES, folder)))
        driver.create(LAYER, PARENT)
        target = Target(root, folder / "scratch")
        target.scratch.mkdir()
        target.image.write_bytes(data)
        fields = structure_map(target.image)
        with Ext4Reader.open(target.image) as reader:
            dirs = sorted({i.ino for _, i in reader.walk_inodes(b"/") if i.is_dir})
        return _Seed(data, fields, dirs, target)

    def draw(self, rng: random.Random) -> Mutant:
        """One random mutant of a random seed."""
        name = rng.choice(sorted(self.seeds))
        seed = self.seeds[name]
        return mutate(rng, name, seed.data, seed.fields, seed.dirs)

    # -- running ---------------------------------------------------------------------------

    def run(self, number: int, mutant: Mutant, readers: Sequence[str] | None = None) -> CaseResult:
        """Run ``readers`` (default: all of the campaign's) on ``mutant``."""
        seed = self.seeds[mutant.seed]
        seed.target.image.write_bytes(apply(seed.data, mutant))
        result = CaseResult(number, mutant)
        left = list(readers or self.readers)
        while left:
            done = self._child(seed.target, left, result)
            left = left[done:]
        for name, (outcome, _, _) in list(result.outcomes.items()):
            if outcome not in FAILURES and result.max_rss_kib > self.rss_budget_kib:
                detail = f"peak RSS {result.max_rss_kib // 1024} MiB over the budget"
                result.outcomes[name] = ("memory", detail, result.outcomes[name][2])
        return result

    def _child(self, target: Target, readers: list[str], result: CaseResult) -> int:
        """Fork a child running ``readers`` in order; return how many got an outcome."""
        read_fd, write_fd = os.pipe()
        log = target.scratch / "child.log"
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(read_fd)
            _child_main(target, readers, write_fd, log)
        os.close(write_fd)
        done = 0
        current: str | None = None
        started = time.monotonic()
        buffer = b""
        killed = False
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            while True:
                wait = self.timeout - (time.monotonic() - started) if current else self.timeout
                ready, _, _ = select.select([pipe], [], [], max(0.0, wait))
                if not ready:
                    os.kill(pid, signal.SIGKILL)
                    killed = True
                    break
                chunk = pipe.read(65536)
                if not chunk:
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    message = json.loads(line)
                    if "start" in message:
                        current, started = message["start"], time.monotonic()
                    else:
                        name = message["end"]
                        result.outcomes[name] = (
                            message["outcome"],
                            message["detail"],
                            message["seconds"],
                        )
                        current = None
                        done += 1
        _, status, usage = os.wait4(pid, 0)
        result.max_rss_kib = max(result.max_rss_kib, usage.ru_maxrss)
        if done < len(readers):
            name = readers[done]
            if killed:
                outcome, detail = "hang", f"no outcome within {self.timeout:g} s"
            else:
                outcome = "died"
                detail = f"child status {status:#x}: {_tail(log)}"
            result.outcomes[name] = (outcome, detail, self.timeout if killed else 0.0)
            done += 1
        return done


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-2000:]
    except OSError:
        return ""


def _child_main(target: Target, readers: list[str], write_fd: int, log: Path) -> None:
    code = 0
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death past the limit
        resource.setrlimit(resource.RLIMIT_AS, (_AS_LIMIT, _AS_LIMIT))
        resource.setrlimit(resource.RLIMIT_FSIZE, (_FSIZE_LIMIT, _FSIZE_LIMIT))
        with os.fdopen(write_fd, "wb", buffering=0) as pipe:
            for name in readers:
                pipe.write(json.dumps({"start": name}).encode() + b"\n")
                start = time.monotonic()
                outcome, detail = run_reader(name, target)
                seconds = round(time.monotonic() - start, 3)
                message = {"end": name, "outcome": outcome, "detail": detail, "seconds": seconds}
                pipe.write(json.dumps(message).encode() + b"\n")
    except BaseException:
        traceback.print_exc()
        code = 70
    finally:
        os._exit(code)


# -- minimisation ----------------------------------------------------------------------------


def minimise_finding(fuzzer: Fuzzer, mutant: Mutant, reader: str, budget: int = 150) -> Mutant:
    """A smaller mutant on which ``reader`` fails the same way (see :func:`minimise`)."""
    first = fuzzer.run(-1, mutant, [reader]).outcomes[reader]
    wanted = _signature(first[0], first[1])

    def still_fails(candidate: Mutant) -> bool:
        outcome, detail, _ = fuzzer.run(-1, candidate, [reader]).outcomes[reader]
        return _signature(outcome, detail) == wanted

    return minimise(fuzzer.seeds[mutant.seed].data, mutant, still_fails, budget=budget)


def summarise(results: Sequence[CaseResult], readers: Sequence[str]) -> dict[str, Any]:
    """Per-reader outcome counts, failures, slowest readers and peak RSS of a campaign."""
    per_reader: dict[str, Counter[str]] = {r: Counter() for r in readers}
    slowest: dict[str, float] = dict.fromkeys(readers, 0.0)
    findings = []
    for result in results:
        for reader, (outcome, detail, seconds) in result.outcomes.items():
            per_reader[reader][outcome] += 1
            slowest[reader] = max(slowest[reader], seconds)
            if outcome in FAILURES:
                findings.append(
                    {
                        "case": result.number,
                        "reader": reader,
                        "outcome": outcome,
                        "signature": _signature(outcome, detail),
                        "detail": detail[-3000:],
                        "mutant": result.mutant.to_json(),
                    }
                )
    return {
        "cases": len(results),
        "per_reader": {r: dict(c) for r, c in per_reader.items()},
        "slowest_seconds": slowest,
        "max_rss_mib": round(max((r.max_rss_kib for r in results), default=0) / 1024, 1),
        "failures": len(findings),
        "findings": findings,
    }
