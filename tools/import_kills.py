#!/usr/bin/env python3
"""Kill ``lcow import`` at every step and check that no unverified layer is ever visible
(data-safety issue, item 3).

    .venv/bin/python tools/import_kills.py [--variants plain,gzip,tampered] [--every 1]
        [--work DIR] [--json FILE]

A *step* is a call that changes what is on disk or makes it durable — ``os.open``, ``mkdir``,
``rename``, ``replace``, ``unlink``, ``rmdir``, ``link``, ``ftruncate``, ``fsync`` — in any
thread of the importing process. An unkilled ``lcow import`` of a three-layer ``docker save``
tarball is run first, counting its steps (about 80) and keeping its layers as the reference;
then, for every step k (or every N-th with ``--every``), a fresh data root is imported into by a
process that SIGKILLs itself just before its k-th step (fault injection by a profiling hook; the
product code is unchanged). After each kill, in fresh processes:

1. **nothing unverified is visible**: every ``layer.vhd`` under a chain ID holds exactly the
   reference layer's ext4 bytes, and every layer whose metadata records a diff ID records the
   right diff and chain IDs; no layer folder exists without its image, and no whole layer sits
   above a missing one;
2. **a new import completes it**: ``lcow import`` exits 0, skips exactly the layers whose
   metadata vouched for them, and leaves every layer equal to the reference with both IDs
   recorded;
3. ``lcow cleanup`` leaves no temporary (``.tmp-``) and no ``-removing`` folder.

Variants: ``plain`` (plain layer blobs), ``gzip`` (gzip-compressed blobs, decompressed while
converted), ``tampered`` (the middle layer's tar altered by one byte, so its diff ID does not
match: every import must fail with exit 3 and leave neither that layer nor the one above).
Prints a line per kill on stderr, a summary on stdout; exits 1 on any problem.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

# The child: count steps in every thread; SIGKILL the process just before step TARGET.
_CHILD = """
import os, signal, sys, threading, itertools
target = int(sys.argv[1])
steps = {os.open, os.mkdir, os.rename, os.replace, os.unlink, os.rmdir, os.link, os.ftruncate,
         os.fsync}
counter = itertools.count(1)
log = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
def hook(frame, event, arg):
    if event == "c_call" and arg in steps:
        number = next(counter)
        if number == target:
            os.write(log, f"{number} {arg.__name__}\\n".encode())
            os.kill(os.getpid(), signal.SIGKILL)
def count_only(frame, event, arg):
    if event == "c_call" and arg in steps:
        os.write(log, f"{next(counter)} {arg.__name__}\\n".encode())
chosen = hook if target > 0 else count_only
sys.setprofile(chosen)
threading.setprofile(chosen)
from lcow.cli.main import main
status = main(sys.argv[3:])
sys.setprofile(None)
threading.setprofile(None)
sys.exit(status)
"""


def _lcow(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lcow", "--root", str(root), *argv],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def _layer_tar(path: Path, marker: str, files: int) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        files_ = ((f"{marker}/f{i}", bytes([65 + i % 26]) * (i * 37)) for i in range(files))
        entries = [(f"m-{marker}", marker.encode() * 40), *files_]
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())


def _tamper(image: Path, layer_tar: bytes) -> None:
    """Change one byte of ``layer_tar``'s first file inside the (plain) archive ``image``."""
    data = bytearray(image.read_bytes())
    at = data.find(layer_tar)
    if at < 0:
        raise SystemExit("import_kills: cannot find the layer to tamper with")
    with tarfile.open(fileobj=io.BytesIO(layer_tar)) as tar:
        first = next(m for m in tar if m.isfile() and m.size)
    data[at + first.offset_data] ^= 0x01
    image.write_bytes(bytes(data))


def make_image(work: Path, variant: str) -> Path:
    """The three-layer image of a variant."""
    from lcow.samples import write_sample_image

    tars = []
    for marker, files in (("a", 40), ("b", 30), ("c", 20)):
        tars.append(work / f"{marker}.tar")
        _layer_tar(tars[-1], marker, files)
    image = work / f"{variant}.tar"
    compression = "gzip" if variant == "gzip" else "none"
    write_sample_image(image, layers=tars, compression=compression)  # type: ignore[arg-type]
    if variant == "tampered":
        _tamper(image, tars[1].read_bytes())
    return image


def _child(target: int, log: Path, root: Path, image: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CHILD, str(target), str(log), "--root", str(root), "--json",
         "import", str(image)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def _ext4(folder: Path) -> bytes:
    return (folder / "layer.vhd").read_bytes()[:-512]  # the VHD footer has a time and a UUID


def _state(root: Path, expected: list[dict[str, Any]]) -> dict[str, Any]:
    """What a data root holds of the expected layers, and what is wrong with it."""
    problems, trusted, whole = [], [], []
    for below, layer in zip([None, *expected], expected, strict=False):  # one shorter
        folder = root / layer["Id"]
        if not (folder / "layer.vhd").exists():
            if folder.exists():
                problems.append(f"{layer['Id'][:12]}: visible without its image")
            continue
        if below is not None and not (root / below["Id"] / "layer.vhd").exists():
            problems.append(f"{layer['Id'][:12]}: whole above a missing layer")
        whole.append(layer["Id"])
        if _ext4(folder) != layer["ext4"]:
            problems.append(f"{layer['Id'][:12]}: layer.vhd is not the verified layer")
        meta = json.loads((folder / "lcow-layer.json").read_bytes())
        if "diff_id" in meta:
            trusted.append(layer["Id"])
            if (meta["diff_id"], meta.get("chain_id")) != (layer["DiffID"], layer["ChainID"]):
                problems.append(f"{layer['Id'][:12]}: metadata vouches for other IDs: {meta}")
    return {"problems": problems, "trusted": trusted, "whole": whole}


def _leftovers(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if ".tmp-" in p.name or p.name.endswith("-removing")
    )


def reference(work: Path, image: Path, variant: str) -> tuple[list[dict[str, Any]], int]:
    """Import unkilled: the reference layers and the number of steps. For ``tampered`` the
    import must fail; the reference layers then come from the untampered image."""
    root, log = work / "reference", work / "reference.log"
    proc = _child(0, log, root, image)
    steps = len(log.read_text().splitlines())
    if variant == "tampered":
        if proc.returncode != 3:
            raise SystemExit(f"import_kills: the tampered import exited {proc.returncode}")
        (work / "clean").mkdir()
        root = work / "clean-root"
        proc = _lcow(root, "--json", "import", str(make_image(work / "clean", "plain")))
    if proc.returncode != 0:
        raise SystemExit(f"import_kills: the reference import failed: {proc.stderr}")
    layers = json.loads(proc.stdout)["Layers"]
    for layer in layers:
        layer["ext4"] = _ext4(root / layer["Id"])
    return layers, steps


def kill_once(work: Path, image: Path, variant: str, layers: list[dict[str, Any]],
              target: int) -> dict[str, Any]:  # fmt: skip
    """One kill at step ``target`` and the checks after it."""
    root, log = work / f"kill-{target}", work / f"kill-{target}.log"
    started = time.monotonic()
    proc = _child(target, log, root, image)
    record: dict[str, Any] = {"step": target, "call": "", "problems": []}
    logged = log.read_text().split() if log.exists() else []
    record["call"] = logged[1] if len(logged) > 1 else "(finished first)"
    if proc.returncode not in (-9, 0, 3):
        record["problems"].append(f"the import exited {proc.returncode}: {proc.stderr.strip()}")
    before = _state(root, layers)
    record["problems"] += before["problems"]
    record["whole_after_kill"] = len(before["whole"])
    if variant == "tampered" and any(lid != layers[0]["Id"] for lid in before["whole"]):
        record["problems"].append(f"a layer at or above the tampered one is visible: {before}")
    again = _lcow(root, "--json", "import", str(image))
    if variant == "tampered":
        if again.returncode != 3:
            record["problems"].append(f"re-import of the tampered image exited {again.returncode}")
    elif again.returncode != 0:
        record["problems"].append(f"re-import failed: {again.stderr.strip()}")
    else:
        result = json.loads(again.stdout)["Layers"]
        skipped = {layer["Id"] for layer in result if not layer["Created"]}
        if skipped != set(before["trusted"]):
            record["problems"].append(
                f"re-import skipped {sorted(skipped)}, trusted were {before['trusted']}"
            )
        after = _state(root, layers)
        record["problems"] += after["problems"]
        if sorted(after["trusted"]) != sorted(layer["Id"] for layer in layers):
            record["problems"].append(f"after re-import not every layer is verified: {after}")
    cleanup = _lcow(root, "cleanup")
    if cleanup.returncode != 0:
        record["problems"].append(f"cleanup exited {cleanup.returncode}: {cleanup.stderr}")
    left = _leftovers(root)
    if left:
        record["problems"].append(f"left behind after cleanup: {left}")
    record["seconds"] = round(time.monotonic() - started, 2)
    shutil.rmtree(root, ignore_errors=True)
    log.unlink(missing_ok=True)
    return record


def run(variants: list[str], every: int, work: Path) -> dict[str, Any]:
    """Every variant, every ``every``-th step."""
    summary: dict[str, Any] = {"variants": {}, "kills": 0, "problems": []}
    started = time.monotonic()
    for variant in variants:
        folder = work / variant
        folder.mkdir(parents=True)
        image = make_image(folder, variant)
        layers, steps = reference(folder, image, variant)
        records = []
        for target in range(1, steps + 1, every):
            record = kill_once(folder, image, variant, layers, target)
            records.append(record)
            status = "ok" if not record["problems"] else "; ".join(record["problems"])
            print(f"[{time.strftime('%H:%M:%S')}] {variant} step {target}/{steps} "
                  f"({record['call']}): {record['whole_after_kill']} whole layers; {status}",
                  file=sys.stderr, flush=True)  # fmt: skip
            summary["problems"] += [f"{variant} step {target}: {p}" for p in record["problems"]]
        whole: dict[int, int] = {}
        for record in records:
            whole[record["whole_after_kill"]] = whole.get(record["whole_after_kill"], 0) + 1
        summary["variants"][variant] = {
            "steps": steps,
            "kills": len(records),
            "whole_layers_after_kill": dict(sorted(whole.items())),
            "problems": sum(bool(r["problems"]) for r in records),
            "records": records,
        }
        summary["kills"] += len(records)
    summary["seconds"] = round(time.monotonic() - started, 1)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--variants", default="plain,gzip,tampered")
    parser.add_argument("--every", type=int, default=1, help="kill at every N-th step only")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp)")
    parser.add_argument("--json", type=Path, default=None, help="write the records here")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="lcow-import-kills-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        summary = run(args.variants.split(","), args.every, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=1))
    print(f"{summary['kills']} kills in {summary['seconds']} s, "
          f"{len(summary['problems'])} problems")  # fmt: skip
    for name, row in summary["variants"].items():
        whole = row["whole_layers_after_kill"]
        print(f"  {name}: {row['steps']} steps, {row['kills']} kills, whole layers after the "
              f"kill {whole}, {row['problems']} with problems")  # fmt: skip
    for problem in summary["problems"]:
        print(f"  {problem}")
    return 1 if summary["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
