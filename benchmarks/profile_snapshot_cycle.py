#!/usr/bin/env python3
"""Where a container's snapshot costs go: Prepare, Mounts and Remove of the lcow snapshotter.

    sudo TMPDIR=/tmp/SHORT .venv/bin/python benchmarks/profile_snapshot_cycle.py [--cycles 30]
        [--layers 4] [--linger SECONDS] [--data /var/tmp/lcow-profile-cycle]

What ``ctr run --rm`` asks of the snapshotter for one container, without containerd: over a
committed chain of ``--layers`` small layers, ``prepare`` (a ``sandbox.vhdx`` from the
template, then a host-backend Get: the chain's images loop-mounted, the sandbox exported by
``qemu-storage-daemon`` over FUSE, a loop device on the export, ext4, an overlay), ``mounts``,
then ``remove`` (the Put, unmounts, the end of the export, the folder deleted). The steps are
timed in this process by wrapping the functions that do them (inclusive wall times, so a step
contains the steps it calls); each call's total is beside them. Medians and 90th percentiles
over ``--cycles`` cycles after one warm-up.
"""

from __future__ import annotations

import argparse
import functools
import io
import shutil
import statistics
import sys
import tarfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "src")]

from lcow.backends.host import backend as host_backend  # noqa: E402
from lcow.backends.host import diskflush, kernel, storage_daemon, table  # noqa: E402
from lcow.graphdriver import driver as graph_driver  # noqa: E402
from lcow.graphdriver.driver import Driver  # noqa: E402
from lcow.snapshots import metastore  # noqa: E402
from lcow.snapshots.snapshotter import Snapshotter  # noqa: E402
from lcow.storage import dataroot  # noqa: E402

__all__ = ["main"]

TIMES: dict[str, list[float]] = defaultdict(list)


def timed(owner: Any, name: str, label: str) -> None:
    """Replace ``owner.name`` by a wrapper adding each call's wall time to ``TIMES[label]``."""
    real: Callable[..., Any] = getattr(owner, name)
    is_cm = name == "transaction"

    if is_cm:

        @functools.wraps(real)
        def wrapper_cm(*args: Any, **kwargs: Any) -> Any:
            import contextlib

            @contextlib.contextmanager
            def cm() -> Any:
                start = time.perf_counter()
                with real(*args, **kwargs) as value:
                    yield value
                TIMES[label].append(time.perf_counter() - start)

            return cm()

        setattr(owner, name, wrapper_cm)
        return

    @functools.wraps(real)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            TIMES[label].append(time.perf_counter() - start)

    setattr(owner, name, wrapper)


STEPS = [
    (Snapshotter, "prepare", "prepare"),
    (Snapshotter, "mounts", "mounts"),
    (Snapshotter, "remove", "remove"),
    (Driver, "create_read_write", "prepare: create_read_write"),
    (graph_driver, "copy_sandbox", "prepare: . copy of the sandbox template"),
    (Driver, "get", "prepare: driver get"),
    (storage_daemon.StorageDaemon, "start", "get: . storage daemon start"),
    (storage_daemon.StorageDaemon, "export", "get: . QMP export (blockdev-add + fuse)"),
    (host_backend.HostBackend, "_mount_disks", "get: . loop + ext4 mounts"),
    (kernel, "mount_overlay", "get: . overlay mount"),
    (Driver, "remove", "remove: driver remove"),
    (kernel, "umount", "remove: . umount (each)"),
    (diskflush, "wait_loop_released", "remove: . wait for the loop device"),
    (storage_daemon.StorageDaemon, "unexport", "remove: . QMP unexport"),
    (storage_daemon.StorageDaemon, "stop", "remove: . storage daemon stop"),
    (dataroot.DataRoot, "remove_layer", "remove: . folder delete"),
    (table.MountTable, "transaction", "mount-table transaction (each)"),
    (metastore.MetaStore, "transaction", "metastore transaction (each)"),
]


def layer_tar(index: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for n in range(20):
            data = f"layer {index} file {n}\n".encode()
            info = tarfile.TarInfo(f"l{index}/f{n}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=30)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--data", type=Path, default=Path("/var/tmp/lcow-profile-cycle"))
    ap.add_argument(
        "--linger",
        type=float,
        default=0.0,
        help="Driver.linger seconds, as the servers set it (0: the CLI's default)",
    )
    args = ap.parse_args()
    if args.data.exists():
        raise SystemExit(f"{args.data} exists: remove it or choose another --data")
    driver = Driver(args.data, ["lcow.backend=host"])
    if args.linger:  # (a checkout from before Driver.linger can be profiled without it)
        driver.linger(args.linger)
    snap = Snapshotter(driver)
    try:
        parent = None
        for index in range(args.layers):
            key = f"build-{index}"
            snap.prepare(key, parent)
            (Path(snap.mounts(key)[0].source) / f"l{index}").mkdir()
            with tarfile.open(fileobj=io.BytesIO(layer_tar(index))) as tar:
                tar.extractall(snap.mounts(key)[0].source)
            snap.commit(f"layer-{index}", key)
            parent = f"layer-{index}"
        for owner, name, label in STEPS:
            timed(owner, name, label)
        for cycle in range(args.cycles + 1):
            if cycle == 1:
                TIMES.clear()  # the first cycle warms caches up
            start = time.perf_counter()
            snap.prepare(f"c{cycle}", parent)
            snap.mounts(f"c{cycle}")
            snap.remove(f"c{cycle}")
            TIMES["cycle (prepare + mounts + remove)"].append(time.perf_counter() - start)
    finally:
        snap.close()
        if args.linger:
            driver.stop_lingering()
        driver.cleanup()
        shutil.rmtree(args.data, ignore_errors=True)
    print(f"{args.cycles} cycles over {args.layers} layers; ms per call: median / p90 / calls "
          "per cycle")  # fmt: skip
    for label, values in TIMES.items():
        ordered = sorted(values)
        p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
        print(f"  {label:48s} {statistics.median(values) * 1e3:7.1f} {p90 * 1e3:7.1f} "
              f"{len(values) / args.cycles:5.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
