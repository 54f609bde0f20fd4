#!/usr/bin/env python3
"""Time metadata walks through a host-backend view against a kernel overlay of a directory.

    sudo .venv/bin/python benchmarks/bench_view_walk.py [--data DIR] [--runs 5]
        [--ops find,ls,stat,tar] [--variants view,nomask,layer,mkfs] [--work DIR]
        [--up | --down]

Issue 17: a container's view of D2 (``DIR/d2.tar``, site-packages, ~70k entries) is an overlay
lcow's host backend mounts — the layer's ext4 image on a loop device, the sandbox's upper
directory, and the ``mask`` lower that hides ``lost+found`` — while overlay2 would mount an
overlay of the same tree extracted into a directory. Built once and kept under ``--work``
(default ``DIR/view-walk``; delete it to rebuild): a data root with the layer (``ApplyDiff``
of the tar) and a sandbox on it, and the tar extracted by GNU tar.

Variants (each a mounted tree; ``base`` is the yardstick every other one is paired with):

  base        overlay: lower = the extracted directory, upper/work beside it (overlay2's shape)
  view        ``Driver.get`` of the sandbox: what a container sees
  nomask      the same overlay as ``view`` without the ``mask`` lower
  layer       the layer's ext4 image alone (its loop mount, no overlay)
  mkfs        the extracted tree made into an image of the same size by ``mke2fs -d``, loop-
              mounted read-only, as the lower of an overlay shaped like ``view``'s (no mask):
              lcow's directory and inode layout against mke2fs's, all else equal

Operations, each a whole process given the variant's path, output thrown away:

  find   ``find V -type f``
  ls     ``ls -lR V``
  stat   ``find V -printf ...`` of inode, size and mtime (an lstat of every entry)
  tar    ``tar -C V -cf - . | cat`` (every byte read)

Every (variant, operation) runs once untimed (warm cache), then ``--runs`` rounds run each
variant's operation right after base's: the paired ratio variant/base is taken per round and
its median printed, with wall, user and system seconds (``wait4``'s accounting) beside it and
the load average before and after. ``--up`` mounts and leaves everything mounted (for timing by
other tools; prints the paths as JSON); ``--down`` unmounts all of it. Without either, the run
mounts, times and unmounts, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from lcow.graphdriver.driver import Driver  # noqa: E402

DEFAULT_DATA = Path("/var/tmp/lcow-bench")
LAYER = "d2"
SANDBOX = "ctr"
OPS = {
    "find": "find {v} -type f",
    "ls": "ls -lR {v}",
    "stat": "find {v} -printf %i.%s.%T@\\n",
    "tar": "tar -C {v} -cf - . | cat",
}


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def _umount(path: Path) -> None:
    if os.path.ismount(path):
        _run(["umount", str(path)])


def build(work: Path, tar: Path) -> Driver:
    """The data root with the layer and its sandbox, and the extracted tree (made once)."""
    driver = Driver(work / "root", ["lcow.backend=host"])
    if not driver.exists(LAYER):
        driver.create(LAYER)
        with open(tar, "rb") as f:
            driver.apply_diff(LAYER, None, f)
    if not driver.exists(SANDBOX):
        driver.create_read_write(SANDBOX, LAYER)
    extracted = work / "extracted"
    if not (work / "extracted.done").exists():
        shutil.rmtree(extracted, ignore_errors=True)
        extracted.mkdir()
        _run(["tar", "-C", str(extracted), "--numeric-owner", "--xattrs", "-xf", str(tar)])
        (work / "extracted.done").touch()
    return driver


def _overlay(target: Path, lowers: list[Path], scratch: Path | None) -> None:
    target.mkdir(parents=True, exist_ok=True)
    options = "lowerdir=" + ":".join(map(str, lowers))
    if scratch is not None:
        for name in ("upper", "work"):
            shutil.rmtree(scratch / name, ignore_errors=True)
            (scratch / name).mkdir(parents=True)
        options += f",upperdir={scratch / 'upper'},workdir={scratch / 'work'}"
    _run(["mount", "-t", "overlay", "overlay", "-o", options, str(target)])


def _mkfs_image(work: Path, layer_image: Path) -> Path:
    """The extracted tree as an ext4 image by ``mke2fs -d``, as big as lcow's (made once)."""
    image = work / "mkfs.img"
    if not image.exists():
        size = os.path.getsize(layer_image)
        part = image.with_suffix(".part")
        part.unlink(missing_ok=True)
        with open(part, "wb") as f:
            f.truncate(size + size // 4)  # mke2fs reserves more (journal-less, but 5% + tables)
        _run(
            [
                "mke2fs",
                "-q",
                "-t",
                "ext4",
                "-O",
                "^has_journal",
                "-m",
                "0",
                "-d",
                str(work / "extracted"),
                str(part),
            ]
        )
        part.rename(image)
    return image


def mount_all(work: Path, driver: Driver, variants: list[str]) -> dict[str, str]:
    """Mount what ``variants`` need; returns each variant's path."""
    mnt = work / "mnt"
    paths: dict[str, str] = {}
    _overlay(mnt / "base", [work / "extracted"], mnt / "base.rw")
    paths["base"] = str(mnt / "base")
    view = driver.get(SANDBOX)
    paths["view"] = view.path
    home = work / "root" / "mounts"
    layer_dirs = sorted(p for p in (home / "d").iterdir() if not (p / "upper").exists())
    layer_dir = layer_dirs[0]
    paths["layer"] = str(layer_dir)
    if "nomask" in variants:
        _overlay(mnt / "nomask", [layer_dir], mnt / "nomask.rw")
        paths["nomask"] = str(mnt / "nomask")
    if "mkfs" in variants:
        image = _mkfs_image(work, work / "root" / LAYER / "layer.vhd")
        (mnt / "mkfs.disk").mkdir(parents=True, exist_ok=True)
        _run(["mount", "-o", "ro,loop", str(image), str(mnt / "mkfs.disk")])
        _overlay(mnt / "mkfs", [mnt / "mkfs.disk"], mnt / "mkfs.rw")
        paths["mkfs"] = str(mnt / "mkfs")
    return {v: paths[v] for v in ["base", *variants] if v in paths}


def unmount_all(work: Path) -> None:
    """Undo :func:`mount_all` (whatever of it is mounted)."""
    mnt = work / "mnt"
    for name in ("base", "nomask", "mkfs", "mkfs.disk"):
        _umount(mnt / name)
    if (work / "root").exists():
        driver = Driver(work / "root", ["lcow.backend=host"])
        driver.cleanup()


def _timed(command: str) -> tuple[float, float, float]:
    start = time.monotonic()
    proc = subprocess.Popen(["sh", "-c", f"exec >/dev/null 2>&1; {command}"])
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):  # find/ls/tar say 1 for a vanished or unreadable entry
        raise RuntimeError(f"{command}: exit {proc.returncode}")
    return wall, usage.ru_utime, usage.ru_stime


def measure(paths: dict[str, str], ops: list[str], runs: int) -> dict[str, object]:
    """Warm every pair once, then ``runs`` rounds of base-then-variant; paired medians."""
    report: dict[str, object] = {"load_before": os.getloadavg(), "runs": runs}
    pairs = [(v, op) for op in ops for v in paths if v != "base"]
    for v, op in pairs:
        _timed(OPS[op].format(v=paths["base"]))
        _timed(OPS[op].format(v=paths[v]))
    samples: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for _ in range(runs):
        for v, op in pairs:
            samples.setdefault(("base", op), []).append(_timed(OPS[op].format(v=paths["base"])))
            samples.setdefault((v, op), []).append(_timed(OPS[op].format(v=paths[v])))
    rows = []
    for v, op in pairs:
        mine = samples[(v, op)]
        # base ran right before each of this variant's samples: every n-th base sample of op
        same_op = [p for p in pairs if p[1] == op]
        paired_base = samples[("base", op)][same_op.index((v, op)) :: len(same_op)]
        ratio = statistics.median(a[0] / b[0] for a, b in zip(mine, paired_base, strict=True))
        rows.append(
            {
                "variant": v,
                "op": op,
                "ratio": round(ratio, 3),
                "wall": round(statistics.median(s[0] for s in mine), 4),
                "user": round(statistics.median(s[1] for s in mine), 4),
                "sys": round(statistics.median(s[2] for s in mine), 4),
                "base_wall": round(statistics.median(s[0] for s in paired_base), 4),
                "base_user": round(statistics.median(s[1] for s in paired_base), 4),
                "base_sys": round(statistics.median(s[2] for s in paired_base), 4),
            }
        )
    report["rows"] = rows
    report["load_after"] = os.getloadavg()
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ops", default="find,ls,stat,tar")
    ap.add_argument("--variants", default="view")
    ap.add_argument("--work", type=Path, help="where to build and mount (DATA/view-walk)")
    ap.add_argument("--out", type=Path)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--up", action="store_true")
    mode.add_argument("--down", action="store_true")
    args = ap.parse_args()
    work = args.work or args.data / "view-walk"
    if args.down:
        unmount_all(work)
        return
    work.mkdir(parents=True, exist_ok=True)
    variants = [v for v in args.variants.split(",") if v != "base"]
    driver = build(work, args.data / "d2.tar")
    try:
        paths = mount_all(work, driver, variants)
        if args.up:
            print(json.dumps(paths, indent=1))
            return
        report = measure(paths, args.ops.split(","), args.runs)
    except BaseException:
        unmount_all(work)
        raise
    unmount_all(work)
    print(f"load {report['load_before']} -> {report['load_after']}, {args.runs} paired runs")
    print(
        f"{'variant':8s} {'op':5s} {'ratio':>6s} {'wall':>7s} {'user':>6s} {'sys':>6s}"
        f" | {'base':>7s} {'user':>6s} {'sys':>6s}"
    )
    for r in report["rows"]:  # type: ignore[attr-defined]
        print(
            f"{r['variant']:8s} {r['op']:5s} {r['ratio']:6.2f} {r['wall']:7.3f} "
            f"{r['user']:6.3f} {r['sys']:6.3f} | {r['base_wall']:7.3f} {r['base_user']:6.3f} "
            f"{r['base_sys']:6.3f}"
        )
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
