#!/usr/bin/env python3
"""ApplyDiff of a small layer and ``lcow import`` of a plain and a gzip image, one source tree
against another (issue 14: one staging step in ApplyDiff, one input module for the importer).

    python benchmarks/bench_staging.py --src NAME=SRC_DIR [--src NAME=SRC_DIR ...]
                                       [--parts apply,import] [--runs 7] [--applies 40]
                                       [--work DIR] [--out FILE.json]

Each ``--src`` names an lcow source tree (a ``src`` directory holding the ``lcow`` package, e.g.
one exported with ``git archive``); every row runs in a fresh ``python`` with that tree first on
``PYTHONPATH``, so two commits are measured side by side on the same machine and data.

Part ``apply`` — one process per repetition: a fresh data root (userspace backend) under
``--work``, ``create`` + ``apply_diff`` of the same small layer (40 files, ~170 KB) under
``--applies`` new ids; the time of each ``apply_diff`` call alone is taken, the repetition
reports their median. ApplyDiff fsyncs, so this measures the renames and directory fsyncs on the
work directory's file system.

Part ``import`` — ``python -m lcow --root ROOT import IMAGE`` of two ``docker save`` tarballs of
the same one-layer image (~96 MiB of files: 3,000 small ones and six 12 MiB ones, half random,
half repetitive): ``plain`` stores ``layer.tar`` as is (converted in place while hashed),
``gzip`` stores it gzip-compressed (level 1; decompressed into a pipe by a thread). Wall time
from spawn to exit, a fresh root each time.

Method: repetitions interleave the sources (order rotated per repetition), each row preceded by
``sync`` (untimed); the images are read once untimed first. Reported: medians, min and max per
source and row. The JSON holds every sample, the machine and the load averages.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = REPO / ".venv" / "bin" / "python"

# One apply repetition, run as: python -c APPLY ROOT LAYER_TAR COUNT.
APPLY = r"""
import json, statistics, sys, time
from lcow.graphdriver.driver import Driver
root, layer, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
driver = Driver(root, ["lcow.backend=userspace"])
times = []
for i in range(count):
    lid = f"layer{i}"
    driver.create(lid, None)
    started = time.perf_counter()
    driver.apply_diff(lid, None, layer)
    times.append(time.perf_counter() - started)
print(json.dumps({"median_s": statistics.median(times), "samples": times}))
"""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_600_000_000
    tar.addfile(info, io.BytesIO(data))


def small_layer(path: Path) -> Path:
    """40 files of 1-8 KiB in 4 directories, and a whiteout: a typical small ApplyDiff."""
    if path.exists():
        return path
    rng = random.Random(14)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in range(4):
            info = tarfile.TarInfo(f"dir{d}")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_600_000_000
            tar.addfile(info)
            for f in range(10):
                _add(tar, f"dir{d}/file{f}", rng.randbytes(rng.randint(1024, 8192)))
        _add(tar, "dir0/.wh.gone", b"")
    return path


def big_layer(path: Path) -> Path:
    """~96 MiB: 3,000 files of 1-16 KiB and six 12 MiB files (three random, three repetitive)."""
    if path.exists():
        return path
    rng = random.Random(1414)
    part = path.with_suffix(".part")
    with tarfile.open(part, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in range(30):
            info = tarfile.TarInfo(f"d{d:02}")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_600_000_000
            tar.addfile(info)
            for f in range(100):
                size = rng.randint(1024, 16384)
                data = rng.randbytes(size // 2) + bytes(size - size // 2)
                _add(tar, f"d{d:02}/f{f:03}", data)
        for k in range(6):
            block = rng.randbytes(1 << 20) if k % 2 else (b"lcow %d " % k) * (1 << 17)
            data = block * 12 if k % 2 == 0 else rng.randbytes(12 << 20)
            _add(tar, f"big{k}", data[: 12 << 20])
    os.replace(part, path)
    return path


def docker_save(layer: bytes, out: Path) -> Path:
    """A one-layer ``docker save`` tarball whose ``layer.tar`` member holds ``layer``."""
    if out.exists():
        return out
    diff_id = hashlib.sha256(gzip.decompress(layer) if layer[:2] == b"\x1f\x8b" else layer)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id.hexdigest()}"]},
    }
    config_bytes = json.dumps(config).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    member = f"{hashlib.sha256(layer).hexdigest()}/layer.tar"
    part = out.with_suffix(".part")
    with tarfile.open(part, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, member, layer)
        _add(tar, config_name, config_bytes)
        manifest = [{"Config": config_name, "RepoTags": ["bench:x"], "Layers": [member]}]
        _add(tar, "manifest.json", json.dumps(manifest).encode())
    os.replace(part, out)
    return out


def env_for(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src)
    return env


def run_apply(src: Path, layer: Path, work: Path, count: int) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="apply-", dir=work))
    try:
        proc = subprocess.run(
            [str(PYTHON), "-c", APPLY, str(root / "root"), str(layer), str(count)],
            env=env_for(src),
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run_import(src: Path, image: Path, work: Path) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="import-", dir=work))
    try:
        started = time.monotonic()
        proc = subprocess.run(
            [str(PYTHON), "-m", "lcow", "--root", str(root / "root"), "import", str(image)],
            env=env_for(src),
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.monotonic() - started
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return {"seconds": seconds}


def machine() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load": os.getloadavg(),
        "commit": subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip(),
    }


def _summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median_s": None, "min_s": None, "max_s": None}
    return {"median_s": statistics.median(values), "min_s": min(values), "max_s": max(values)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", action="append", required=True, help="NAME=SRC_DIR (repeatable)")
    ap.add_argument("--parts", default="apply,import")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--applies", type=int, default=40)
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/lcow-bench-staging"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    sources = {}
    for spec in args.src:
        name, _, where = spec.partition("=")
        sources[name] = Path(where).resolve()
    parts = args.parts.split(",")
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    small = small_layer(work / "small.tar")
    images: dict[str, Path] = {}
    if "import" in parts:
        layer = big_layer(work / "big.tar").read_bytes()
        images["plain"] = docker_save(layer, work / "image-plain.tar")
        images["gzip"] = docker_save(gzip.compress(layer, 1), work / "image-gzip.tar")
        for image in images.values():
            image.read_bytes()  # warm the page cache
    rows = [("apply", "small")] if "apply" in parts else []
    rows += [("import", kind) for kind in images]
    samples: dict[str, dict[str, list[dict[str, object]]]] = {
        n: {f"{p}:{k}": [] for p, k in rows} for n in sources
    }
    names = list(sources)
    started = machine()
    for rep in range(args.runs):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for part, kind in rows:
            for name in order:
                subprocess.run(["sync"], check=False)
                if part == "apply":
                    result = run_apply(sources[name], small, work, args.applies)
                else:
                    result = run_import(sources[name], images[kind], work)
                samples[name][f"{part}:{kind}"].append(result)
                shown = result.get("median_s", result.get("seconds", result.get("error")))
                log(f"run {rep + 1}/{args.runs} {name} {part}:{kind}: {shown}")
    summary: dict[str, dict[str, object]] = {}
    for name in names:
        summary[name] = {}
        for row, results in samples[name].items():
            key = "median_s" if row.startswith("apply") else "seconds"
            values = [float(r[key]) for r in results if key in r]  # type: ignore[arg-type]
            summary[name][row] = {
                **_summary(values),
                "errors": [r["error"] for r in results if "error" in r],
            }
    report = {
        "machine_start": started,
        "machine_end": machine(),
        "sources": {n: str(p) for n, p in sources.items()},
        "summary": summary,
        "samples": samples,
    }
    out = args.out or REPO / "benchmarks" / "out" / f"staging-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    for name in names:
        for row, stats in summary[name].items():
            median = stats["median_s"]
            shown = f"{median * 1000:.2f} ms" if median is not None else "failed"
            print(f"{name:>10} {row:<14} median {shown}")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
