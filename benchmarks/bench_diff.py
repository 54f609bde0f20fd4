#!/usr/bin/env python3
"""Time lcow's Diff (layer image -> tar) against the kernel, and Changes + DiffSize (issue 3).

    python benchmarks/bench_diff.py [--runs 3] [--data DIR] [--sets d1,d2,d3]
                                    [--tools kernel,cli,api] [--no-changes] [--out FILE.json]

Layer images: each DIR/dN.tar is converted once, untimed, into DIR/diff/dN.vhd with
``lcow.tar2ext4(..., ConvertOptions(convert_whiteouts=True, vhd_footer=True))`` — what ApplyDiff
writes — and reused while it is newer than its tar. Then, per data set, the Diff rows (all tar
streams go through a pipe into ``cat > /dev/null``):

  kernel  ``losetup --read-only --sizelimit`` (the VHD footer cut off), ``mount -o ro``,
          ``tar -C MNT -c --numeric-owner --xattrs . | cat > /dev/null``, ``umount``,
          ``losetup -d`` (all timed; the tar step is also shown alone)
  cli     ``lcow vhd2tar -i dN.vhd | cat > /dev/null``    (.venv/bin/lcow of this repo)
  api     in this process: ``Ext4Reader.open`` + ``export_layer`` into the pipe of a
          ``cat > /dev/null`` child (no interpreter start-up; CPU seconds recorded too)

Changes + DiffSize (skipped with --no-changes): a data root DIR/diff/chain is made once,
untimed, with :class:`lcow.graphdriver.driver.Driver`: ``create d1``, ``apply_diff d1 < d1.tar``,
``create d2 --parent d1``, ``apply_diff d2 < d2.tar``. Timed, interleaved, in this process:

  changes      ``driver.changes("d2", "d1")`` then ``driver.diff_size("d2", "d1")``
  diff-driver  ``driver.diff("d2", "d1")`` read to its end by a ``cat > /dev/null`` child
  diff-cli     ``lcow vhd2tar -i chain/d2/layer.vhd | cat > /dev/null``

Targets (issue 3): Diff <= 0.8x the kernel path on every data set; Changes + DiffSize <= 0.25x
our own Diff of the same layer. Each image is read once untimed first (warm cache); every
repetition runs each row once in an order rotated per repetition, ``sync`` (untimed) before
each. Reported: median wall seconds, ratios of medians, peak RSS of the child commands. Needs
root (loop devices, mount).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_tar2ext4 as bt  # the tar2ext4 harness: timing, sync, machine info

REPO = bt.REPO
DEFAULT_DATA = bt.DEFAULT_DATA
DEFAULT_LCOW = bt.DEFAULT_LCOW
SET_NAMES = bt.SET_NAMES
DIFF_TOOLS = ("kernel", "cli", "api")
CHANGE_TOOLS = ("changes", "diff-driver", "diff-cli")
LABELS = {
    "kernel": "kernel: loop mount + `tar -c \\| cat` + umount",
    "cli": "lcow `vhd2tar` CLI `\\| cat`",
    "api": "lcow `export_layer` (Python API) `\\| cat`",
    "changes": "Changes + DiffSize (driver)",
    "diff-driver": "Diff (driver `diff()` stream `\\| cat`)",
    "diff-cli": "Diff (`vhd2tar` CLI `\\| cat`)",
}
KERNEL_STEPS = ["losetup", "mount -o ro", "`tar -c \\| cat`", "umount", "losetup -d"]
TAR_C = "tar -C {mnt} -c --numeric-owner --xattrs . | cat > /dev/null"
FOOTER = 512
DIFF_TARGET = 0.8
CHANGES_TARGET = 0.25


def log(msg: str) -> None:
    print(f"[bench-diff {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Sample:
    seconds: float | None = None
    cpu_seconds: float | None = None
    rss_kib: int = 0
    error: str | None = None
    steps: list[float] = field(default_factory=list)
    detail: dict[str, object] = field(default_factory=dict)


# --------------------------------------------------------------------------- preparing


def ensure_image(tar: Path, image: Path) -> dict[str, object]:
    """Convert ``tar`` into ``image`` (layer.vhd form) unless an up-to-date one exists."""
    from lcow import ConvertOptions, tar2ext4

    if image.exists() and image.stat().st_mtime > tar.stat().st_mtime:
        return {"image": str(image), "reused": True, "size": image.stat().st_size}
    image.parent.mkdir(parents=True, exist_ok=True)
    log(f"converting {tar} -> {image} (untimed)")
    t0 = time.perf_counter()
    result = tar2ext4(tar, image, ConvertOptions(convert_whiteouts=True, vhd_footer=True))
    return {
        "image": str(image),
        "reused": False,
        "size": image.stat().st_size,
        "entries": result.entries,
        "convert_s": round(time.perf_counter() - t0, 3),
    }


def ensure_chain(data: Path, root: Path) -> dict[str, object]:
    """The two-layer data root: d1 from d1.tar, d2 (parent d1) from d2.tar."""
    from lcow.graphdriver.driver import Driver

    stamp = root / ".bench-chain.json"
    key = {
        s: [(data / f"{s}.tar").stat().st_size, (data / f"{s}.tar").stat().st_mtime]
        for s in ("d1", "d2")
    }
    if stamp.exists() and json.loads(stamp.read_text()).get("key") == key:
        return dict(json.loads(stamp.read_text()))
    log(f"building the d1 <- d2 chain in {root} (untimed)")
    shutil.rmtree(root, ignore_errors=True)
    driver = Driver(root, [])
    info: dict[str, object] = {"key": key}
    try:
        driver.create("d1", None)
        info["d1_apply_size"] = driver.apply_diff("d1", None, data / "d1.tar")
        driver.create("d2", "d1")
        info["d2_apply_size"] = driver.apply_diff("d2", "d1", data / "d2.tar")
    finally:
        driver.cleanup()
    stamp.write_text(json.dumps(info))
    return info


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


# --------------------------------------------------------------------------- rows


def _sh(script: str, work: Path, timeout: float) -> bt.Step:
    return bt.timed(["bash", "-o", "pipefail", "-c", script], work, timeout)


def run_kernel(image: Path, work: Path, timeout: float) -> Sample:
    mnt = work / "mnt"
    mnt.mkdir()
    size = image.stat().st_size - FOOTER
    steps: list[float] = []
    rss = 0
    device = ""
    try:
        t0 = time.perf_counter()
        proc = subprocess.run(
            ["losetup", "--find", "--show", "--read-only", "--sizelimit", str(size), str(image)],
            check=True,
            capture_output=True,
            text=True,
        )
        steps.append(time.perf_counter() - t0)
        device = proc.stdout.strip()
        for cmd in (
            ["mount", "-t", "ext4", "-o", "ro", device, str(mnt)],
            ["bash", "-o", "pipefail", "-c", TAR_C.format(mnt=mnt)],
            ["umount", str(mnt)],
        ):
            step = bt.timed(cmd, work, timeout)
            steps.append(step.seconds)
            rss = max(rss, step.rss_kib)
        t0 = time.perf_counter()
        subprocess.run(["losetup", "-d", device], check=True)
        steps.append(time.perf_counter() - t0)
        device = ""
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["umount", str(mnt)], check=False)
        if device:
            subprocess.run(["losetup", "-d", device], check=False)
    return Sample(seconds=sum(steps), rss_kib=rss, steps=[round(s, 4) for s in steps])


def run_cli(image: Path, work: Path, timeout: float, lcow: Path) -> Sample:
    step = _sh(f"{lcow} vhd2tar -i {image} | cat > /dev/null", work, timeout)
    return Sample(seconds=step.seconds, rss_kib=step.rss_kib)


@contextlib.contextmanager
def cat_sink(stdin: int | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A ``cat > /dev/null`` child reading a new pipe (or ``stdin``); waited for on exit."""
    proc = subprocess.Popen(
        ["cat"],
        stdin=subprocess.PIPE if stdin is None else stdin,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait()


def run_api(image: Path) -> Sample:
    from lcow.convert.export import export_layer
    from lcow.formats.ext4.reader import Ext4Reader

    t0, c0 = time.perf_counter(), time.process_time()
    with cat_sink() as cat:
        assert cat.stdin is not None
        with Ext4Reader.open(image) as reader:
            result = export_layer(reader, cat.stdin.fileno())
    return Sample(
        seconds=time.perf_counter() - t0,
        cpu_seconds=time.process_time() - c0,
        detail={"entries": result.entries, "bytes": result.bytes_written},
    )


def run_changes(root: Path) -> Sample:
    from lcow.graphdriver.driver import Driver

    driver = Driver(root, [])  # outside the timing: Driver() checks and creates the root
    t0, c0 = time.perf_counter(), time.process_time()
    changes = driver.changes("d2", "d1")
    t1 = time.perf_counter()
    size = driver.diff_size("d2", "d1")
    t2, c2 = time.perf_counter(), time.process_time()
    return Sample(
        seconds=t2 - t0,
        cpu_seconds=c2 - c0,
        steps=[round(t1 - t0, 4), round(t2 - t1, 4)],
        detail={"changes": len(changes), "diff_size": size},
    )


def run_diff_driver(root: Path) -> Sample:
    from lcow.graphdriver.driver import Driver

    driver = Driver(root, [])
    t0, c0 = time.perf_counter(), time.process_time()
    stream = driver.diff("d2", "d1")
    try:
        with cat_sink(stream.fileno()):
            pass
        stream.read()  # raises the producer's error, if any
    finally:
        stream.close()
    return Sample(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)


def measure(fn: Callable[[], Sample]) -> Sample:
    bt.sync()
    try:
        return fn()
    except (bt.ToolError, OSError, subprocess.CalledProcessError) as e:
        return Sample(error=f"{type(e).__name__}: {e}")


@contextlib.contextmanager
def run_dir(base: Path) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="diff-", dir=base))
    try:
        yield d
    finally:
        if os.path.ismount(d / "mnt"):
            subprocess.run(["umount", str(d / "mnt")], check=False)
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- reporting


def summarize(samples: list[Sample]) -> dict[str, object]:
    ok = [s for s in samples if s.seconds is not None]
    secs = [s.seconds for s in ok if s.seconds is not None]
    cpus = [s.cpu_seconds for s in ok if s.cpu_seconds is not None]
    return {
        "median_s": statistics.median(secs) if secs else None,
        "min_s": min(secs) if secs else None,
        "max_s": max(secs) if secs else None,
        "median_cpu_s": statistics.median(cpus) if cpus else None,
        "peak_rss_mib": max(s.rss_kib for s in ok) / 1024 if ok and ok[0].rss_kib else None,
        "step_median_s": [statistics.median(x) for x in zip(*(s.steps for s in ok), strict=True)]
        if ok and ok[0].steps
        else [],
        "ok_runs": len(ok),
        "errors": [s.error for s in samples if s.error],
        "samples": [asdict(s) for s in samples],
    }


def _f(x: object, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def markdown(result: dict[str, object]) -> str:
    sets: list[str] = result["sets"]  # type: ignore[assignment]
    tools: list[str] = result["tools"]  # type: ignore[assignment]
    res: dict[str, dict[str, dict[str, object]]] = result["diff"]  # type: ignore[assignment]
    head = "| Diff | " + " | ".join(f"{SET_NAMES.get(s, s)} s | x kernel" for s in sets) + " |"
    rows = [head, "|---|" + "---:|---:|" * len(sets)]
    for tool in tools:
        cells = []
        for s in sets:
            r = res[s].get(tool)
            k = res[s].get("kernel")
            med = r["median_s"] if r else None
            kmed = k["median_s"] if k else None
            ratio = med / kmed if med is not None and kmed else None  # type: ignore[operator]
            cells += [_f(med), "1.00" if tool == "kernel" and med is not None else _f(ratio)]
        rows.append(f"| {LABELS[tool]} | " + " | ".join(cells) + " |")
    if "kernel" in tools:
        cells = []
        for s in sets:
            k = res[s]["kernel"]
            steps: list[float] = k["step_median_s"]  # type: ignore[assignment]
            cells += [_f(steps[2]) if len(steps) > 2 else "-", ""]
        rows.append("| ... kernel step: `tar -c \\| cat` alone | " + " | ".join(cells) + " |")
    lines = rows
    ch: dict[str, dict[str, object]] | None = result.get("changes")  # type: ignore[assignment]
    if ch:
        c = ch["changes"]["median_s"]
        lines += [
            "",
            "| D2 over D1 | s | CPU s | Changes+DiffSize / this |",
            "|---|---:|---:|---:|",
        ]
        for tool in CHANGE_TOOLS:
            r = ch[tool]
            med = r["median_s"]
            ratio = "1.00" if tool == "changes" else _f(c / med if c and med else None)  # type: ignore[operator]
            lines.append(f"| {LABELS[tool]} | {_f(med)} | {_f(r['median_cpu_s'])} | {ratio} |")
        parts: list[float] = ch["changes"]["step_median_s"]  # type: ignore[assignment]
        lines.append(f"| ... of which Changes / DiffSize | {_f(parts[0])} / {_f(parts[1])} | | |")
    m: dict[str, object] = result["machine"]  # type: ignore[assignment]
    lines += [
        "",
        f"Median of {result['runs']} runs, wall clock. Machine: {m['nproc']} CPUs ({m['cpu']}), "
        f"{m['memory']} RAM, kernel {m['kernel']}, {m['os']}, Python {m['python_lcow']}, "
        f"{m['tar']}; data on {m['data_fs']}; load average {m['loadavg_start']} at start, "
        f"{m.get('loadavg_end')} at end. Date {m['date']}.",
    ]
    return "\n".join(lines)


def verdicts(result: dict[str, object]) -> list[str]:
    out = []
    res: dict[str, dict[str, dict[str, object]]] = result["diff"]  # type: ignore[assignment]
    for s in result["sets"]:  # type: ignore[attr-defined]
        k = res[s].get("kernel")
        for tool in ("cli", "api"):
            r = res[s].get(tool)
            if not (k and r and k["median_s"] and r["median_s"]):
                continue
            ratio = r["median_s"] / k["median_s"]  # type: ignore[operator]
            ok = "ok" if ratio <= DIFF_TARGET else "MISSED"
            out.append(f"{s} {tool}: {ratio:.2f}x kernel (target <= {DIFF_TARGET}) {ok}")
    ch: dict[str, dict[str, object]] | None = result.get("changes")  # type: ignore[assignment]
    if ch and ch["changes"]["median_s"]:
        for tool in ("diff-driver", "diff-cli"):
            if ch[tool]["median_s"]:
                ratio = ch["changes"]["median_s"] / ch[tool]["median_s"]  # type: ignore[operator]
                ok = "ok" if ratio <= CHANGES_TARGET else "MISSED"
                out.append(
                    f"changes+diffsize: {ratio:.2f}x {tool} (target <= {CHANGES_TARGET}) {ok}"
                )
    return out


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0912, PLR0915 - the command line: checks the inputs, then times each data set and tool in turn and reports, one step after another
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="where dN.tar live")
    ap.add_argument("--sets", default="d1,d2,d3", help="comma list, default d1,d2,d3")
    ap.add_argument("--tools", default=",".join(DIFF_TOOLS), help="comma list of kernel,cli,api")
    ap.add_argument("--no-changes", action="store_true", help="skip Changes + DiffSize")
    ap.add_argument("--lcow", type=Path, default=DEFAULT_LCOW, help="lcow executable")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per step")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON result file (default benchmarks/out/diff-<time>.json)",
    )
    args = ap.parse_args(argv)
    sets = args.sets.split(",")
    tools = args.tools.split(",")
    for t in tools:
        if t not in DIFF_TOOLS:
            ap.error(f"unknown tool {t!r}")
    if os.geteuid() != 0 and "kernel" in tools:
        ap.error("the kernel row needs root (loop devices, mount)")
    data: Path = args.data
    for s in sets + ([] if args.no_changes else ["d1", "d2"]):
        if not (data / f"{s}.tar").is_file():
            ap.error(
                f"{data / f'{s}.tar'} missing: build it with python benchmarks/datasets.py {s}"
            )
    out_base = data / "out"
    out_base.mkdir(parents=True, exist_ok=True)
    out_json: Path = args.out or (
        REPO / "benchmarks" / "out" / f"diff-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out_json.parent.mkdir(parents=True, exist_ok=True)

    images = {s: data / "diff" / f"{s}.vhd" for s in sets}
    prepared = {s: ensure_image(data / f"{s}.tar", images[s]) for s in sets}
    chain = data / "diff" / "chain"
    chain_info = None if args.no_changes else ensure_chain(data, chain)
    machine = bt.machine_info(data, args.lcow, None)

    samples: dict[str, dict[str, list[Sample]]] = {s: {t: [] for t in tools} for s in sets}
    for s in sets:
        log(f"warming the page cache with {images[s]}")
        warm(images[s])
        for rep in range(args.runs):
            order = tools[rep % len(tools) :] + tools[: rep % len(tools)]
            for t in order:
                with run_dir(out_base) as work:
                    if t == "kernel":
                        smp = measure(partial(run_kernel, images[s], work, args.timeout))
                    elif t == "cli":
                        smp = measure(partial(run_cli, images[s], work, args.timeout, args.lcow))
                    else:
                        smp = measure(partial(run_api, images[s]))
                samples[s][t].append(smp)
                shown = smp.error or f"{smp.seconds:.3f} s"
                log(f"{s} run {rep + 1} {t}: {shown}")

    change_samples: dict[str, list[Sample]] = {t: [] for t in CHANGE_TOOLS}
    if not args.no_changes:
        layer = chain / "d2" / "layer.vhd"
        warm(chain / "d1" / "layer.vhd")
        warm(layer)
        for rep in range(args.runs):
            order = list(CHANGE_TOOLS[rep % 3 :] + CHANGE_TOOLS[: rep % 3])
            for t in order:
                with run_dir(out_base) as work:
                    if t == "changes":
                        smp = measure(partial(run_changes, chain))
                    elif t == "diff-driver":
                        smp = measure(partial(run_diff_driver, chain))
                    else:
                        smp = measure(partial(run_cli, layer, work, args.timeout, args.lcow))
                change_samples[t].append(smp)
                shown = smp.error or f"{smp.seconds:.3f} s"
                log(f"d2/d1 run {rep + 1} {t}: {shown}")
    machine["loadavg_end"] = os.getloadavg()

    result: dict[str, object] = {
        "kind": "diff",
        "runs": args.runs,
        "sets": sets,
        "tools": tools,
        "machine": machine,
        "images": prepared,
        "chain": chain_info,
        "diff": {s: {t: summarize(samples[s][t]) for t in tools} for s in sets},
    }
    if not args.no_changes:
        result["changes"] = {t: summarize(change_samples[t]) for t in CHANGE_TOOLS}
    result["verdicts"] = verdicts(result)
    out_json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    log(f"wrote {out_json}")
    print(markdown(result))
    print()
    for line in result["verdicts"]:  # type: ignore[attr-defined]
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
