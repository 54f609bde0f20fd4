#!/usr/bin/env python3
"""Time the vm backend under TCG (issue "vm"): cold start, hot-add, tar streaming.

    python benchmarks/bench_vm.py [--runs 3] [--mib 256] [--root DIR] [--out FILE.json]

Rows (each repeated ``--runs`` times, medians reported):

  cold-start   a fresh driver (per-id mode) with one layer: ``get`` + the first ``readdir``,
               i.e. QEMU start, kernel boot, agent handshake, hot-add and mount of the layer.
               Target: <= 3 s.
  hot-add      in a running VM (global mode): one layer.vhd hot-added over QMP and mounted by
               the guest (``ServiceVM.hot_add`` of one disk), until the mount answers.
               Target: <= 100 ms.
  tar-in       ``extract_archive`` of a tar of ``--mib`` MiB (8 MiB random files) into a
               sandbox view: tar parsed on the host, files written in the guest (ext4 on the
               sandbox.vhdx through QEMU). Target: >= 60 MiB/s.
  tar-out      ``archive_path`` of that tree back, read to the end. Target: >= 150 MiB/s.

Needs QEMU and the assets of ``lcow uvm build``. Other sessions' workloads share the CPUs:
only numbers of the same run compare.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from lcow.backends.vm import VmBackend
from lcow.backends.vm.svm import DiskSpec
from lcow.graphdriver.driver import Driver

FILE_MIB = 8


def _layer_tar(files: dict[str, bytes]) -> io.BytesIO:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out.seek(0)
    return out


def cold_start(base: Path, run: int) -> float:
    drv = Driver(base / f"cold{run}", ["lcow.backend=vm"])
    try:
        drv.create("a", None)
        drv.apply_diff("a", None, _layer_tar({"f": b"x"}))
        started = time.perf_counter()
        drv.get("a").readdir("/")
        return time.perf_counter() - started
    finally:
        drv.cleanup()


def hot_add(base: Path, layers: int, run: int) -> list[float]:
    drv = Driver(base / f"hot{run}", ["lcow.backend=vm", "lcow.globalmode=true"])
    try:
        drv.create("boot", None)
        drv.get("boot").readdir("/")  # the VM runs
        backend = drv.backend
        assert isinstance(backend, VmBackend)
        entry = backend.vms()[0]
        times = []
        for i in range(layers):
            drv.create(f"l{i}", None)
            drv.apply_diff(f"l{i}", None, _layer_tar({f"f{i}": b"x" * 4096}))
            spec = DiskSpec(drv.root.layer_dir(f"l{i}") / "layer.vhd", False)
            with entry.lock:
                started = time.perf_counter()
                entry.hot_add([spec])
                times.append(time.perf_counter() - started)
                entry.hot_remove([spec.key])
        drv.put("boot")
        return times
    finally:
        drv.cleanup()


def streaming(base: Path, mib: int, run: int) -> tuple[float, float]:
    drv = Driver(base / f"tar{run}", ["lcow.backend=vm", "lcow.globalmode=true"])
    try:
        payload = _layer_tar({f"f{i}": os.urandom(FILE_MIB << 20) for i in range(mib // FILE_MIB)})
        size = len(payload.getvalue()) / (1 << 20)
        drv.create_read_write("rw", None)
        view = drv.get("rw")
        view.readdir("/")  # started and mounted: stream timing only
        started = time.perf_counter()
        view.extract_archive("/data", payload)
        tar_in = size / (time.perf_counter() - started)
        total = 0

        def sink(chunk: bytes) -> None:
            nonlocal total
            total += len(chunk)

        started = time.perf_counter()
        view.archive_path("/data", sink)
        tar_out = total / (1 << 20) / (time.perf_counter() - started)
        drv.put("rw")
        return tar_in, tar_out
    finally:
        drv.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--layers", type=int, default=10, help="hot-adds per run")
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-vm-", dir=args.root))
    results: dict[str, list[float]] = {"cold_start_s": [], "hot_add_s": [],
                                       "tar_in_mib_s": [], "tar_out_mib_s": []}  # fmt: skip
    try:
        for run in range(args.runs):
            results["cold_start_s"].append(cold_start(base, run))
            results["hot_add_s"] += hot_add(base, args.layers, run)
            tar_in, tar_out = streaming(base, args.mib, run)
            results["tar_in_mib_s"].append(tar_in)
            results["tar_out_mib_s"].append(tar_out)
            print(f"run {run}: cold {results['cold_start_s'][-1]:.2f} s, tar in {tar_in:.0f} "
                  f"MiB/s, out {tar_out:.0f} MiB/s", file=sys.stderr)  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)
    summary = {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}
               for k, v in results.items()}  # fmt: skip
    summary["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(),  # type: ignore[assignment]
                          "load": os.getloadavg()}  # fmt: skip
    text = json.dumps({"summary": summary, "samples": results}, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
