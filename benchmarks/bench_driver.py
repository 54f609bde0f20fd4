#!/usr/bin/env python3
"""Time the LCOW driver against the converter it wraps, and Get+Put on a deep chain (issue 4).

    python benchmarks/bench_driver.py [--runs 5] [--data DIR] [--parts import,getput]
                                      [--rows convert,driver,import,cli]
                                      [--layers 64] [--samples 51] [--out FILE.json]

Part ``import`` — importing an image whose layers are D1 and D2 (``DIR/d1.tar``,
``DIR/d2.tar``, see ``datasets.py``) against converting the same two layers. Rows, each a fresh
process (``python -c``) timed wall-clock from spawn to exit, outputs deleted after each run:

  convert  ``lcow.convert.tar2ext4.tar2ext4`` of d1 then d2 with the options ApplyDiff uses
           (AUFS whiteouts converted, fixed-VHD footer, fsync): the conversion floor
  driver   ``Driver(root)``; ``create(l1)``, ``apply_diff(l1, d1)``, ``create(l2, l1)``,
           ``apply_diff(l2, d2)`` — what an import does to the data root
  import   ``lcow --root ROOT import IMAGE`` of a ``docker save`` tarball built from d1 and d2
           (``DIR/d1d2-image.tar``, made once), only when the importer (``lcow.images``) exists;
           otherwise the ``driver`` row stands for the import and the JSON says so
  cli      ``lcow tar2ext4 -vhd -overlay`` of d1 then d2 (two processes; no fsync): reference

Overhead = median(import, else driver) / median(convert) - 1; target <= 10 %. Also reported:
the median over repetitions of each row's time divided by the convert time of the same
repetition (paired, less sensitive to load drifting during the run).

Part ``getput`` — a chain of ``--layers`` layers (base + children, each made by ApplyDiff of a
small tar as graphtest's addManyLayers writes them) on the userspace backend, one driver in this
process: ``get(top)`` + ``put(top)`` (target: median <= 20 ms), and ``get(top)`` + the first
``readdir("/")`` + ``readfile`` of a base file + ``put(top)`` (opens every image), interleaved,
``--samples`` of each.

Method: each tar is read once untimed (warm page cache); for every repetition the rows run one
after another in an order rotated per repetition, each preceded by ``sync`` (untimed). Reported:
medians over ``--runs`` (>= 5) repetitions, min and max. The JSON holds every sample and the
machine (CPUs, kernel, Python, e2fsprogs, git commit, load averages).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path("/var/tmp/lcow-bench")
PYTHON = REPO / ".venv" / "bin" / "python"
LCOW = REPO / ".venv" / "bin" / "lcow"
ROWS = ("convert", "driver", "import", "cli")
LABELS = {
    "convert": "tar2ext4 of D1 + D2 (library, ApplyDiff's options, fsync)",
    "driver": "Driver: create + apply_diff of D1, then D2 on it",
    "import": "`lcow import` of the D1+D2 docker-save tarball",
    "cli": "`lcow tar2ext4 -vhd -overlay` D1 + D2 (no fsync; reference)",
}
OVERHEAD_TARGET = 0.10
GETPUT_TARGET_MS = 20.0

# One timed row, run as: python -c RUNNER MODE D1 D2 OUT.
RUNNER = r"""
import json, os, sys, time
mode, d1, d2, out = sys.argv[1:5]
started = time.monotonic()
if mode == "convert":
    from lcow.convert.options import ConvertOptions
    from lcow.convert.tar2ext4 import tar2ext4
    options = ConvertOptions(convert_whiteouts=True, vhd_footer=True, fsync=True)
    sizes = [tar2ext4(d, os.path.join(out, f"l{i}.vhd"), options).content_size
             for i, d in enumerate((d1, d2), 1)]
elif mode == "driver":
    from lcow.graphdriver.driver import Driver
    driver = Driver(out)
    driver.create("l1", None)
    sizes = [driver.apply_diff("l1", None, d1)]
    driver.create("l2", "l1")
    sizes.append(driver.apply_diff("l2", "l1", d2))
else:
    raise SystemExit(f"unknown mode {mode}")
print(json.dumps({"seconds": time.monotonic() - started, "sizes": sizes}))
"""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sync() -> None:
    subprocess.run(["sync"], check=False)


@contextlib.contextmanager
def run_dir(base: Path) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="driver-", dir=base))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass


def importer_available() -> bool:
    return importlib.util.find_spec("lcow.images") is not None


# --------------------------------------------------------------------------- docker save


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def build_docker_save(layers: list[Path], out: Path) -> Path:
    """A ``docker save`` tarball (manifest.json, config, ``<id>/layer.tar``) of ``layers``,
    lowest first; rebuilt only when the layer tars changed."""
    stamp = json.dumps([[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in layers])
    sidecar = out.with_suffix(".json")
    if out.exists() and sidecar.exists() and sidecar.read_text() == stamp:
        return out
    log(f"building {out} from {', '.join(p.name for p in layers)}")
    diff_ids = [_sha256_file(p) for p in layers]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        "history": [{"created_by": f"lcow bench: {p.name}"} for p in layers],
    }
    config_bytes = json.dumps(config, separators=(",", ":")).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    part = out.with_suffix(".part")
    with tarfile.open(part, "w", format=tarfile.PAX_FORMAT) as tar:
        for path, diff_id in zip(layers, diff_ids, strict=True):
            _add_bytes(tar, f"{diff_id}/VERSION", b"1.0")
            _add_bytes(tar, f"{diff_id}/json", json.dumps({"id": diff_id}).encode())
            tar.add(path, arcname=f"{diff_id}/layer.tar")
        _add_bytes(tar, config_name, config_bytes)
        manifest = [
            {
                "Config": config_name,
                "RepoTags": ["lcow-bench:d1d2"],
                "Layers": [f"{d}/layer.tar" for d in diff_ids],
            }
        ]
        _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
        _add_bytes(tar, "repositories", json.dumps({"lcow-bench": {"d1d2": diff_ids[-1]}}).encode())
    os.replace(part, out)
    sidecar.write_text(stamp)
    return out


# --------------------------------------------------------------------------- part: import


def time_row(row: str, d1: Path, d2: Path, image: Path | None, work: Path) -> dict[str, object]:
    """Run one row in fresh processes; wall seconds from spawn to exit."""
    if row in ("convert", "driver"):
        commands = [[str(PYTHON), "-c", RUNNER, row, str(d1), str(d2), str(work)]]
    elif row == "import":
        assert image is not None
        commands = [[str(LCOW), "--root", str(work), "import", str(image)]]
    else:
        commands = [
            [str(LCOW), "tar2ext4", "-vhd", "-overlay", "-i", str(d), "-o", str(work / f"l{i}.vhd")]
            for i, d in enumerate((d1, d2), 1)
        ]
    started = time.monotonic()
    inner: dict[str, object] = {}
    for cmd in commands:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            return {"error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
        if row in ("convert", "driver"):
            inner = json.loads(proc.stdout.strip().splitlines()[-1])
    wall = time.monotonic() - started
    out_bytes = sum(p.stat().st_size for p in work.rglob("*.vhd"))
    return {"seconds": wall, "inner_seconds": inner.get("seconds"), "out_bytes": out_bytes}


def part_import(data: Path, runs: int, wanted: list[str]) -> dict[str, object]:
    d1, d2 = data / "d1.tar", data / "d2.tar"
    for p in (d1, d2):
        if not p.is_file():
            raise SystemExit(f"{p} missing: build it with python benchmarks/datasets.py")
    has_importer = importer_available()
    rows = [r for r in ROWS if r in wanted and (r != "import" or has_importer)]
    if "convert" not in rows:
        raise SystemExit("the convert row is the reference: keep it in --rows")
    image = None
    if "import" in rows:
        image = build_docker_save([d1, d2], data / "d1d2-image.tar")
    elif not has_importer:
        log("lcow.images does not exist yet: the driver row stands for the import")
    out_base = data / "out"
    out_base.mkdir(parents=True, exist_ok=True)
    for p in (d1, d2):
        warm(p)
    samples: dict[str, list[dict[str, object]]] = {r: [] for r in rows}
    for rep in range(runs):
        order = rows[rep % len(rows) :] + rows[: rep % len(rows)]
        for row in order:
            with run_dir(out_base) as work:
                sync()
                result = time_row(row, d1, d2, image, work)
            samples[row].append(result)
            log(f"run {rep + 1}/{runs} {row}: {result.get('seconds') or result.get('error')}")
    summary: dict[str, object] = {}
    for row in rows:
        ok = [float(s["seconds"]) for s in samples[row] if "seconds" in s]  # type: ignore[arg-type]
        inner = [
            float(s["inner_seconds"])  # type: ignore[arg-type]
            for s in samples[row]
            if s.get("inner_seconds") is not None
        ]
        summary[row] = {
            "median_s": statistics.median(ok) if ok else None,
            "min_s": min(ok) if ok else None,
            "max_s": max(ok) if ok else None,
            "inner_median_s": statistics.median(inner) if inner else None,
            "errors": [s["error"] for s in samples[row] if "error" in s],
        }
    subject = "import" if "import" in rows else "driver"
    conv = summary["convert"]["median_s"]  # type: ignore[index]
    subj = summary[subject]["median_s"]  # type: ignore[index]
    overhead = (subj / conv - 1) if conv and subj else None
    paired: dict[str, float | None] = {}
    for row in rows:
        if row == "convert":
            continue
        ratios = [
            float(s["seconds"]) / float(c["seconds"])  # type: ignore[arg-type]
            for s, c in zip(samples[row], samples["convert"], strict=True)
            if "seconds" in s and "seconds" in c
        ]
        paired[row] = statistics.median(ratios) - 1 if ratios else None
    return {
        "importer": has_importer,
        "subject": subject,
        "rows": rows,
        "summary": summary,
        "samples": samples,
        "overhead": overhead,
        "paired_overhead": paired,
        "target": OVERHEAD_TARGET,
    }


# --------------------------------------------------------------------------- part: getput


def _chain_tar(layer: str, k: int, parent: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        files: list[tuple[str, bytes | None]] = [
            ("top-id", layer.encode()),
            (f"layer-{k}", None),
            (f"layer-{k}/layer-id", layer.encode()),
            (f"layer-{k}/parent-id", parent.encode()),
        ]
        if k == 0:
            files = [("testfile.txt", b"test content"), ("top-id", layer.encode())]
        for name, content in files:
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o755
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def part_getput(data: Path, layers: int, samples: int) -> dict[str, object]:
    sys.path.insert(0, str(REPO / "src"))
    from lcow.graphdriver.driver import Driver

    out_base = data / "out"
    out_base.mkdir(parents=True, exist_ok=True)
    with run_dir(out_base) as work:
        driver = Driver(work / "root", ["lcow.backend=userspace"])
        parent: str | None = None
        top = ""
        build_started = time.monotonic()
        for k in range(layers):
            top = "base" if k == 0 else f"base-layer-{k}"
            driver.create(top, parent)
            driver.apply_diff(top, parent, io.BytesIO(_chain_tar(top, k, parent or "")))
            parent = top
        build_s = time.monotonic() - build_started
        assert len(driver.parent_chain(top)) == layers - 1
        get_put: list[float] = []
        get_read: list[float] = []
        for _ in range(samples):
            started = time.perf_counter()
            driver.get(top)
            driver.put(top)
            get_put.append(time.perf_counter() - started)
            started = time.perf_counter()
            view = driver.get(top)
            names = view.readdir("/")
            content = view.readfile("/testfile.txt")
            driver.put(top)
            get_read.append(time.perf_counter() - started)
            assert content == b"test content" and len(names) == layers + 1
        driver.cleanup()

    def stats(values: list[float]) -> dict[str, float]:
        ms = sorted(v * 1000 for v in values)
        return {
            "median_ms": statistics.median(ms),
            "min_ms": ms[0],
            "p90_ms": ms[int(len(ms) * 0.9) - 1],
            "max_ms": ms[-1],
        }

    return {
        "layers": layers,
        "samples": samples,
        "build_s": build_s,
        "get_put": stats(get_put),
        "get_readdir_readfile_put": stats(get_read),
        "target_ms": GETPUT_TARGET_MS,
        "raw_ms": {
            "get_put": [v * 1000 for v in get_put],
            "get_read": [v * 1000 for v in get_read],
        },
    }


# --------------------------------------------------------------------------- machine, report


def _cmd_out(cmd: list[str]) -> str:
    try:
        p = subprocess.run(
            cmd, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    except OSError as e:
        return f"unavailable: {e}"
    return p.stdout.strip()


def machine_info(data: Path) -> dict[str, object]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "os": _cmd_out(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": _cmd_out([str(PYTHON), "-c", "import sys; print(sys.version.split()[0])"]),
        "e2fsprogs": _cmd_out(["mke2fs", "-V"]).splitlines()[0],
        "git_commit": _cmd_out(["git", "-C", str(REPO), "rev-parse", "HEAD"]),
        "data_fs": _cmd_out(["findmnt", "-n", "-o", "FSTYPE,SOURCE,OPTIONS", "-T", str(data)]),
        "loadavg_start": os.getloadavg(),
    }


def markdown(result: dict[str, object]) -> str:
    lines: list[str] = []
    imp = result.get("import")
    if isinstance(imp, dict):
        runs = len(next(iter(imp["samples"].values())))
        lines += [
            f"| row ({runs} runs, medians) | wall s | min | max | in-process s |",
            "|---|---:|---:|---:|---:|",
        ]
        for row in imp["rows"]:
            s = imp["summary"][row]
            if s["median_s"] is None:
                lines.append(f"| {LABELS[row]} | failed: {s['errors'][:1]} | | | |")
                continue
            inner = f"{s['inner_median_s']:.2f}" if s["inner_median_s"] is not None else ""
            lines.append(
                f"| {LABELS[row]} | {s['median_s']:.2f} | {s['min_s']:.2f} | {s['max_s']:.2f} "
                f"| {inner} |"
            )
        if imp["overhead"] is not None:
            verdict = "ok" if imp["overhead"] <= imp["target"] else "OVER TARGET"
            lines.append(
                f"\nOverhead of `{imp['subject']}` beyond conversion (ratio of medians): "
                f"{imp['overhead'] * 100:+.1f} % (target <= {imp['target'] * 100:.0f} %: {verdict})"
            )
        for row, value in imp["paired_overhead"].items():
            if value is not None:
                lines.append(
                    f"Median of per-repetition ratios, {row} / convert - 1: {value * 100:+.1f} %"
                )
    gp = result.get("getput")
    if isinstance(gp, dict):
        lines += [
            "",
            f"| {gp['layers']}-layer chain, userspace, {gp['samples']} samples | median ms | "
            "min | p90 | max |",
            "|---|---:|---:|---:|---:|",
        ]
        for key, label in (
            ("get_put", "Get + Put"),
            ("get_readdir_readfile_put", "Get + first readdir(/) + readfile + Put"),
        ):
            s = gp[key]
            lines.append(
                f"| {label} | {s['median_ms']:.2f} | {s['min_ms']:.2f} | {s['p90_ms']:.2f} "
                f"| {s['max_ms']:.2f} |"
            )
        verdict = "ok" if gp["get_put"]["median_ms"] <= gp["target_ms"] else "OVER TARGET"
        lines.append(f"\nGet+Put median target <= {gp['target_ms']:.0f} ms: {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="repetitions of part import (>= 5)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="where d1.tar, d2.tar live")
    ap.add_argument("--parts", default="import,getput")
    ap.add_argument("--rows", default=",".join(ROWS), help="rows of part import")
    ap.add_argument("--layers", type=int, default=64, help="chain length of part getput")
    ap.add_argument("--samples", type=int, default=51, help="samples per row of part getput")
    ap.add_argument("--out", type=Path, default=None, help="JSON result file")
    args = ap.parse_args(argv)
    if args.runs < 5:
        ap.error("--runs must be at least 5")
    parts = args.parts.split(",")
    result: dict[str, object] = {"machine": machine_info(args.data), "argv": sys.argv}
    if "import" in parts:
        result["import"] = part_import(args.data, args.runs, args.rows.split(","))
    if "getput" in parts:
        result["getput"] = part_getput(args.data, args.layers, args.samples)
    result["loadavg_end"] = os.getloadavg()
    out_json: Path = args.out or (
        REPO / "benchmarks" / "out" / f"driver-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=1))
    log(f"wrote {out_json}")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
