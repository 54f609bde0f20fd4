#!/usr/bin/env python3
"""Time the walks of a large layer image: reader walk, Diff export, scans, and the view walks.

    python benchmarks/bench_walk.py [--entries 100000] [--runs 5] [--work DIR] [--out FILE.json]

Builds once (untimed) a layer with ``--entries`` entries — 1 % directories two levels deep, the
rest small files, a symlink and a hard link every 50 entries — in a data root under ``--work``
(``ApplyDiff`` of a generated tar, userspace backend), then times, each run in the same order
after one untimed warm-up:

  walk          ``Ext4Reader.walk_inodes("/")`` to its end
  walk-entries  ``Ext4Reader.walk("/")`` (xattrs, link targets: Entry objects)
  export        ``export_layer`` (vhd2tar, Diff of a base layer) into ``/dev/null``
  changes       ``Driver.changes(id, None)`` + ``Driver.diff_size(id, None)``
  view-tree     ``lcow.cli.tree_cmd.walk`` over ``Driver.get(id)`` (the userspace union)
  fsspec-find   ``ViewFileSystem(view).find("/")``

Prints the median wall seconds of each (JSON with ``--out``). Used to check that loop
detection and iterative walks cost the reader nothing measurable: run it with
``PYTHONPATH=<other checkout>/src`` to time another version of lcow on the same image.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import lcow
from lcow.backends.fsspec_view import ViewFileSystem
from lcow.cli.tree_cmd import walk as tree_walk
from lcow.convert.export import export_layer
from lcow.formats.ext4.reader import Ext4Reader
from lcow.graphdriver.driver import Driver

LAYER = "big"


def build(work: Path, entries: int) -> Driver:
    """The data root with one layer of ``entries`` entries (made once, reused)."""
    root = work / f"root-{entries}"
    driver = Driver(root)
    if (root / LAYER / "layer.vhd").exists():
        return driver
    buf = io.BytesIO()
    dirs = max(1, entries // 100)
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in range(dirs):
            info = tarfile.TarInfo(f"top{d % 10}/dir{d}")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
        for n in range(entries - dirs):
            name = f"top{n % dirs % 10}/dir{n % dirs}/f{n}"
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if n % 50 == 1:
                info.type, info.linkname = tarfile.SYMTYPE, "../elsewhere/" + "t" * (n % 90)
                tar.addfile(info)
            elif n % 50 == 2:
                info.type, info.linkname = tarfile.LNKTYPE, f"top{0}/dir0/f0"
                tar.addfile(info)
            else:
                data = b"x" * (n % 3000)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    driver.create(LAYER)
    driver.apply_diff(LAYER, None, buf)
    return driver


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/lcow-bench-walk"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    driver = build(args.work, args.entries)
    image = driver.root.layer_dir(LAYER) / "layer.vhd"

    def walk() -> None:
        with Ext4Reader.open(image) as reader:
            for _ in reader.walk_inodes(b"/"):
                pass

    def walk_entries() -> None:
        with Ext4Reader.open(image) as reader:
            for _ in reader.walk(b"/"):
                pass

    def export() -> None:
        with Ext4Reader.open(image) as reader, open(os.devnull, "wb") as out:
            export_layer(reader, out)

    def changes() -> None:
        driver.changes(LAYER, None)
        driver.diff_size(LAYER, None)

    def view_tree() -> None:
        view = driver.get(LAYER)
        try:
            for _ in tree_walk(view, "/"):
                pass
        finally:
            driver.put(LAYER)

    def fsspec_find() -> None:
        view = driver.get(LAYER)
        try:
            ViewFileSystem(view).find("/")
        finally:
            driver.put(LAYER)

    rows: dict[str, Callable[[], None]] = {
        "walk": walk,
        "walk-entries": walk_entries,
        "export": export,
        "changes": changes,
        "view-tree": view_tree,
        "fsspec-find": fsspec_find,
    }
    times: dict[str, list[float]] = {name: [] for name in rows}
    for fn in rows.values():
        fn()  # warm the page cache and the interpreter
    for _ in range(args.runs):
        for name, fn in rows.items():
            times[name].append(_timed(fn))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"lcow from {Path(lcow.__file__).parent}; {args.entries} entries, {args.runs} runs")
    for name, value in medians.items():
        print(f"{name:13s} {value:8.3f} s (min {min(times[name]):.3f})")
    if args.out:
        report = {"entries": args.entries, "runs": args.runs, "times": times, "medians": medians}
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
