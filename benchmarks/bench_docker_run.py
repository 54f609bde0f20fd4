#!/usr/bin/env python3
"""Container start with dockerd (issue 17): ``docker run --rm`` on the lcow plugin vs overlay2.

    sudo TMPDIR=/tmp/SHORT .venv/bin/python benchmarks/bench_docker_run.py [--runs 21]
    sudo TMPDIR=/tmp/SHORT .venv/bin/python benchmarks/bench_docker_run.py --serve CMDS &
        # time the two lines of CMDS (NAME=ARGV, shell words) with an outside paired timer,
        # then end it with SIGTERM (everything is stopped, unmounted and removed)

Two dockerd 20.10 run side by side, started as the end-to-end tests start them
(``tests/plugin/dockerd.py``, SPEC §9.8: ``--experimental``, data root, exec root, pid file and
API socket in one temporary directory under ``/var/tmp``, host networking left alone): one on
``lcow plugin serve`` (host backend; its storage daemon and idle layer disks linger between
containers as they do in use), one on overlay2. Both get the same one-layer image, imported from
a root filesystem tar around Debian's static busybox (the plugin tests' image). The timed
command, for each daemon, is Debian's 20.10 CLI::

    /usr/bin/docker -H unix://SOCKET run --rm --network none --pull never IMG true

which makes dockerd create two writable layers (the ``-init`` layer and the container's),
mount, start and wait for the container, unmount and remove both layers before it returns.

Without ``--serve``: one warm-up each, then ``--runs`` pairs in alternating order, each
command timed wall-clock from spawn to ``wait4`` (its user and sys CPU from the same call: the
CLI's own, the daemons' work shows only in the wall time). Reported: medians (min-max) and the
median of the per-pair ratios lcow / overlay2. Target: <= 1.2x.

At the end every process is stopped by its pid (both dockerds and their containerd, the plugin
server, which stops its storage daemon), every mount below the directory is undone, and the
run fails if a mount, a process, a loop device on a file below the directory, or the plugin
socket is left.
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
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# plugin_common first: it puts the repository's src and root on sys.path.
from plugin_common import REPO, log

# isort: split
from tests.plugin.dockerd import (
    DOCKER,
    Daemon,
    PluginProcess,
    busybox_rootfs,
    leftovers,
    unique_name,
)

__all__ = ["IMAGE", "main", "run_argv", "started"]

IMAGE = "lcowbench/busybox:1"
NAMES = ("lcow", "overlay2")


def run_argv(daemon: Daemon) -> list[str]:
    """The timed ``docker run`` against ``daemon`` (its socket named, no environment needed)."""
    return [DOCKER, "-H", f"unix://{daemon.socket}", "run", "--rm", "--network", "none",
            "--pull", "never", IMAGE, "true"]  # fmt: skip


def loop_devices_below(base: Path) -> list[str]:
    """``losetup -a`` lines whose backing file lies below ``base``."""
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if f"({base}/" in line or f"{base}/" in line]


@contextmanager
def started() -> Iterator[dict[str, Daemon]]:
    """Both dockerds with the image imported; everything stopped and checked afterwards."""
    base = Path(tempfile.mkdtemp(prefix="lcow-dkrun-", dir="/var/tmp"))
    plugin = PluginProcess(base, unique_name())
    daemons: list[Daemon] = []
    try:
        rootfs = busybox_rootfs(base / "rootfs.tar")
        plugin.start()
        daemons.append(Daemon(base, "lcow", plugin.name))
        daemons.append(Daemon(base, "overlay2", "overlay2"))
        for daemon in daemons:
            daemon.start()
            daemon.docker("import", str(rootfs), IMAGE)
        yield dict(zip(NAMES, daemons, strict=True))
    finally:
        for daemon in daemons:
            daemon.stop()
        status = plugin.stop()
        left = leftovers(base, [plugin.socket]) + loop_devices_below(base)
        plugin_log = plugin.log()
        if not left:
            shutil.rmtree(base, ignore_errors=True)
    if status != 0 or left:
        raise SystemExit(f"plugin exit {status}, left behind in {base}: {left}\n{plugin_log}")
    log(f"stopped; nothing left below {base}")


def timed(argv: list[str]) -> dict[str, float]:
    """Wall, user and sys seconds of one run of ``argv`` (which must succeed)."""
    begin = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - begin
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read() if proc.stderr else b""
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} exited {proc.returncode}: {stderr[-2000:]!r}")
    return {"wall": wall, "user": usage.ru_utime, "sys": usage.ru_stime}


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(runs: int) -> dict[str, Any]:
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in NAMES}
    load_before = os.getloadavg()
    with started() as daemons:
        argv = {name: run_argv(daemons[name]) for name in NAMES}
        for name in NAMES:
            timed(argv[name])  # warm-up: page cache, containerd, lingering storage daemon
        for rep in range(runs):
            for name in NAMES if rep % 2 == 0 else NAMES[::-1]:
                samples[name].append(timed(argv[name]))
    paired = [a["wall"] / b["wall"] for a, b in zip(samples["lcow"], samples["overlay2"],
                                                      strict=True)]  # fmt: skip
    return {
        "commands": {name: shlex.join(args) for name, args in argv.items()},
        "samples": samples,
        "wall": {name: spread([s["wall"] for s in samples[name]]) for name in NAMES},
        "cli_cpu": {name: spread([s["user"] + s["sys"] for s in samples[name]]) for name in NAMES},
        "paired_ratio": spread(paired),
        "target": 1.2,
        "load": {"before": load_before, "after": os.getloadavg()},
    }


def serve_only(commands: Path) -> None:
    """Set up, write ``lcow=ARGV`` and ``overlay2=ARGV`` to ``commands``, serve until SIGTERM
    or SIGINT, then stop everything."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with started() as daemons:
        lines = [f"{name}={shlex.join(run_argv(daemons[name]))}" for name in NAMES]
        commands.write_text("\n".join(lines) + "\n")
        log(f"serving; commands in {commands}; SIGTERM ends")
        stop.wait()


def machine() -> dict[str, Any]:
    def out(argv: list[str]) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()

    return {
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "dockerd": out(["dockerd", "--version"]),
        "commit": out(["git", "-C", str(REPO), "rev-parse", "HEAD"]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=21, help="paired repetitions")
    ap.add_argument("--out", type=Path, help="write every sample and the machine as JSON")
    ap.add_argument("--serve", type=Path, metavar="COMMANDS",
                    help="set up only: write the two timed commands to COMMANDS and serve until "
                    "SIGTERM, for an outside timer (e.g. hyperfine or /usr/bin/time)")  # fmt: skip
    args = ap.parse_args()
    if args.serve is not None:
        serve_only(args.serve)
        return 0
    result = measure(args.runs)
    result["machine"] = machine()
    wall, cpu, ratio = result["wall"], result["cli_cpu"], result["paired_ratio"]
    for name in NAMES:
        print(f"{name:9} wall {wall[name]['median']:.3f} s ({wall[name]['min']:.3f}-"
              f"{wall[name]['max']:.3f}), CLI user+sys {cpu[name]['median']:.3f} s")  # fmt: skip
    print(f"lcow / overlay2: {ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f}), "
          f"{args.runs} pairs, load {result['load']['before'][0]:.1f} -> "
          f"{result['load']['after'][0]:.1f}")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
