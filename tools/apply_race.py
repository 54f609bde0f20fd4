#!/usr/bin/env python3
"""Race two processes applying different tars to one layer, round after round, and check that
the layer's image and its metadata always come from the same tar (data-safety issue, item 2).

    .venv/bin/python tools/apply_race.py [--rounds 500] [--work DIR] [--json FILE]

Every round starts ``lcow --root R -o lcow.dmverity=true apply-diff L -i a.tar`` and the same
with ``b.tar`` at the same moment (two processes, the real command line). The two tars differ in
content and size, so each has its own image, unpack size and dm-verity root hash; the converter
is deterministic, so ``lcow tar2ext4 -overlay -vhd --dm-verity`` of each tar, run once up front,
gives the exact ext4 bytes a whole layer must have. After the round:

* both processes exited 0 (the second waits for the layer's lock, then replaces the first's
  result whole);
* the ext4 part of ``layer.vhd`` is byte for byte one of the two reference images (the verity
  salt and the VHD footer's time and UUID differ per conversion), ``lcow-layer.json`` records
  that same tar's unpack size, file size and hash offset, and ``veritysetup verify`` (an
  independent oracle) accepts the image with the recorded root hash. A mix — one tar's image
  with the other's metadata — is a *mismatch*: the vm backend's verity mount would fail;
* no temporary is left in the layer folder.

Prints one line per 50 rounds on stderr and a summary (rounds, mismatches, failures, which tar
won how often) on stdout; exits 1 on any mismatch or failure. Before the layer lock, 300 rounds
gave 5 mismatches (see benchmarks/RELIABILITY.md).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

LAYER = "racer"


def _lcow(*args: str) -> list[str]:
    return [sys.executable, "-m", "lcow", *args]


def _tar(path: Path, marker: bytes, files: int) -> None:
    """A layer tar: a marker file naming the tar, and ``files`` small files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [("marker", marker), *((f"d/f{i}", b"x" * i) for i in range(files))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())


def _reference(tar: Path, out: Path) -> dict[str, Any]:
    proc = subprocess.run(
        _lcow("tar2ext4", "-i", str(tar), "-o", str(out), "-overlay", "-vhd", "--dm-verity",
              "--json"),
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    result = json.loads(proc.stdout)
    digest = hashlib.sha256(out.read_bytes()[: result["hash_offset"]]).hexdigest()
    out.unlink()
    return {"sha256": digest, "hash_offset": result["hash_offset"], "size": result["file_size"],
            "content_size": result["content_size"]}  # fmt: skip


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check(root: Path, refs: dict[str, dict[str, Any]]) -> str | None:
    """``None`` when the layer is whole and consistent, else what is wrong."""
    folder = root / LAYER
    data = (folder / "layer.vhd").read_bytes()
    meta = json.loads((folder / "lcow-layer.json").read_bytes())
    which = [n for n, ref in refs.items() if ref["sha256"] == _sha(data[: ref["hash_offset"]])]
    if not which:
        return "layer.vhd holds neither tar's image"
    ref = refs[which[0]]
    if (meta.get("hash_offset"), meta.get("vhd_size"), meta.get("content_size")) != (
        ref["hash_offset"], ref["size"], ref["content_size"],
    ):  # fmt: skip
        return f"layer.vhd is {which[0]}'s image but lcow-layer.json is {meta}"
    verify = subprocess.run(
        ["veritysetup", "verify", folder / "layer.vhd", folder / "layer.vhd", meta["root_hash"],
         f"--hash-offset={meta['hash_offset']}"],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    if verify.returncode != 0:
        return f"veritysetup rejects {which[0]}'s image with the recorded root hash"
    stray = sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)
    if stray:
        return f"temporaries left: {stray}"
    return None


def run(rounds: int, work: Path) -> dict[str, Any]:
    """Run the race; returns the summary."""
    tars = {"a": work / "a.tar", "b": work / "b.tar"}
    _tar(tars["a"], b"a", 300)
    _tar(tars["b"], b"b", 500)
    refs = {name: _reference(tar, work / f"{name}.ref") for name, tar in tars.items()}
    root = work / "root"
    subprocess.run(_lcow("--root", str(root), "create", LAYER), check=True, capture_output=True)
    mismatches: list[str] = []
    failures: list[str] = []
    winners = {"a": 0, "b": 0}
    started = time.monotonic()
    for number in range(1, rounds + 1):
        apply = ["--root", str(root), "-o", "lcow.dmverity=true", "apply-diff", LAYER, "-i"]
        procs = {
            name: subprocess.Popen(
                _lcow(*apply, str(tar)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            for name, tar in tars.items()
        }
        for name, proc in procs.items():
            _, err = proc.communicate()
            if proc.returncode != 0:
                failures.append(f"round {number}: {name} exited {proc.returncode}: {err!r}")
        problem = _check(root, refs)
        if problem is not None:
            mismatches.append(f"round {number}: {problem}")
        else:
            marker = subprocess.run(
                _lcow("--root", str(root), "cat", LAYER, "/marker"), check=True, capture_output=True
            ).stdout.decode()
            winners[marker] = winners.get(marker, 0) + 1
        if number % 50 == 0:
            print(f"[{time.strftime('%H:%M:%S')}] round {number}: {len(mismatches)} mismatches, "
                  f"{len(failures)} failures", file=sys.stderr, flush=True)  # fmt: skip
    return {
        "rounds": rounds,
        "mismatches": mismatches,
        "failures": failures,
        "last_writer": winners,
        "seconds": round(time.monotonic() - started, 1),
        "references": refs,
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp)")
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="lcow-race-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        summary = run(args.rounds, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=1))
    print(
        f"{summary['rounds']} rounds in {summary['seconds']} s: "
        f"{len(summary['mismatches'])} mismatches, {len(summary['failures'])} failures, "
        f"last writer {summary['last_writer']}"
    )
    for line in summary["mismatches"] + summary["failures"]:
        print(f"  {line}")
    return 1 if summary["mismatches"] or summary["failures"] else 0


if __name__ == "__main__":
    os.environ.setdefault("LCOW_MAX_CONVERSIONS", "2")
    sys.exit(main())
