#!/usr/bin/env python3
"""Benchmark the containerd proxy snapshotter (issue 15) against containerd's own overlayfs.

    sudo TMPDIR=/tmp/SHORT .venv/bin/python benchmarks/bench_containerd.py [--runs 5]
        [--rows pull,run] [--data /var/tmp/lcow-bench-containerd] [--out FILE.json] [--keep]
    sudo TMPDIR=/tmp/SHORT .venv/bin/python benchmarks/bench_containerd.py --serve CMDS &
        # then time the command lines in CMDS with an outside timer, e.g. in pairs:
        #   hyperfine -N "$run_lcow" "$run_overlayfs"   (hyperfine is in Debian)
        # and end it with SIGTERM (everything is stopped and removed)

One run, one containerd 1.6 (Debian's, started as the end-to-end tests start it: own root,
state and socket, CRI disabled, ``[proxy_plugins.lcow]``), one ``lcow snapshotter serve``
(host backend, data root in ``--data``), one Debian ``docker-registry`` on loopback. The image
is the four-layer image of ``tests/containerd/images.py`` with a bigger base: the busybox
root filesystem plus this machine's ``/usr/lib/python3`` and ``/usr/share/doc`` (Debian
files; no network is needed), then the three small layers with whiteouts and opaque
directories. It is pushed once with skopeo.

Row ``pull`` — ``ctr images pull --plain-http --snapshotter S REF`` (fetch and unpack). Before
each, untimed: ``ctr images rm --sync`` (its content and every snapshot collected; checked)
and ``sync``. Row ``run`` — ``ctr run --rm --snapshotter S REF ID true`` with the image already
unpacked for both snapshotters; after each, untimed, containerd's collector is awaited until
the container's snapshot is gone, then ``sync``.

Per repetition both snapshotters are measured, in an order that alternates (A B, B A, ...).
Each sample: the wall time of the ``ctr`` process from spawn to exit, its user+sys CPU (from
``wait4``), and the CPU that containerd and the lcow server spent meanwhile (``/proc/PID/stat``
utime+stime+cutime+cstime before and after): the unpacking and the snapshotter work happen in
those processes, not in ``ctr``. Reported per row: medians (min-max) and the median of the
per-repetition ratios lcow / overlayfs (min-max). Goals of the issue: <= 1.2x for both rows.

With ``--fastpath``: the content-store fast path against commit-time conversion instead.
Two lcow snapshotters on one containerd: ``lcow`` with ``--containerd-address`` (the fast
path) and ``lcowplain`` without; the image's blobs fetched once (``ctr content fetch``), so
only unpacking is measured. Each sample is one ``sh DATA/unpack.sh S`` process: the previous
unpack's four snapshots removed (``ctr snapshots rm``, then a synchronous collection, which
frees their folders), then ``tests/containerd/gopull`` unpacking as CRI does
(``client.Pull`` + ``WithPullUnpack`` + the layer-digest handler). Removal is the same work
for both (four committed layers), so it is in both figures. Reported: the processes' wall and
CPU as for the rows above, the lcow server's CPU, and how many layers took the fast path
(from the servers' logs: every layer of every ``lcow`` sample must). With ``--hold``, the
script stops after the set-up and prints the two commands, for an external paired timer.

``--serve CMDS`` sets the same up (the image unpacked for both snapshotters), writes the
command lines (``run_lcow=...``, ``run_overlayfs=...``, ``pull_lcow=...``, ``pull_overlayfs=...``,
``rm=...``: shell words) to CMDS and waits for SIGTERM: containerd and the snapshotter run
once for any number of outside timings (with ``--content-store`` the lcow server gets
``--containerd-address``, so stock pulls take the staged unpack of docs/containerd.md). A pull
timed that way should be followed by ``rm``
in the same timed command for both snapshotters (``sh -c "$pull_lcow && $rm"``), so that each
pull starts from nothing and each pays for removing its own unpacked layers.

Everything started is stopped by its pid, the lcow views are unmounted, and ``--data`` and
the temporary directories are removed (unless ``--keep``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from tests.containerd.daemons import (  # noqa: E402
    CTR,
    Containerd,
    Registry,
    processes_naming,
    short_dir,
)
from tests.containerd.pullprog import build_gopull  # noqa: E402
from tests.containerd.test_lcow_snapshotter import Snapshotter  # noqa: E402

from debian_image import BASE_TREES, PushedDebian, push_debian  # noqa: E402
from lcow.backends.host.backend import STATE_FOLDER  # noqa: E402
from lcow.graphdriver.driver import Driver  # noqa: E402

__all__ = ["main"]

SNAPSHOTTERS = ("overlayfs", "lcow")
ROWS = ("pull", "run")
KEYS = ("wall", "ctr_cpu", "containerd_cpu", "lcow_cpu", "qsd_cpu", "shim_cpu", "total_cpu",
        "machine_busy")  # fmt: skip
DEFAULT_DATA = Path("/var/tmp/lcow-bench-containerd")
TICK = os.sysconf("SC_CLK_TCK")
ENV = {**os.environ, "PATH": f"/usr/bin:/usr/sbin:/bin:/sbin:{os.environ.get('PATH', '')}"}


def log(message: str) -> None:
    print(f"[bench_containerd {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- timing ------------------------------------------------------------------------------------


def proc_cpu(pid: int) -> float | None:
    """CPU seconds of ``pid`` and its waited-for children (utime+stime+cutime+cstime), or
    None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return sum(int(value) for value in fields[11:15]) / TICK


def proc_cpu_pidfile(pidfile: Path) -> int | None:
    """The pid in ``pidfile`` if there is one."""
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _is_ctr(pid: int) -> bool:
    """``pid`` runs ``ctr`` or ``gopull`` (timed by ``wait4``, not a shim)."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return False
    return argv0.endswith(b"ctr") or b"/gopull-" in argv0


def allocated(folder: Path, pattern: str) -> int:
    """Bytes allocated on disk by the files matching ``pattern`` below ``folder``."""
    total = 0
    for path in folder.glob(pattern):
        info = path.lstat()
        if path.is_file() and not path.is_symlink():
            total += info.st_blocks * 512
    return total


def machine_busy() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: all but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / TICK


class CpuWatch(threading.Thread):
    """CPU of the processes that do a command's work, sampled every ``interval`` seconds.

    ``roles()`` names the pids of each role at a moment; the qemu-storage-daemon of the lcow
    root and containerd's shims come and go within one command, so the watch keeps the last
    reading of every pid it saw: a pid not there at the start counts from 0 (it started in
    the window), what it spent after its last reading (< ``interval``) is lost.
    """

    def __init__(self, roles: Callable[[], dict[str, list[int]]], interval: float = 0.05):
        super().__init__(daemon=True)
        self.roles, self.interval = roles, interval
        self.first: dict[int, float] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self.done = threading.Event()
        self.busy = machine_busy()
        self._read(initial=True)

    def _read(self, initial: bool = False) -> None:
        for role, pids in self.roles().items():
            for pid in pids:
                cpu = proc_cpu(pid)
                if cpu is None:
                    continue
                self.first.setdefault(pid, cpu if initial else 0.0)
                self.last[pid] = (role, cpu)

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self._read()

    def stop(self) -> tuple[dict[str, float], float]:
        """Per role, the CPU seconds spent since the start; the machine's busy seconds."""
        self.done.set()
        self.join()
        self._read()
        spent: dict[str, float] = {}
        for pid, (role, cpu) in self.last.items():
            spent[role] = spent.get(role, 0.0) + cpu - self.first[pid]
        return spent, machine_busy() - self.busy


@dataclass
class Sample:
    row: str
    snapshotter: str
    rep: int
    wall: float
    ctr_cpu: float
    containerd_cpu: float
    lcow_cpu: float
    qsd_cpu: float
    shim_cpu: float
    machine_busy: float
    disk_bytes: int = 0

    @property
    def total_cpu(self) -> float:
        """The processes' CPU (ctr, containerd, lcow server, storage daemon, shims)."""
        return self.ctr_cpu + self.containerd_cpu + self.lcow_cpu + self.qsd_cpu + self.shim_cpu


class Bench:
    """The daemons of one run and the timed ``ctr`` commands against them."""

    def __init__(self, daemon: Containerd, snapshotter: Snapshotter, ref: str) -> None:
        self.daemon, self.snapshotter, self.ref = daemon, snapshotter, ref

    def roles(self) -> dict[str, list[int]]:
        assert self.daemon.proc is not None and self.snapshotter.proc is not None
        containerd = self.daemon.proc.pid
        qsd = proc_cpu_pidfile(self.snapshotter.root / STATE_FOLDER / "qsd.pid")
        shims = [
            pid
            for pid in processes_naming(self.daemon.dir)
            if pid != containerd and not _is_ctr(pid)
        ]
        return {
            "containerd": [containerd],
            "lcow": [self.snapshotter.proc.pid],
            "qsd": [qsd] if qsd is not None else [],
            "shims": shims,
        }

    def timed(self, row: str, snapshotter: str, rep: int, *args: str) -> Sample:
        """Run ``ctr ARGS`` once; its wall and CPU times and the daemons' CPU meanwhile."""
        argv = [CTR, "--address", str(self.daemon.address), "-n", self.daemon.namespace, *args]
        return self.timed_argv(row, snapshotter, rep, argv)

    def timed_argv(self, row: str, snapshotter: str, rep: int, argv: list[str]) -> Sample:
        """Run ``argv`` once (its children waited for); as :meth:`timed`."""
        args = argv
        errors = self.daemon.dir / "ctr.err"
        watch = CpuWatch(self.roles)
        watch.start()
        with open(errors, "wb") as err:
            start = time.perf_counter()
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=ENV)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        spent, busy = watch.stop()
        if proc.returncode != 0:
            raise SystemExit(f"ctr {' '.join(args)} exited {proc.returncode}: {errors.read_text()}")
        sample = Sample(row, snapshotter, rep, wall, usage.ru_utime + usage.ru_stime,
                        spent.get("containerd", 0.0), spent.get("lcow", 0.0),
                        spent.get("qsd", 0.0), spent.get("shims", 0.0), busy)  # fmt: skip
        log(f"{row} {snapshotter} #{rep}: wall {wall:.2f} s, ctr {sample.ctr_cpu:.2f} s, "
            f"containerd {sample.containerd_cpu:.2f} s, lcow {sample.lcow_cpu:.2f} s, "
            f"qsd {sample.qsd_cpu:.2f} s, shims {sample.shim_cpu:.2f} s, "
            f"machine busy {busy:.2f} s")  # fmt: skip
        return sample

    def snapshots(self, snapshotter: str) -> list[str]:
        out = self.daemon.ctr("snapshots", "--snapshotter", snapshotter, "ls").stdout
        return out.splitlines()[1:]

    def remove_image(self) -> None:
        """``images rm --sync``; then no content and no snapshot may be left."""
        if self.ref in self.daemon.ids("images", "ls"):
            self.daemon.ctr("images", "rm", "--sync", self.ref)
        deadline = time.monotonic() + 60
        while True:
            left = self.daemon.ids("content", "ls") + [
                line for name in SNAPSHOTTERS for line in self.snapshots(name)
            ]
            if not left:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"images rm --sync left: {left}")
            time.sleep(0.2)

    def await_snapshots(self, snapshotter: str, count: int) -> None:
        """Wait until ``snapshotter`` holds ``count`` snapshots (the collector removes a
        deleted container's snapshot a moment after ``ctr run --rm`` returns)."""
        deadline = time.monotonic() + 60
        while len(self.snapshots(snapshotter)) != count:
            if time.monotonic() > deadline:
                raise SystemExit(f"{snapshotter}: {self.snapshots(snapshotter)}")
            time.sleep(0.1)

    def disk(self, snapshotter: str) -> int:
        """Bytes the unpacked layers take: the ``layer.vhd`` files of the lcow root, or the
        files of containerd's overlayfs snapshots."""
        if snapshotter == "lcow":
            return allocated(self.snapshotter.root, "*/layer.vhd")
        overlay = self.daemon.root / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"
        return allocated(overlay, "**/*")

    def pull(self, snapshotter: str, rep: int) -> Sample:
        self.remove_image()
        subprocess.run(["sync"], check=True)
        sample = self.timed("pull", snapshotter, rep,
                          "images", "pull", "--plain-http", "--snapshotter", snapshotter,
                          self.ref)  # fmt: skip
        sample.disk_bytes = self.disk(snapshotter)
        log(f"pull {snapshotter} #{rep}: {sample.disk_bytes / 1e6:.1f} MB unpacked")
        return sample

    def run(self, snapshotter: str, rep: int, layers: int) -> Sample:
        subprocess.run(["sync"], check=True)
        fifos = str(self.daemon.dir / "fifo")
        sample = self.timed("run", snapshotter, rep,
                            "run", "--fifo-dir", fifos, "--rm", "--snapshotter", snapshotter,
                            self.ref, f"bench-{snapshotter}-{rep}", "true")  # fmt: skip
        self.await_snapshots(snapshotter, layers)
        return sample


# -- statistics --------------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(
    samples: list[Sample],
    rows: tuple[str, ...] = ROWS,
    names: tuple[str, str] = ("lcow", "overlayfs"),
) -> dict[str, Any]:
    """Per row and snapshotter the spreads, and the paired ratios ``names[0] / names[1]``."""
    summary: dict[str, Any] = {}
    for row in rows:
        by = {name: [s for s in samples if s.row == row and s.snapshotter == name]
              for name in names}  # fmt: skip
        entry: dict[str, Any] = {}
        for name, chosen in by.items():
            entry[name] = {key: spread([getattr(s, key) for s in chosen]) for key in KEYS}
        pairs = list(zip(by[names[0]], by[names[1]], strict=True))
        entry["ratio_wall"] = spread([a.wall / b.wall for a, b in pairs])
        entry["ratio_total_cpu"] = spread([a.total_cpu / b.total_cpu for a, b in pairs])
        summary[row] = entry
    return summary


def table(
    summary: dict[str, Any],
    names: tuple[str, ...] = SNAPSHOTTERS,
    ratio: str = "lcow / overlayfs",
) -> str:
    def cell(value: dict[str, float]) -> str:
        return f"{value['median']:.2f} ({value['min']:.2f}-{value['max']:.2f})"

    head = ("| row | snapshotter | wall s | ctr CPU s | containerd CPU s | lcow server CPU s "
            "| qemu-storage-daemon CPU s | shims CPU s | all CPU s | machine busy s |")  # fmt: skip
    lines = [head, "|" + "---|" * 10]
    for row, entry in summary.items():
        for name in names:
            v = entry[name]
            lines.append(f"| {row} | {name} | {cell(v['wall'])} | {cell(v['ctr_cpu'])} | "
                         f"{cell(v['containerd_cpu'])} | {cell(v['lcow_cpu'])} | "
                         f"{cell(v['qsd_cpu'])} | {cell(v['shim_cpu'])} | "
                         f"{cell(v['total_cpu'])} | {cell(v['machine_busy'])} |")  # fmt: skip
        lines.append(f"| {row} | **{ratio}** | {cell(entry['ratio_wall'])}x | | | | | "
                     f"| {cell(entry['ratio_total_cpu'])}x | |")  # fmt: skip
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    def out(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, check=False).stdout
        except OSError:
            return ""

    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "containerd": out(["containerd", "--version"]).strip(),
        "runc": out(["runc", "--version"]).splitlines()[:1],
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


# -- the fast path -----------------------------------------------------------------------------

FAST, PLAIN = "lcow", "lcowplain"
FAST_LINE, COMMIT_LINE = "fast path: committed", ": committed as "


class TwoProxies(Containerd):
    """containerd with a second lcow proxy snapshotter, ``lcowplain``, on ``plain``."""

    def __init__(self, base: Path, *, proxy: Path, plain: Path) -> None:
        super().__init__(base, proxy=proxy)
        self.plain = plain

    def config(self) -> str:
        extra = f'[proxy_plugins.{PLAIN}]\n  type = "snapshot"\n  address = "{self.plain}"\n'
        return super().config() + extra


def unpack_script(daemon: Containerd, gopull: Path, ref: str, keys: list[str]) -> str:
    """``unpack.sh S``: remove the last unpack's snapshots (top first) and collect them, then
    unpack the image into S as CRI does."""
    ctr = f"{CTR} --address {daemon.address} -n {daemon.namespace}"
    return f"""#!/bin/sh
set -e
{ctr} snapshots --snapshotter "$1" rm {" ".join(reversed(keys))} >/dev/null 2>&1 || true
{ctr} images tag {ref} {ref}-gc$$ >/dev/null
{ctr} images rm --sync {ref}-gc$$ >/dev/null
exec {gopull} -address {daemon.address} -namespace {daemon.namespace} -snapshotter "$1" \\
    -plain-http {ref}
"""


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The chain IDs of layers with ``diff_ids`` (containerd's snapshot keys of an image)."""
    out: list[str] = []
    for diff_id in diff_ids:
        text = f"{out[-1]} {diff_id}".encode() if out else b""
        out.append("sha256:" + hashlib.sha256(text).hexdigest() if out else diff_id)
    return out


def paired_unpacks(
    bench: Bench,
    fast: Snapshotter,
    plain: Snapshotter,
    commands: dict[str, list[str]],
    runs: int,
) -> list[Sample]:
    """A warm-up pair, then ``runs`` pairs in alternating order; the counted samples."""
    samples: list[Sample] = []
    for rep in range(-1, runs):
        order = (FAST, PLAIN) if rep % 2 == 0 else (PLAIN, FAST)
        for name in order:
            bench.snapshotter = fast if name == FAST else plain
            sample = bench.timed_argv("unpack", name, rep, commands[name])
            if rep >= 0:
                samples.append(sample)
    return samples


@dataclass
class SetUp:
    """What :func:`set_up` started: containerd over the snapshotters, the pushed image."""

    daemon: Containerd
    snapshotters: list[Snapshotter]
    image: PushedDebian
    ref: str
    sock_dir: Path


@contextlib.contextmanager
def set_up(
    data: Path,
    snapshotters: Callable[[Path], list[Snapshotter]],
    containerd: Callable[[list[Snapshotter]], Containerd] | None = None,
) -> Iterator[SetUp]:
    """Build the image and push it to a fresh registry, start the snapshotters (made by
    ``snapshotters`` with their socket folder) and containerd (``containerd``; default: the
    first snapshotter as the ``lcow`` proxy); afterwards stop all of it by pid and release the
    snapshotters' views."""
    registry = Registry(data / "registry").start()
    sock_dir = short_dir("lcowb-")
    started = snapshotters(sock_dir)
    daemon: Containerd | None = None
    try:
        log("building the image")
        image = push_debian(data, registry.address)
        ref = image.reference
        log(f"pushed {ref}: base {image.base}, layers {image.gzip_layer_bytes}")
        for snapshotter in started:
            snapshotter.start()
        if containerd is None:
            daemon = Containerd(short_dir("cdb-"), proxy=started[0].socket).start()
        else:
            daemon = containerd(started)
        yield SetUp(daemon, started, image, ref, sock_dir)
    finally:
        if daemon is not None:
            daemon.close()
        for running in started:
            status = running.stop()
            Driver(running.root, ["lcow.backend=host"]).cleanup()
            if status != 0:
                log(f"a snapshotter exited {status}: {running.log.read_text()[-2000:]}")
        registry.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


def measure_fastpath(data: Path, runs: int, hold: bool) -> dict[str, Any]:
    gopull = build_gopull(data / "go")

    def snapshotters(sock_dir: Path) -> list[Snapshotter]:
        fast = Snapshotter(data / "fast-root", sock_dir / "fast.sock", data / "fast.log",
                           extra=["--containerd-address", str(sock_dir / "cd.sock")])  # fmt: skip
        return [fast, Snapshotter(data / "plain-root", sock_dir / "plain.sock", data / "plain.log")]

    def two_proxies(started: list[Snapshotter]) -> Containerd:
        fast, plain = started
        return TwoProxies(short_dir("cdb-"), proxy=fast.socket, plain=plain.socket).start()

    with set_up(data, snapshotters, two_proxies) as setup:
        daemon, (fast, plain), image, ref = setup.daemon, setup.snapshotters, setup.image, setup.ref
        (setup.sock_dir / "cd.sock").symlink_to(daemon.address)
        daemon.ctr("content", "fetch", "--plain-http", ref)
        script = data / "unpack.sh"
        keys = chain_ids(image.diff_ids)
        script.write_text(unpack_script(daemon, gopull, ref, keys))
        commands = {name: ["sh", str(script), name] for name in (FAST, PLAIN)}
        if hold:
            for name, argv in commands.items():
                print(f"{name}: {' '.join(argv)}", flush=True)
            input("set up; press Enter to tear down\n")
            return {}
        samples = paired_unpacks(Bench(daemon, fast, ref), fast, plain, commands, runs)
        fast_layers = fast.log.read_text().count(FAST_LINE)
        plain_commits = plain.log.read_text().count(COMMIT_LINE)
        layers = len(image.diff_ids)
        return {
            "image": {"base": image.base, "gzip_layer_bytes": image.gzip_layer_bytes},
            "samples": [asdict(s) for s in samples],
            "fast_path_layers": fast_layers,
            "plain_commits": plain_commits,
            "expected_each": layers * (runs + 1),
            "summary": summarize(samples, rows=("unpack",), names=(FAST, PLAIN)),
        }  # fmt: skip


def one_lcow(data: Path, content_store: bool = False) -> Callable[[Path], list[Snapshotter]]:
    """The single ``lcow`` snapshotter of :func:`measure` and :func:`serve_only`; with
    ``content_store``, it reads containerd's content store (``--containerd-address``, a
    symlink ``cd.sock`` in the socket folder made once containerd runs)."""

    def make(sock_dir: Path) -> list[Snapshotter]:
        extra = ["--containerd-address", str(sock_dir / "cd.sock")] if content_store else []
        return [Snapshotter(data / "lcow-root", sock_dir / "lcow.sock", data / "lcow.log",
                            extra=extra)]  # fmt: skip

    return make


# -- main --------------------------------------------------------------------------------------


def measure(data: Path, runs: int, rows: tuple[str, ...] = ROWS) -> dict[str, Any]:
    with set_up(data, one_lcow(data)) as setup:
        daemon, ref, image = setup.daemon, setup.ref, setup.image
        bench = Bench(daemon, setup.snapshotters[0], ref)
        samples: list[Sample] = []
        for rep in range(runs if "pull" in rows else 0):
            order = SNAPSHOTTERS if rep % 2 == 0 else SNAPSHOTTERS[::-1]
            samples += [bench.pull(name, rep) for name in order]
        for name in SNAPSHOTTERS:  # unpacked for both (the content is there: unpack only)
            daemon.ctr("images", "pull", "--plain-http", "--snapshotter", name, ref)
        layers = len(image.diff_ids)
        for rep in range(runs if "run" in rows else 0):
            order = SNAPSHOTTERS if rep % 2 == 0 else SNAPSHOTTERS[::-1]
            samples += [bench.run(name, rep, layers) for name in order]
        bench.remove_image()
        return {
            "image": {"base": image.base, "base_trees": BASE_TREES,
                      "gzip_layer_bytes": image.gzip_layer_bytes},
            "samples": [asdict(s) for s in samples],
            "summary": summarize(samples, rows),
        }  # fmt: skip


def serve_only(data: Path, commands: Path, content_store: bool = False) -> dict[str, Any]:
    """Set up as :func:`measure` does, the image unpacked for both snapshotters; write the
    ``ctr run`` and ``ctr images pull`` command lines of each snapshotter to ``commands``
    (shell words, one ``NAME=ARGV`` a line) for an outside timer; serve until SIGTERM or
    SIGINT, then stop everything. ``content_store``: as :func:`one_lcow`."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with set_up(data, one_lcow(data, content_store)) as setup:
        daemon, ref = setup.daemon, setup.ref
        if content_store:
            (setup.sock_dir / "cd.sock").symlink_to(daemon.address)
        for name in SNAPSHOTTERS:
            daemon.ctr("images", "pull", "--plain-http", "--snapshotter", name, ref)
        ctr = [CTR, "--address", str(daemon.address), "-n", daemon.namespace]
        lines = []
        for name in SNAPSHOTTERS:
            run = [*ctr, "run", "--fifo-dir", str(daemon.dir / "fifo"), "--rm",
                   "--snapshotter", name, ref, f"bench-{name}", "true"]  # fmt: skip
            pull = [*ctr, "images", "pull", "--plain-http", "--snapshotter", name, ref]
            lines += [f"run_{name}={shlex.join(run)}", f"pull_{name}={shlex.join(pull)}"]
        lines += [f"rm={shlex.join([*ctr, 'images', 'rm', '--sync', ref])}",
                  f"snapshots={shlex.join([*ctr, 'snapshots'])}"]  # fmt: skip
        commands.write_text("\n".join(lines) + "\n")
        log(f"serving; commands in {commands}; SIGTERM ends")
        stop.wait()
        return {"machine": machine()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="paired repetitions per row")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="work directory (removed)")
    ap.add_argument("--out", type=Path, help="write every sample and the machine as JSON")
    ap.add_argument("--keep", action="store_true", help="keep --data afterwards")
    ap.add_argument(
        "--fastpath",
        action="store_true",
        help="measure the content-store fast path against commit-time conversion",
    )
    ap.add_argument(
        "--hold",
        action="store_true",
        help="with --fastpath: set up, print the two commands, wait for Enter",
    )
    ap.add_argument(
        "--rows",
        default=",".join(ROWS),
        help="comma-separated rows to measure (pull, run; default both)",
    )
    ap.add_argument(
        "--serve",
        type=Path,
        metavar="COMMANDS",
        help="set up only: write the timed commands to COMMANDS and serve until "
        "SIGTERM, for an outside timer (e.g. hyperfine or /usr/bin/time)",
    )
    ap.add_argument(
        "--content-store",
        action="store_true",
        help="with --serve: the lcow server reads containerd's content store "
        "(--containerd-address: the fast path and staged unpacks)",
    )
    args = ap.parse_args()
    if args.data.exists():
        raise SystemExit(f"{args.data} exists: remove it or choose another --data")
    if args.serve is not None:
        try:
            serve_only(args.data, args.serve, args.content_store)
        finally:
            if not args.keep:
                shutil.rmtree(args.data, ignore_errors=True)
        return 0
    started = time.monotonic()
    try:
        if args.fastpath:
            result = measure_fastpath(args.data, args.runs, args.hold)
            if args.hold:
                return 0
        else:
            rows = tuple(r for r in ROWS if r in args.rows.split(","))
            result = measure(args.data, args.runs, rows)
    finally:
        if not args.keep:
            shutil.rmtree(args.data, ignore_errors=True)
    result["machine"] = machine()
    result["seconds"] = time.monotonic() - started
    if args.fastpath:
        print(table(result["summary"], (PLAIN, FAST), f"{FAST} / {PLAIN}"))
        print(
            f"layers through the fast path: {result['fast_path_layers']} (lcow), "
            f"committed by the differ: {result['plain_commits']} ({PLAIN}); "
            f"expected {result['expected_each']} each"
        )
    else:
        print(table(result["summary"]))
    print(f"image base: {result['image']['base']}; run took {result['seconds']:.0f} s")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
