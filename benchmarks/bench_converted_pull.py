#!/usr/bin/env python3
"""Benchmark a converted pull against a converting pull (issue 16 part 4; goal <= 0.5x).

    sudo TMPDIR=/tmp/SHORT .venv/bin/python benchmarks/bench_converted_pull.py --serve CMDS \\
        [--data /var/tmp/lcow-bench-converted] [--tar LAYER.tar] [--keep] &
    # then time the two command lines in CMDS from outside, in pairs, e.g.
    #   . CMDS; hyperfine -N -r 11 "$converted" "$converting"      (hyperfine is in Debian)
    # and end the script with SIGTERM (the registry is stopped, --data removed)

Set-up (untimed): one Debian ``docker-registry`` 2.8 on loopback (plain HTTP, no auth, as the
tests start it); a one-layer image whose layer is a Debian-rootfs-sized tree — the busybox root
filesystem plus this machine's ``/usr/lib/python3`` and ``/usr/share/doc`` (about 200 MB, the
base of ``bench_containerd.py``; no network needed) — gzip-compressed as registries store
layers, pushed with skopeo; a publisher data root that pulls it (converting) and publishes it
(``lcow publish``). ``--tar`` takes another tar as the one layer instead (e.g. the D2
site-packages dataset of ``datasets.py``: many small files, where conversion costs more); it is
read, never changed. Then the two commands, each a whole process from nothing:

* ``converted`` — ``lcow --root DATA/a pull --plain-http REF``: finds the artifact through the
  fallback tag and downloads the ``layer.vhd`` (no tar fetched, nothing converted);
* ``converting`` — the same with ``--no-converted`` into ``DATA/b``: downloads the gzip tar and
  converts it while it streams.

Each command removes its data root at its end (``&& rm -rf``), so every run starts empty and
both pay for removing what they made. Both print the layer id; a converted run that did not
come converted would show in ``DATA/check.sh`` (run it once: it pulls with ``--json`` and checks
``"Converted": true``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tests.containerd.daemons import Registry  # noqa: E402
from tests.containerd.images import BuiltImage, push_image, write_index, write_manifest  # noqa: E402

from debian_image import base_rootfs  # noqa: E402

DEFAULT_DATA = Path("/var/tmp/lcow-bench-converted")


def log(message: str) -> None:
    print(f"[bench_converted_pull {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr,
          flush=True)  # fmt: skip


def lcow_argv(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "lcow", "--root", str(root), *args]


def run(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} exited {proc.returncode}:\n{proc.stderr}")
    return proc.stdout


def tar_facts(tar: Path) -> dict[str, int]:
    with tarfile.open(tar) as archive:
        entries = sum(1 for _ in archive)
    return {"bytes": tar.stat().st_size, "entries": entries}


def set_up(data: Path, given: Path | None) -> tuple[Registry, str, dict[str, int]]:
    """The registry, the pushed and published image's reference, the base tar's facts."""
    data.mkdir(parents=True, exist_ok=True)
    tar = data / "base.tar" if given is None else given
    facts = base_rootfs(tar) if given is None else tar_facts(tar)
    log(f"base layer: {facts['bytes']} bytes, {facts['entries']} entries")
    registry = Registry(data / "registry").start()
    layout = data / "layout"
    descriptor, _, layers = write_manifest(layout, [tar.read_bytes()], compression="gzip")
    digest = write_index(layout, [descriptor], "v1")
    reference = push_image(BuiltImage(layout, "v1", digest, "", layers), registry.address,
                           "bench/debianish", data)  # fmt: skip
    facts["gzip_bytes"] = layers[0].size
    if given is None:
        tar.unlink()
    shutil.rmtree(layout)
    publisher = data / "publisher"
    run(lcow_argv(publisher, "pull", "--plain-http", reference))
    log(run(lcow_argv(publisher, "publish", "--plain-http", "--json", reference)).strip())
    vhd = next(publisher.glob("*/layer.vhd"))
    facts["vhd_bytes"] = vhd.stat().st_size
    return registry, reference, facts


def commands(data: Path, reference: str) -> dict[str, str]:
    def pull(root: Path, *extra: str) -> str:
        argv = lcow_argv(root, "pull", "--plain-http", *extra, reference)
        return f"sh -c {shlex.quote(f'{shlex.join(argv)} && rm -rf {shlex.quote(str(root))}')}"

    check = lcow_argv(data / "c", "pull", "--plain-http", "--json", reference)
    (data / "check.sh").write_text(
        f"{shlex.join(check)} | grep -q '\"Converted\": true' && echo converted; "
        f"rm -rf {shlex.quote(str(data / 'c'))}\n"
    )
    return {"converted": pull(data / "a"), "converting": pull(data / "b", "--no-converted")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", metavar="CMDS", type=Path, required=True,
                        help="write the command lines here and wait for SIGTERM")  # fmt: skip
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--tar", type=Path, help="the layer's tar (default: the Debian-like tree)")
    parser.add_argument("--keep", action="store_true", help="keep --data at the end")
    args = parser.parse_args(argv)
    registry = None
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        registry, reference, facts = set_up(args.data, args.tar)
        lines = commands(args.data, reference)
        args.serve.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in lines.items()))
        (args.data / "facts.json").write_text(json.dumps(facts, indent=1))
        log(f"ready: {args.serve} ({facts})")
        while not stop:
            time.sleep(0.5)
    finally:
        if registry is not None:
            registry.stop()
        if not args.keep:
            shutil.rmtree(args.data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
