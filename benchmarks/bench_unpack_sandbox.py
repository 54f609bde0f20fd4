#!/usr/bin/env python3
"""One unpack of a layer through an lcow sandbox and into ``layer.vhd``: three ways (issue 15).

    sudo TMPDIR=/tmp/SHORT .venv/bin/python benchmarks/bench_unpack_sandbox.py \\
        --root DIR --tar LAYER.tar MODE [MODE ...]

What a containerd pull asks of the snapshotter per layer (Prepare, the differ writing the
layer's files into the mount, Commit: export of the sandbox's own content, conversion into
``layer.vhd``, the sandbox freed), done in-process on the data root ``--root`` with the host
backend, GNU ``tar -x`` standing in for containerd's walking differ. Each MODE is run once, in
order, and prints its steps' wall seconds:

* ``vhdx`` — as the snapshotter does today: ``create_read_write`` (a ``sandbox.vhdx``), Get
  (the storage daemon's FUSE export, a loop device, ext4), ``tar -x`` into the view, Put (the
  unmount writes the page cache back through the loop device, FUSE and the storage daemon),
  the driver's Diff into ApplyDiff of the same id, Remove.
* ``raw`` — a sparse raw ext4 file (a sparse copy of a template made once with ``mkfs.ext4``)
  on a plain loop device: no VHDX, no storage daemon, no FUSE; ``tar -x`` into its
  ``upper/``, unmount (write-back into the host page cache of the file), the ``upper/``
  exported by lcow's ext4 reader with AUFS whiteouts into ApplyDiff of a new layer, the file
  unlinked (its dirty pages dropped, never written), the layer removed.
* ``live`` — like ``vhdx`` but Commit exports through the mounted filesystem (lcow's host
  view archiver with overlay→AUFS whiteouts) before Put, into a new layer, then empties the
  sandbox's ``upper/`` (so the unmount has almost no data to write back), Put, Remove.

Time whole processes of one mode against another with an outside paired timer (one MODE per
process). Everything mounted is unmounted and every layer removed; ``--root`` stays.
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "src")]

from lcow.backends.host.hostfs import HostFS  # noqa: E402
from lcow.backends.taroptions import OVERLAY_WHITEOUTS, TarOptions  # noqa: E402
from lcow.convert.export import export_layer  # noqa: E402
from lcow.convert.tarwriter import as_writer  # noqa: E402
from lcow.formats.ext4.reader import Ext4Reader  # noqa: E402
from lcow.formats.source import open_source  # noqa: E402
from lcow.graphdriver.diffstream import DiffStream  # noqa: E402
from lcow.graphdriver.driver import Driver  # noqa: E402

__all__ = ["main"]

STEPS = ("prepare", "untar", "unmount", "convert", "remove")


def _untar(tarball: Path, into: Path) -> None:
    subprocess.run(
        ["tar", "-x", "-p", "--xattrs", "--xattrs-include=*", "-C", str(into), "-f", str(tarball)],
        check=True,
    )


def _apply(driver: Driver, layer_id: str, produce: Callable[[int], None]) -> None:
    with io.BufferedReader(DiffStream(produce), 1 << 20) as stream:
        driver.apply_diff(layer_id, None, stream)


def vhdx(driver: Driver, tarball: Path, _raw: Path) -> list[float]:
    marks = [time.monotonic()]
    sandbox = "x" + secrets.token_hex(8)
    driver.create_read_write(sandbox, None)
    view = driver.get(sandbox)
    path = Path(view.path)
    view.close()
    marks.append(time.monotonic())
    _untar(tarball, path)
    marks.append(time.monotonic())
    driver.put(sandbox)
    marks.append(time.monotonic())
    with io.BufferedReader(driver.diff(sandbox, None), 1 << 20) as stream:
        driver.apply_diff(sandbox, None, stream)
    marks.append(time.monotonic())
    driver.remove(sandbox)
    marks.append(time.monotonic())
    return marks


def live(driver: Driver, tarball: Path, _raw: Path) -> list[float]:
    marks = [time.monotonic()]
    sandbox, layer = "x" + secrets.token_hex(8), "l" + secrets.token_hex(8)
    driver.create_read_write(sandbox, None)
    view = driver.get(sandbox)
    path = Path(view.path)
    view.close()
    marks.append(time.monotonic())
    _untar(tarball, path)
    marks.append(time.monotonic())
    driver.create(layer, None)
    upper = HostFS(str(path))
    options = TarOptions(whiteout_format=OVERLAY_WHITEOUTS)
    _apply(driver, layer, lambda fd: upper.archive_path("/", as_writer(fd), options))
    converted = time.monotonic()
    for entry in os.scandir(path):  # the content is in layer.vhd now: drop the dirty pages
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
    driver.put(sandbox)
    unmounted = time.monotonic()
    # STEPS' order: the unmount (emptying included) before the conversion, as the others
    marks += [marks[-1] + (unmounted - converted), unmounted]
    driver.remove(sandbox)
    driver.remove(layer)
    marks.append(time.monotonic())
    return marks


def raw(driver: Driver, tarball: Path, raw_dir: Path) -> list[float]:
    template = raw_dir / "template.img"
    if not template.exists():
        subprocess.run(["truncate", "-s", "20G", str(template)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1",
                        str(template)], check=True)  # fmt: skip
    marks = [time.monotonic()]
    name = secrets.token_hex(8)
    image, mountpoint = raw_dir / f"{name}.img", raw_dir / f"{name}.mnt"
    subprocess.run(["cp", "--sparse=always", str(template), str(image)], check=True)
    device = subprocess.run(["losetup", "-f", "--show", str(image)], check=True,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "ext4", device, str(mountpoint)], check=True)
    (mountpoint / "upper").mkdir()
    (mountpoint / "work").mkdir()
    marks.append(time.monotonic())
    _untar(tarball, mountpoint / "upper")
    marks.append(time.monotonic())
    subprocess.run(["umount", str(mountpoint)], check=True)
    subprocess.run(["losetup", "-d", device], check=True)
    mountpoint.rmdir()
    marks.append(time.monotonic())
    layer = "r" + secrets.token_hex(8)
    driver.create(layer, None)
    reader = Ext4Reader(open_source(image), close_source=True)
    try:

        def export(fd: int) -> None:
            export_layer(reader, fd, top=b"/upper")

        _apply(driver, layer, export)
    finally:
        reader.close()
    marks.append(time.monotonic())
    image.unlink()
    driver.remove(layer)
    marks.append(time.monotonic())
    return marks


MODES = {"vhdx": vhdx, "raw": raw, "live": live}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, required=True, help="the data root (created)")
    ap.add_argument("--tar", type=Path, required=True, help="the layer's tar")
    ap.add_argument("modes", nargs="+", choices=sorted(MODES))
    args = ap.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    raw_dir = args.root.parent / f"{args.root.name}.raw"
    raw_dir.mkdir(exist_ok=True)
    driver = Driver(args.root, ["lcow.backend=host"])
    driver.linger(30)  # as `lcow snapshotter serve` runs it
    try:
        for mode in args.modes:
            marks = MODES[mode](driver, args.tar, raw_dir)
            spans = zip(STEPS, marks[:-1], marks[1:], strict=True)
            steps = " ".join(f"{name} {end - start:.3f}" for name, start, end in spans)
            print(f"{mode}: {steps} total {marks[-1] - marks[0]:.3f}", flush=True)
    finally:
        driver.stop_lingering()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
