#!/usr/bin/env python3
"""Time the host backend (issue 5): Get+Put of a deep chain, a sandbox's first write, reads.

    sudo .venv/bin/python benchmarks/bench_host.py [--data DIR] [--layers 64] [--samples 31]
                                                   [--runs 5] [--parts getput,write,read]
                                                   [--out FILE.json]

Part ``getput`` — a chain of ``--layers`` layers made by ApplyDiff of small tars (as graphtest's
addManyLayers writes them): ``get(top)`` + ``put(top)`` of the read-only top (every layer loop-
mounted, an overlay over them, all undone), and of a container on the chain (CreateReadWrite
``-init`` + container, as dockerd makes them: two sandboxes exported by the storage daemon too).
Target: median <= 50 ms for the read-only chain. ``--samples`` of each, interleaved.

Part ``write`` — a fresh default (20 GB) sandbox on a one-layer image: the time of Get, then
of the first write into the view (create a file, write 4 KiB, close; and the same with fsync,
which goes through ext4, the loop device, FUSE and qemu-storage-daemon to the VHDX). Target:
first write <= 100 ms. ``--samples`` fresh sandboxes.

Part ``read`` — every regular file of D2 (``DIR/d2.tar``) read in full through the host view
against the same files in a directory GNU tar extracted, same Python reader, alternating;
warm (page cache primed) and cold (``drop_caches`` before each run). Target: view / directory
<= 1.2. ``--runs`` repetitions; medians and the paired ratio reported.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from lcow.graphdriver.driver import Driver  # noqa: E402

DEFAULT_DATA = Path("/var/tmp/lcow-bench")
GETPUT_TARGET_MS = 50.0
WRITE_TARGET_MS = 100.0
READ_TARGET = 1.2


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _ms(samples: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(samples) * 1000, 2),
        "min_ms": round(min(samples) * 1000, 2),
        "max_ms": round(max(samples) * 1000, 2),
    }


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def part_getput(work: Path, layers: int, samples: int) -> dict[str, object]:
    driver = Driver(work / "getput", ["lcow.backend=host"])
    parent = None
    for k in range(layers):
        layer = f"layer-{k}"
        driver.create(layer, parent)
        files = {"top-id": layer.encode(), f"layer-{k}/layer-id": layer.encode()}
        driver.apply_diff(layer, parent, io.BytesIO(_tar(files)))
        parent = layer
    assert parent is not None
    driver.create_read_write("ctr-init", parent)
    driver.create_read_write("ctr", "ctr-init")
    read_only: list[float] = []
    container: list[float] = []
    cpu: list[float] = []  # this process's user + system time: less load-sensitive than wall
    try:
        for _ in range(samples):
            before = _cpu()
            read_only.append(_timed(lambda: (driver.get(parent), driver.put(parent))))
            cpu.append(_cpu() - before)
            container.append(_timed(lambda: (driver.get("ctr"), driver.put("ctr"))))
    finally:
        driver.cleanup()
    return {
        "layers": layers,
        "read_only_chain": _ms(read_only),
        "read_only_chain_cpu": _ms(cpu),
        "container_on_chain": _ms(container),
        "target_ms": GETPUT_TARGET_MS,
    }


def _cpu() -> float:
    """User + system seconds of this process and its waited-for children (mount(8))."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def part_write(work: Path, samples: int) -> dict[str, object]:
    driver = Driver(work / "write", ["lcow.backend=host"])
    driver.create("image")
    driver.apply_diff("image", None, io.BytesIO(_tar({"bin/sh": b"#!"})))
    gets: list[float] = []
    writes: list[float] = []
    synced: list[float] = []
    block = os.urandom(4096)
    try:
        for n in range(samples):
            ctr = f"ctr-{n}"
            driver.create_read_write(ctr, "image")
            start = time.perf_counter()
            view = driver.get(ctr)
            gets.append(time.perf_counter() - start)
            start = time.perf_counter()
            with open(os.path.join(view.path, "first"), "wb") as f:
                f.write(block)
            writes.append(time.perf_counter() - start)
            start = time.perf_counter()
            with open(os.path.join(view.path, "second"), "wb") as f:
                f.write(block)
                os.fsync(f.fileno())
            synced.append(time.perf_counter() - start)
            driver.put(ctr)
            driver.remove(ctr)
    finally:
        driver.cleanup()
    return {
        "get_fresh_sandbox": _ms(gets),
        "first_write_4k": _ms(writes),
        "first_write_4k_fsync": _ms(synced),
        "target_ms": WRITE_TARGET_MS,
    }


def _read_all(root: str, names: list[str]) -> int:
    total = 0
    buf = bytearray(1 << 20)
    for name in names:
        with open(os.path.join(root, name), "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return total


def _drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def part_read(work: Path, data: Path, runs: int) -> dict[str, object]:
    tar = data / "d2.tar"
    extracted = work / "extracted"
    extracted.mkdir()
    subprocess.run(["tar", "-C", str(extracted), "--numeric-owner", "-xf", str(tar)], check=True)
    with tarfile.open(tar) as t:
        names = [m.name for m in t.getmembers() if m.isreg()]
    driver = Driver(work / "read", ["lcow.backend=host"])
    driver.create("d2")
    with open(tar, "rb") as f:
        driver.apply_diff("d2", None, f)
    view = driver.get("d2")
    result: dict[str, object] = {"files": len(names)}
    try:
        size = _read_all(view.path, names)
        assert size == _read_all(str(extracted), names)
        result["bytes"] = size
        for mode in ("warm", "cold"):
            times: dict[str, list[float]] = {"view": [], "directory": []}
            ratios = []
            for run in range(runs):
                order = ["view", "directory"] if run % 2 == 0 else ["directory", "view"]
                got = {}
                for which in order:
                    root = view.path if which == "view" else str(extracted)
                    if mode == "cold":
                        _drop_caches()
                    got[which] = _timed(lambda root=root: _read_all(root, names))
                    times[which].append(got[which])
                ratios.append(got["view"] / got["directory"])
            result[mode] = {
                "view": _ms(times["view"]),
                "directory": _ms(times["directory"]),
                "ratio_of_medians": round(
                    statistics.median(times["view"]) / statistics.median(times["directory"]), 3
                ),
                "median_paired_ratio": round(statistics.median(ratios), 3),
                "target_ratio": READ_TARGET,
            }
    finally:
        driver.put("d2")
        driver.cleanup()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--layers", type=int, default=64)
    parser.add_argument("--samples", type=int, default=31)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--parts", default="getput,write,read")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    parts = args.parts.split(",")
    report: dict[str, object] = {
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "load": os.getloadavg(),
        }
    }
    with tempfile.TemporaryDirectory(prefix="lcow-bench-host-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        if "getput" in parts:
            report["getput"] = part_getput(work, args.layers, args.samples)
        if "write" in parts:
            report["write"] = part_write(work, args.samples)
        if "read" in parts:
            report["read"] = part_read(work, args.data, args.runs)
    report["machine"]["load_after"] = os.getloadavg()  # type: ignore[index]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
