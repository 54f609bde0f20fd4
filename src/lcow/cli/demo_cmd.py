"""``lcow demo``: the project's main job on its embedded data set (issue 2, README quick start).

Writes the sample layer tars of :mod:`lcow.samples` into ``--out`` (default ``./demo-out``),
converts each one as ``lcow tar2ext4 -overlay -vhd`` would into ``<out>/<n>/layer.vhd``, and
prints one row per layer: entries, content size (moby's unpack size), ext4 size, file size,
inodes and seconds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lcow.cli._format import format_size, format_table
from lcow.cli.status import ExitStatus
from lcow.convert.options import ConvertOptions
from lcow.convert.tar2ext4 import tar2ext4
from lcow.samples import write_sample_layers

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = "write the sample layer tars and convert them to layer.vhd files (-overlay -vhd)"

_HEADERS = ("layer", "entries", "content", "image", "file", "inodes", "seconds")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of ``lcow demo``.

    Args:
        parser: the command's parser.
    """
    parser.add_argument(
        "--out", "-out", type=Path, default=Path("demo-out"), metavar="DIR",
        help="where to write the tars and <n>/layer.vhd (default: ./demo-out)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run ``lcow demo``.

    Args:
        args: parsed flags (see :func:`add_arguments`).

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    out: Path = args.out
    print(f"writing sample layers into {out}/ ...", flush=True)
    tars = write_sample_layers(out)
    options = ConvertOptions(convert_whiteouts=True, vhd_footer=True)
    rows = []
    for number, tar in enumerate(tars, start=1):
        layer_dir = out / str(number)
        layer_dir.mkdir(exist_ok=True)
        started = time.perf_counter()
        result = tar2ext4(tar, layer_dir / "layer.vhd", options)
        seconds = time.perf_counter() - started
        rows.append(
            (
                f"{number}/layer.vhd ({tar.name})",
                str(result.entries),
                format_size(result.content_size),
                format_size(result.image_size),
                format_size(result.file_size),
                str(result.inodes),
                f"{seconds:.2f}",
            )
        )
    print(format_table(_HEADERS, rows))
    return ExitStatus.OK
