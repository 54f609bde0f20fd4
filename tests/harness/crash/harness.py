"""Steps 1-3 of a kill and the campaign: prepare the data root, run the child and kill it,
run the recovery (see :mod:`tests.harness.crash`); :func:`run_kills` is the entry point."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.harness.crash.checks import RootChecks
from tests.harness.crash.fixtures import Fixtures, make_fixtures
from tests.harness.crash.records import Campaign, KillRecord, LayerState
from tests.harness.crash.rootstate import disk_key, layer_kind, settled_leftovers, temporaries
from tests.harness.spawn import child_env, python_module

if TYPE_CHECKING:
    from lcow.graphdriver.driver import Driver

__all__ = [
    "CALIBRATION_RUNS",
    "HOST_OPS",
    "USERSPACE_OPS",
    "Harness",
    "run_kills",
    "schedule",
]

USERSPACE_OPS = ("apply_diff", "create_rw", "remove", "import")
HOST_OPS = (*USERSPACE_OPS, "get", "put")
SPAN = 1.1  # kills fall uniformly within this many typical (median) durations of the operation
CALIBRATION_RUNS = 3
MAX_LAYERS = 10  # besides the image's; the harness removes leaves beyond this
CHILD_TIMEOUT = 120.0
RECOVER_TIMEOUT = 300.0


def _run_json(argv: list[str], timeout: float) -> Any:
    proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False, env=child_env())
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[:4])}… exit {proc.returncode}:\n"
            f"{proc.stderr.decode(errors='replace')[-4000:]}"
        )
    return json.loads(proc.stdout)


class Harness:
    """Kills on one data root with one backend (see :mod:`tests.harness.crash`)."""

    def __init__(
        self,
        work: Path,
        backend: str,
        fixtures: Fixtures,
        rng: random.Random,
        calibration_runs: int = CALIBRATION_RUNS,
        linger: float = 0,
    ) -> None:
        self.work = work
        self.linger = linger  # > 0: the child is a lingering front end (Driver.linger)
        self.root = work / f"root-{backend}"
        self.backend = backend
        self.fixtures = fixtures
        self.rng = rng
        self.known: dict[str, LayerState] = {}
        self.durations: dict[str, list[float]] = {}  # "backend/op/variant" → unkilled seconds
        self.counter = 0
        self.calibration_runs = calibration_runs
        self.unkilled = 0  # calibration runs, checked like kills
        self.checks = RootChecks(work, self.root, backend, fixtures)
        self.image_ids = {layer.layer_id for layer in fixtures.image_layers}
        self.work.mkdir(parents=True, exist_ok=True)

    # -- helpers ---------------------------------------------------------------------------

    def driver(self) -> Driver:
        """A driver of this root, as a fresh process would open it."""
        from lcow.graphdriver.driver import Driver

        return Driver(self.root, [f"lcow.backend={self.backend}"])

    def _new_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter:04d}"

    def _leaves(self, kinds: Iterable[str]) -> list[str]:
        parents = {s.parent for s in self.known.values()}
        wanted = set(kinds)
        return sorted(
            lid
            for lid, s in self.known.items()
            if lid not in parents and lid not in self.image_ids and s.kind in wanted
        )

    def _parent_choice(self) -> str | None:
        options = sorted(
            lid
            for lid, s in self.known.items()
            if s.kind in ("layer.vhd", "sandbox.vhdx") and lid not in self.image_ids
        )
        return self.rng.choice(options) if options and self.rng.random() < 0.7 else None

    def _tar(self) -> str:
        return self.rng.choice(sorted(self.fixtures.tars))

    def _content_layer(self, driver: Driver, parent: str | None) -> str:
        lid = self._new_id("base")
        driver.create(lid, parent)
        tar = self._tar()
        driver.apply_diff(lid, parent, tar)
        self.known[lid] = LayerState(
            "layer.vhd", parent, disk_key(self.root / lid / "layer.vhd"), self.fixtures.tars[tar]
        )
        return lid

    def _trim(self, driver: Driver) -> None:
        """Keep the root at most MAX_LAYERS layers (the image's aside) by removing leaves."""
        while sum(1 for lid in self.known if lid not in self.image_ids) > MAX_LAYERS:
            leaves = self._leaves(("empty", "layer.vhd", "sandbox.vhdx"))
            if not leaves:
                return
            driver.remove(leaves[0])
            self.known.pop(leaves[0])

    def _counts(self) -> dict[str, int]:
        if self.backend != "host":
            return {}
        from lcow.backends.host.table import MountTable

        state = MountTable(self.root / "mounts").peek()
        return {lid: v.count for lid, v in state.views.items()}

    # -- one operation -----------------------------------------------------------------------

    def prepare(self, op: str) -> dict[str, Any]:  # noqa: PLR0912, PLR0915 - one preparation per operation kind, each with its random variants
        """Make the root ready for ``op``; returns the child's arguments plus what judging the
        outcome needs (``variant``, the target ``layer``, ``counts_before`` on host, ``key``
        naming the variant's durations)."""
        driver = self.driver()
        self._trim(driver)
        plan: dict[str, Any] = {"op": op, "variant": op, "layer": None}
        if op == "apply_diff":
            over = self._leaves(("sandbox.vhdx",))
            if over and self.rng.random() < 0.3:
                lid = self.rng.choice(over)
                parent = self.known[lid].parent
                plan["variant"] = "over a sandbox"
            else:
                lid, parent = self._new_id("apply"), self._parent_choice()
                driver.create(lid, parent)
                self.known[lid] = LayerState("empty", parent)
                plan["variant"] = "new layer"
            plan.update(layer=lid, parent=parent, tar=self._tar())
        elif op == "create_rw":
            plan.update(layer=self._new_id("rw"), parent=self._parent_choice())
            plan["variant"] = "template cached"
            if self.rng.random() < 0.25:  # the template is made first (mke2fs, VHDX packing)
                (self.root / "cache" / "sandbox.vhdx").unlink(missing_ok=True)
                plan["variant"] = "template missing"
        elif op == "remove":
            leaves = self._leaves(("layer.vhd", "sandbox.vhdx"))
            lid = self.rng.choice(leaves) if leaves else self._content_layer(driver, None)
            plan["layer"] = lid
            plan["variant"] = self.known[lid].kind
            if self.backend == "host" and self.rng.random() < 0.4:
                driver.get(lid)  # removed while mounted: Remove tears the view down
                plan["variant"] += " mounted"
        elif op == "import":
            for layer in reversed(self.fixtures.image_layers):
                driver.remove(layer.layer_id)
                self.known.pop(layer.layer_id, None)
            spooled = self.rng.random() < 0.3
            plan["image"] = str(self.fixtures.image_gz if spooled else self.fixtures.image)
            plan["variant"] = "gzip tarball" if spooled else "plain tarball"
        elif op == "get":
            choices = sorted(lid for lid in self.known if lid not in self.image_ids)
            lid = self.rng.choice(choices) if choices else self._content_layer(driver, None)
            if self.rng.random() < 0.2:  # a Create-only child: Get materialises its sandbox
                lid_parent = lid
                lid = self._new_id("get")
                driver.create(lid, lid_parent)
                self.known[lid] = LayerState("empty", lid_parent)
            state = self.known[lid]
            plan["layer"] = lid
            plan["variant"] = {"empty": "create-only", "layer.vhd": "read-only chain"}.get(
                state.kind, "sandbox"
            )
            if state.kind != "layer.vhd":
                plan["write"] = f"w{self.counter:04d}-{self.rng.getrandbits(24):06x}"
            if self.rng.random() < 0.3:
                driver.get(lid)  # already mounted: this Get only counts
                plan["variant"] += " counted"
        elif op == "put":
            choices = sorted(lid for lid in self.known if lid not in self.image_ids)
            lid = self.rng.choice(choices) if choices else self._content_layer(driver, None)
            held = 2 if self.rng.random() < 0.3 else 1
            for _ in range(held):
                driver.get(lid)
            plan["layer"] = lid
            plan["variant"] = f"{layer_kind(self.root / lid)} held {held}"
        target = plan["layer"]
        if target in self.known:  # a Get in preparation gives a Create-only layer a sandbox
            self.known[target].kind = layer_kind(self.root / target)
        plan["counts_before"] = self._counts()
        plan["key"] = f"{self.backend}/{op}/{plan['variant']}"
        return plan

    def run_child(self, plan: dict[str, Any], delay: float | None) -> tuple[list[list[str]], str]:
        """Run the operation in a child; SIGKILL it ``delay`` seconds after it logs ``start``
        (``None``: let it finish). Returns the log lines and the phase the kill hit."""
        log = self.work / "child.log"
        log.unlink(missing_ok=True)
        args: dict[str, Any] = {
            "root": str(self.root),
            "backend": self.backend,
            "log": str(log),
            "linger": self.linger,
            **{k: plan[k] for k in ("op", "layer", "parent", "tar", "image", "write") if k in plan},
        }
        with open(self.work / "child.err", "wb") as err:
            proc = subprocess.Popen(
                python_module("tests.harness.crash.worker", "child", json.dumps(args)),
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=child_env(),
            )
        try:
            deadline = time.monotonic() + CHILD_TIMEOUT
            while not any(p[1] == "start" for p in _read_log(log)):
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"child exited {proc.returncode} before starting: "
                        f"{(self.work / 'child.err').read_text()[-3000:]}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError("child did not start")
                time.sleep(0.0005)
            if delay is None:
                proc.wait(CHILD_TIMEOUT)
            else:
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        lines = _read_log(log)
        kinds = [p[1] for p in lines]
        if "error" in kinds:
            raise RuntimeError(
                f"the child's {plan['op']} failed: {lines}\n"
                f"{(self.work / 'child.err').read_text()[-3000:]}"
            )
        if delay is None and "done" not in kinds:
            raise RuntimeError(f"the child's {plan['op']} did not finish: exit {proc.returncode}")
        phase = "after done" if "done" in kinds else "in flight"
        stamps = {p[1]: float(p[0]) for p in lines}
        if "done" in stamps and "start" in stamps:
            # Killed runs that finished first count too: a first, cold calibration run would
            # otherwise set the kill window for good, and kills would land after the work.
            self.durations.setdefault(plan["key"], []).append(stamps["done"] - stamps["start"])
        return lines, phase

    def allowed_counts(self, plan: dict[str, Any], lines: list[list[str]]) -> dict[str, list[int]]:
        """Counts the adopted table may hold per layer, given how far the child got."""
        counts = {lid: [n] for lid, n in plan["counts_before"].items()}
        lid, kinds = plan["layer"], [p[1] for p in lines]
        before = plan["counts_before"].get(lid, 0)
        if plan["op"] == "get":
            counts[lid] = [before + 1] if "got" in kinds else [before, before + 1]
        elif plan["op"] == "put":
            counts[lid] = [before - 1] if "done" in kinds else [before, before - 1]
        elif plan["op"] == "remove":
            counts[lid] = [0] if "done" in kinds else [before, 0]
        return counts

    def recover(self, plan: dict[str, Any], lines: list[list[str]]) -> dict[str, Any]:
        """The fresh recovery process (see :func:`_recover`)."""
        files = {lid: dict(s.files) for lid, s in self.known.items() if s.files}
        wrote = [p for p in lines if p[1] == "wrote"]
        if wrote:
            name, digest = wrote[-1][2].split(" ")
            files.setdefault(plan["layer"], {})[name] = digest
        args = {
            "root": str(self.root),
            "backend": self.backend,
            "counts": self.allowed_counts(plan, lines) if self.backend == "host" else {},
            "verified": {lid: s.key for lid, s in self.known.items() if s.manifest and s.key},
            "files": files,
            "reimport": str(self.fixtures.image) if plan["op"] == "import" else None,
        }
        out: dict[str, Any] = _run_json(
            python_module("tests.harness.crash.worker", "recover", json.dumps(args)),
            RECOVER_TIMEOUT,
        )
        out["files"] = files
        return out

    # -- verification ----------------------------------------------------------------------

    def _update_model(self, layers: dict[str, dict[str, Any]], files: dict[str, Any]) -> None:
        known: dict[str, LayerState] = {}
        for lid, info in layers.items():
            kind = info.get("after_get") or info["kind"]
            old = self.known.get(lid)
            manifest = info.get("manifest") or (old.manifest if old else None)
            if kind != "layer.vhd":
                manifest = None
            key = info.get("key") if kind == info["kind"] else None
            if kind == "layer.vhd" and manifest is None:
                for layer in self.fixtures.image_layers:
                    if layer.layer_id == lid:
                        manifest = layer.manifest
            known[lid] = LayerState(
                kind,
                info.get("parent"),
                key,
                manifest,
                dict(files.get(lid, {})) if kind == "sandbox.vhdx" else {},
            )
        self.known = known

    # -- verification ----------------------------------------------------------------------

    def verify(
        self,
        plan: dict[str, Any],
        lines: list[list[str]],
        found: dict[str, Any],
        record: KillRecord,
    ) -> None:
        """Check the recovered root against the outcomes ``plan``'s operation allows
        (:meth:`RootChecks.judge`); update the model of the root."""
        self.checks.judge(plan, lines, found, record, self.known)
        self._update_model(found["layers"], found["files"])

    def fsck_sandbox(self, lid: str) -> list[str]:
        """``e2fsck -fn`` of a sandbox's ext4 (:meth:`RootChecks.fsck_sandbox`)."""
        return self.checks.fsck_sandbox(lid)

    # -- the campaign ----------------------------------------------------------------------

    def _unkilled(self, plan: dict[str, Any]) -> None:
        """Run a prepared operation to its end (to learn its duration); it must pass the same
        checks."""
        lines, _ = self.run_child(plan, None)
        found = self.recover(plan, lines)
        record = KillRecord(-1, self.backend, plan["op"], plan["variant"], plan["layer"], 0, "")
        self.verify(plan, lines, found, record)
        self.unkilled += 1
        if record.problems:
            raise RuntimeError(f"{plan['op']} fails without a kill: {record.problems}")

    def kill(self, number: int, op: str) -> KillRecord:
        """One kill of ``op`` at a random moment, recovery and verification. A variant of the
        operation not measured yet is first run unkilled :attr:`calibration_runs` times."""
        while True:
            plan = self.prepare(op)
            if len(self.durations.get(plan["key"], [])) >= self.calibration_runs:
                break
            self._unkilled(plan)
        typical = statistics.median(self.durations[plan["key"]])
        delay = self.rng.uniform(0, typical * SPAN)
        lines, phase = self.run_child(plan, delay)
        record = KillRecord(
            number, self.backend, op, plan["variant"], plan["layer"],
            round(delay * 1000, 2), phase,
        )  # fmt: skip
        found = self.recover(plan, lines)
        record.recover_seconds = round(found["timings"]["total"], 3)
        self.verify(plan, lines, found, record)
        if op in ("get", "put", "remove") and self.backend == "host":
            layer: str | None = plan["layer"]  # its sandbox and its ancestors' were mounted
            while layer is not None and layer in self.known:
                record.problems += self.fsck_sandbox(layer)
                layer = self.known[layer].parent
        return record

    def finish(self) -> list[str]:
        """Cleanup with a fresh driver and remove the root; what was left behind."""
        if not self.root.exists():
            return []
        self.driver().cleanup()
        left = temporaries(self.root)
        if self.backend == "host":
            left += settled_leftovers(self.root)[0]
        if not any(x.startswith(("mount ", "loop ", "process ")) for x in left):
            shutil.rmtree(self.root, ignore_errors=True)
        return left


def _read_log(path: Path) -> list[list[str]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [line.split(" ", 2) for line in text.splitlines() if line.count(" ") >= 1]


def schedule(kills: int, pairs: Sequence[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """``kills`` (backend, op) pairs, round robin."""
    for number in range(kills):
        yield pairs[number % len(pairs)]


def run_kills(
    work: Path,
    kills: int,
    *,
    backends: Sequence[str] = ("userspace", "host"),
    ops: Sequence[str] | None = None,
    seed: int = 20261128,
    scale: float = 1.0,
    calibration_runs: int = CALIBRATION_RUNS,
    progress: Callable[[KillRecord], None] | None = None,
    linger: float = 0,
) -> Campaign:
    """Run ``kills`` kills spread round robin over every (backend, operation) pair.

    Args:
        work: a scratch folder (fixtures, data roots, logs); data roots are removed at the end
            when nothing is left mounted in them.
        kills: how many kills in all.
        backends: ``userspace`` and/or ``host``.
        ops: operations to kill (default: all the backend has; ``get``/``put`` only on host).
        seed: the random seed (delays, choices).
        scale: size of the fixtures (see :func:`make_fixtures`).
        calibration_runs: unkilled runs per operation variant, to learn its duration.
        progress: called after each kill.
        linger: > 0: each child first calls ``Driver.linger(linger)``, as the plugin and the
            snapshotter do, so that released sandboxes stay mounted idle and Remove deletes in
            the background — what a kill then leaves behind.
    """
    rng = random.Random(seed)
    started = time.monotonic()
    campaign = Campaign(seed, load=list(os.getloadavg()))
    fixtures = make_fixtures(work / "fixtures", scale=scale)
    harnesses = {
        b: Harness(work, b, fixtures, random.Random(rng.getrandbits(32)), calibration_runs, linger)
        for b in backends
    }
    pairs = [
        (b, op)
        for b in backends
        for op in (HOST_OPS if b == "host" else USERSPACE_OPS)
        if ops is None or op in ops
    ]
    try:
        for number, (backend, op) in enumerate(schedule(kills, pairs)):
            record = harnesses[backend].kill(number, op)
            campaign.kills.append(record)
            if progress is not None:
                progress(record)
    finally:
        for harness in harnesses.values():
            campaign.durations.update(harness.durations)
            campaign.unkilled += harness.unkilled
            left = harness.finish()
            if left:
                campaign.kills.append(
                    KillRecord(
                        len(campaign.kills),
                        harness.backend,
                        "finish",
                        "",
                        None,
                        0,
                        "",
                        problems=[f"left after the campaign: {x}" for x in left],
                    )
                )
    campaign.seconds = time.monotonic() - started
    campaign.load += list(os.getloadavg())
    return campaign
