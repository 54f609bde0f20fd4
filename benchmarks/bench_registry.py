#!/usr/bin/env python3
"""Benchmark ``lcow pull`` (download + convert) against ``ctr images pull`` (issue 16).

    sudo TMPDIR=/tmp/SHORT .venv/bin/python benchmarks/bench_registry.py [--runs 5]
        [--data /var/tmp/lcow-bench-registry] [--out FILE.json] [--parallel N]
    sudo TMPDIR=/tmp/SHORT .venv/bin/python benchmarks/bench_registry.py --serve CMDS &
        # then time the scripts named in CMDS with an outside timer, in pairs, e.g.
        #   hyperfine -N "sh DATA/lcow.sh" "sh DATA/ctr.sh"   (hyperfine is in Debian)
        # and end it with SIGTERM (everything is stopped and removed)

One run, one Debian ``docker-registry`` on 127.0.0.1 holding the Debian-rootfs image of
``debian_image.py`` (pushed once with skopeo), one containerd 1.6 (Debian's, own root, state
and socket, CRI disabled, started as the end-to-end tests start it). Per repetition, in an
order that alternates (A B, B A, ...), after one warm-up pair:

- **lcow**: ``lcow --root R pull --plain-http REF`` into a fresh data root ``R`` (removed,
  untimed, after every run): every layer downloaded, verified, converted to an ext4
  ``layer.vhd`` and fsynced.
- **ctr**: ``ctr images pull --plain-http --snapshotter overlayfs REF``: ctr fetches the blobs
  into containerd's content store, then containerd untars each layer into an overlayfs
  snapshot directory. Before each run, untimed: ``ctr images rm --sync`` (the collector
  removes the content and every snapshot; checked: ``content ls`` and ``snapshots ls`` are
  empty, leftovers are removed with ``content rm``), so every blob is downloaded again.

After each cleanup, ``sync`` (untimed), so that neither run writes back the other's data.
Each sample: the command's wall time from spawn to exit and its user+sys CPU (``wait4``), the
CPU containerd and the registry spent meanwhile (``/proc/PID/stat``; containerd does the
unpacking of a ctr pull, the registry serves both) and the machine's busy CPU seconds.
Reported: medians (min-max) and the median of the per-pair ratios lcow / ctr. The issue's goal
is <= 1.0x on wall time.

``--serve CMDS`` sets the same up, writes ``DATA/lcow.sh`` and ``DATA/ctr.sh`` (each: the pull,
then the removal of what it made, so that a command timed over and over starts from nothing
and pays for removing its own result) and their command lines to ``CMDS``, and waits for
SIGTERM.

Everything started is stopped by its pid; ``--data`` and the temporary directories are
removed (unless ``--keep``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from tests.containerd.daemons import CTR, Containerd, Registry, short_dir  # noqa: E402

from bench_containerd import machine, machine_busy, proc_cpu  # noqa: E402
from debian_image import BASE_TREES, PushedDebian, push_debian  # noqa: E402

__all__ = ["main"]

TOOLS = ("lcow", "ctr")
KEYS = ("wall", "cpu", "containerd_cpu", "registry_cpu", "machine_busy")
DEFAULT_DATA = Path("/var/tmp/lcow-bench-registry")
LCOW = Path(sys.executable).with_name("lcow")
ENV = {**os.environ, "PATH": f"/usr/bin:/usr/sbin:/bin:/sbin:{os.environ.get('PATH', '')}"}


def log(message: str) -> None:
    print(f"[bench_registry {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Sample:
    tool: str
    rep: int
    wall: float
    cpu: float
    containerd_cpu: float
    registry_cpu: float
    machine_busy: float


class Setup:
    """The registry, the pushed image, containerd, and the two commands with their cleanups."""

    def __init__(self, data: Path, parallel: int | None) -> None:
        self.data = data
        self.registry = Registry(data / "registry")
        self.daemon: Containerd | None = None
        self.image: PushedDebian | None = None
        self.root = data / "lcow-root"
        self.parallel = parallel

    def start(self) -> Setup:
        self.registry.start()
        log("building and pushing the image")
        self.image = push_debian(self.data, self.registry.address)
        log(f"pushed {self.image.reference}: base {self.image.base}, "
            f"layers {self.image.gzip_layer_bytes}")  # fmt: skip
        self.daemon = Containerd(short_dir("cdr-")).start()
        return self

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.close()
        self.registry.stop()

    @property
    def ref(self) -> str:
        assert self.image is not None
        return self.image.reference

    def ctr_argv(self) -> list[str]:
        assert self.daemon is not None
        return [CTR, "--address", str(self.daemon.address), "-n", self.daemon.namespace]

    def argv(self, tool: str) -> list[str]:
        """The timed command of ``tool``."""
        if tool == "lcow":
            extra = [] if self.parallel is None else ["--parallel", str(self.parallel)]
            return [str(LCOW), "--root", str(self.root), "pull", "--plain-http", *extra, self.ref]
        return [*self.ctr_argv(), "images", "pull", "--plain-http", "--snapshotter", "overlayfs",
                self.ref]  # fmt: skip

    def clean(self, tool: str) -> None:
        """Remove what ``tool``'s pull made, check that nothing is left, then ``sync``."""
        if tool == "lcow":
            shutil.rmtree(self.root, ignore_errors=True)
            if self.root.exists():
                raise SystemExit(f"{self.root}: could not be removed")
        else:
            self._clean_containerd()
        subprocess.run(["sync"], check=True)

    def _clean_containerd(self) -> None:
        daemon = self.daemon
        assert daemon is not None
        if self.ref in daemon.ids("images", "ls"):
            daemon.ctr("images", "rm", "--sync", self.ref)
        deadline = time.monotonic() + 60
        while True:
            blobs = daemon.ids("content", "ls")
            snapshots = daemon.ctr("snapshots", "--snapshotter", "overlayfs", "ls").stdout
            left = snapshots.splitlines()[1:]
            if not blobs and not left:
                return
            if blobs:
                daemon.ctr("content", "rm", *blobs, check=False)
            if time.monotonic() > deadline:
                raise SystemExit(f"containerd kept content {blobs} and snapshots {left}")
            time.sleep(0.2)

    def clean_script(self, tool: str) -> str:
        """Shell lines that remove what ``tool``'s pull made (for :func:`serve`)."""
        if tool == "lcow":
            return f"rm -rf {shlex.quote(str(self.root))}\n"
        ctr = shlex.join(self.ctr_argv())
        return (f"{ctr} images rm --sync {shlex.quote(self.ref)} >/dev/null\n"
                f"blobs=$({ctr} content ls -q)\n"
                f'[ -z "$blobs" ] || {ctr} content rm $blobs >/dev/null\n')  # fmt: skip

    def timed(self, tool: str, rep: int) -> Sample:
        """Run ``tool``'s pull once: its wall and CPU, and the daemons' CPU meanwhile."""
        assert self.daemon is not None and self.daemon.proc is not None
        assert self.registry.proc is not None
        daemons = (self.daemon.proc.pid, self.registry.proc.pid)
        before = [proc_cpu(pid) or 0.0 for pid in daemons]
        busy = machine_busy()
        errors = self.data / f"{tool}.err"
        with open(errors, "wb") as err:
            start = time.perf_counter()
            proc = subprocess.Popen(self.argv(tool), stdout=subprocess.DEVNULL, stderr=err,
                                    env=ENV)  # fmt: skip
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
        after = [proc_cpu(pid) or 0.0 for pid in daemons]
        busy = machine_busy() - busy
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise SystemExit(f"{tool} exited {code}: {errors.read_text()[-3000:]}")
        sample = Sample(tool, rep, wall, usage.ru_utime + usage.ru_stime, after[0] - before[0],
                        after[1] - before[1], busy)  # fmt: skip
        log(f"{tool} #{rep}: wall {wall:.2f} s, cpu {sample.cpu:.2f} s, containerd "
            f"{sample.containerd_cpu:.2f} s, registry {sample.registry_cpu:.2f} s, "
            f"machine busy {busy:.2f} s")  # fmt: skip
        return sample


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(samples: list[Sample]) -> dict[str, Any]:
    by = {tool: [s for s in samples if s.tool == tool] for tool in TOOLS}
    summary: dict[str, Any] = {
        tool: {key: spread([getattr(s, key) for s in chosen]) for key in KEYS}
        for tool, chosen in by.items()
    }
    pairs = list(zip(by["lcow"], by["ctr"], strict=True))
    summary["ratio_wall"] = spread([a.wall / b.wall for a, b in pairs])
    summary["ratio_cpu_with_containerd"] = spread(
        [a.cpu / (b.cpu + b.containerd_cpu) for a, b in pairs]
    )
    return summary


def table(summary: dict[str, Any]) -> str:
    def cell(value: dict[str, float]) -> str:
        return f"{value['median']:.2f} ({value['min']:.2f}-{value['max']:.2f})"

    head = "| tool | wall s | process CPU s | containerd CPU s | registry CPU s | machine busy s |"
    lines = [head, "|---|---|---|---|---|---|"]
    for tool in TOOLS:
        v = summary[tool]
        lines.append(f"| {tool} | {cell(v['wall'])} | {cell(v['cpu'])} | "
                     f"{cell(v['containerd_cpu'])} | {cell(v['registry_cpu'])} | "
                     f"{cell(v['machine_busy'])} |")  # fmt: skip
    lines.append(f"| **lcow / ctr** | {cell(summary['ratio_wall'])}x | "
                 f"{cell(summary['ratio_cpu_with_containerd'])}x (vs ctr + containerd) "
                 "| | | |")  # fmt: skip
    return "\n".join(lines)


def measure(setup: Setup, runs: int) -> list[Sample]:
    """A warm-up pair, then ``runs`` pairs in alternating order; the counted samples."""
    samples: list[Sample] = []
    for tool in TOOLS:
        setup.clean(tool)
    for rep in range(-1, runs):
        order = TOOLS if rep % 2 == 0 else TOOLS[::-1]
        for tool in order:
            sample = setup.timed(tool, rep)
            setup.clean(tool)
            if rep >= 0:
                samples.append(sample)
    return samples


def serve(setup: Setup, commands: Path) -> None:
    """Write ``DATA/lcow.sh`` and ``DATA/ctr.sh`` (pull, then remove) and their command
    lines to ``commands``; wait for SIGTERM or SIGINT."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    lines = []
    for tool in TOOLS:
        setup.clean(tool)
        script = setup.data / f"{tool}.sh"
        script.write_text(f"set -e\n{shlex.join(setup.argv(tool))} >/dev/null 2>&1\n"
                          f"{setup.clean_script(tool)}")  # fmt: skip
        lines.append(f"{tool}={shlex.join(['sh', str(script)])}")
    commands.write_text("\n".join(lines) + "\n")
    log(f"serving; commands in {commands}; SIGTERM ends")
    stop.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="paired repetitions")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="work directory (removed)")
    ap.add_argument("--out", type=Path, help="write every sample and the machine as JSON")
    ap.add_argument("--keep", action="store_true", help="keep --data afterwards")
    ap.add_argument("--parallel", type=int, help="lcow pull --parallel N (default: lcow's)")
    ap.add_argument("--serve", type=Path, metavar="COMMANDS",
                    help="set up only: write the timed commands to COMMANDS and serve until "
                    "SIGTERM, for an outside timer")  # fmt: skip
    args = ap.parse_args()
    if args.data.exists():
        raise SystemExit(f"{args.data} exists: remove it or choose another --data")
    args.data.mkdir(parents=True)
    started = time.monotonic()
    setup = Setup(args.data, args.parallel)
    try:
        setup.start()
        if args.serve is not None:
            serve(setup, args.serve)
            return 0
        samples = measure(setup, args.runs)
        assert setup.image is not None
        result = {
            "image": {"base": setup.image.base, "base_trees": BASE_TREES,
                      "gzip_layer_bytes": setup.image.gzip_layer_bytes},
            "samples": [asdict(s) for s in samples],
            "summary": summarize(samples),
            "machine": machine(),
            "seconds": time.monotonic() - started,
        }  # fmt: skip
    finally:
        setup.close()
        if not args.keep:
            shutil.rmtree(args.data, ignore_errors=True)
    print(table(result["summary"]))
    print(f"image: {result['image']}; run took {result['seconds']:.0f} s")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
