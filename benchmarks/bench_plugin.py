#!/usr/bin/env python3
"""Benchmark the graph-driver plugin (issue 6): ``docker load`` against overlay2, and 32
concurrent clients.

    sudo .venv/bin/python benchmarks/bench_plugin.py [--parts load,concurrency] [--runs 5]
        [--data /var/tmp/lcow-bench] [--clients 32] [--calls 1000] [--out FILE.json]

Part ``load`` — ``docker load`` of a one-layer image whose layer is D1 (the Debian minbase
rootfs, ``DIR/d1.tar``; see ``datasets.py``), packed once into ``DIR/d1-image.tar``
(``docker save`` layout, layer stored uncompressed). Two dockerd 20.10 run side by side, started
as the end-to-end tests start them (SPEC §9.8, everything in a temporary directory under
``/var/tmp``, the same disk as the data): one on ``lcow plugin serve`` (host backend), one on
overlay2. Each repetition loads the image into both, in an order alternating per repetition,
each load preceded by ``sync`` and timed wall-clock from spawning ``/usr/bin/docker load`` to its
exit; after it, ``docker rmi`` and ``sync`` (untimed). Reported: medians, min and max over
``--runs``, the ratio of the medians and the median of the per-repetition ratios. Target: lcow
<= 1.2x overlay2.

Part ``concurrency`` — ``--clients`` threads (in a separate process, so that they do not share
the server's interpreter) send ``--calls`` calls in all to a plugin served in this process over
the host backend, each on its own connection, through a mix of Create, ApplyDiff, Get, Put,
Exists, GetMetadata, Status, Changes, DiffSize, Diff and Remove on their own layers and Gets and
Puts on one shared layer; a quarter of the clients keep one Get of the shared layer. Every client
keeps its own expected count per layer. Afterwards: errors must be 0 and the driver's count of
every layer must equal the expected one exactly; then the kept Gets are Put back and Cleanup
runs. Reported: calls/s, latency percentiles per method.

Part ``upload`` — ApplyDiff throughput: ``lcow plugin serve`` (host backend) as its own
process, one tar of ``--upload-mib`` MiB (4 KiB and 4 MiB files) streamed from a file as dockerd
streams it (chunked, 1 MiB writes): ``--runs`` uploads one after the other, then four at once.
Reported: seconds and MB/s per upload, the four's total.

Part ``restarts`` — reliability campaign (benchmarks/RELIABILITY.md): dockerd 20.10 on the
plugin runs a container that appends a numbered line to a file every 200 ms (a fresh open and a
held descriptor, each synced); the plugin is restarted ``--restarts`` times (SIGTERM, start
again). After each: ``docker exec`` reads the file (every line before, without a gap, and none
gone since the last read), Get answers the same directory, the mounts below the data root and
the storage daemon are the same. At the end the file read through the container and through
the host directory must be identical, ``docker cp`` must land in the filesystem the container
sees, the kernel log must hold no lost write, and ``rm -f`` plus dockerd's stop must leave
nothing mounted.

Part ``stalls`` — reliability campaign: ``--stalls`` ApplyDiff uploads that send headers and part
of a chunked body, then nothing (two more stall after 320 KiB, inside an upload slot), against
``lcow plugin serve --idle-timeout --stall-idle``; meanwhile a client calls Exists and Status on
fresh connections, and a slow upload keeps moving. Reported: the latencies, when each stalled
upload failed and how, the layer folders afterwards, the server's peak RSS, its shutdown.

The JSON (``--out``) holds every sample and the machine (CPUs, kernel, versions, load). Each
part lives in ``plugin_<part>.py`` next to this script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

# plugin_common first: it puts the repository's src and root on sys.path.
from plugin_common import REPO, log
from plugin_concurrency import bench_concurrency, client_main
from plugin_load import bench_load
from plugin_restarts import bench_restarts
from plugin_stalls import bench_stalls
from plugin_upload import bench_upload

DEFAULT_DATA = Path("/var/tmp/lcow-bench")


# -- main --------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    def version(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return ""

    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "dockerd": version(["dockerd", "--version"]),
        "commit": version(["git", "-C", str(REPO), "rev-parse", "HEAD"]),
        "load": os.getloadavg(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="load,concurrency")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--upload-mib", type=int, default=256)
    parser.add_argument("--restarts", type=int, default=20)
    parser.add_argument("--stalls", type=int, default=70)
    parser.add_argument("--stall-idle", type=float, default=10.0)
    parser.add_argument("--keep", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--client-mode", metavar="SOCKET", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.client_mode:
        client_main(args.client_mode, args.clients, args.calls, args.keep)
        return 0
    result: dict[str, Any] = {"machine": machine()}
    parts = args.parts.split(",")
    if "load" in parts:
        load = bench_load(args.data, args.runs)
        result["load"] = load
        log(
            f"docker load D1: lcow {load['median']['lcow']:.2f} s, overlay2 "
            f"{load['median']['overlay2']:.2f} s, ratio {load['ratio_of_medians']:.2f} "
            f"(paired {load['median_paired_ratio']:.2f}; target <= 1.2)"
        )
    if "concurrency" in parts:
        conc = bench_concurrency(args.clients, args.calls)
        result["concurrency"] = conc
        log(
            f"{conc['clients']} clients, {conc['calls']} calls in {conc['elapsed']:.2f} s "
            f"({conc['calls_per_second']:.0f}/s): {len(conc['errors'])} errors, "
            f"{len(conc['count_mismatches'])} count mismatches, shared layer "
            f"{conc['shared_count']} (expected {conc['shared_expected']}), "
            f"{conc['shared_after_puts']} after Puts, leftovers {conc['leftovers']}"
        )
    if "upload" in parts:
        up = bench_upload(args.runs, args.upload_mib)
        result["upload"] = up
        log(
            f"ApplyDiff of {up['tar_bytes'] / 1e6:.0f} MB: median {up['median_s']:.2f} s "
            f"({up['median_mb_per_s']:.0f} MB/s); four at once {up['four_at_once_s']:.2f} s "
            f"({up['four_at_once_mb_per_s']:.0f} MB/s)"
        )
    if "restarts" in parts:
        restarts = bench_restarts(args.restarts)
        result["restarts"] = restarts
        log(f"{args.restarts} plugin restarts: problems {restarts['problems']}")
    if "stalls" in parts:
        stalls = bench_stalls(args.stalls, args.stall_idle)
        result["stalls"] = stalls
        log(f"{stalls['stalled']} stalled uploads: {json.dumps(stalls['latency_ms'])}, "
            f"peak RSS {stalls['peak_rss_mib']:.0f} MiB")  # fmt: skip
    result["machine"]["load_after"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    failed = "concurrency" in result and (
        result["concurrency"]["errors"] or result["concurrency"]["count_mismatches"]
    )
    failed = failed or bool(result.get("restarts", {}).get("problems"))
    if "stalls" in result:
        stalls = result["stalls"]
        failed = failed or bool(
            stalls["call_failures"]
            or stalls["failed_408_naming_layer"] != stalls["stalled"]
            or not stalls["folders_untouched"]
            or stalls["tracebacks_in_log"]
            or stalls["server_exit"] != 0
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
