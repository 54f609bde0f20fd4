"""``lcow demo``: the project's main job on its generated data set (README quick start).

Everything goes under ``--out`` (default ``./demo-out``):

1. the sample layer tars of :mod:`lcow.samples`, each converted as ``lcow tar2ext4 -overlay -vhd``
   would into ``<out>/<n>/layer.vhd`` (one row per layer: entries, content size, ext4 size, file
   size, inodes, seconds);
2. the sample image ``<out>/sample-image.tar`` (``docker save`` format by default), imported into
   the data root ``<out>/root`` with the userspace backend (``lcow import``; a second run finds
   every layer already there);
3. the driver's status, the chain bottom-up with each layer's sizes (``lcow ls``, ``diff-size``),
   and the changes of the top layer against its parent (``lcow changes``);
4. one layer (the whiteout layer) exported back to ``<out>/layer.tar`` (``lcow diff``).

``--json`` prints all of it as one object instead.
"""

from __future__ import annotations

import argparse
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lcow._util.atomic import atomic_output
from lcow.cli._format import format_size, format_table
from lcow.cli._output import write_json, write_lines
from lcow.cli.import_cmd import result_json
from lcow.cli.status import ExitStatus
from lcow.convert.options import ConvertOptions
from lcow.convert.tar2ext4 import tar2ext4
from lcow.formats.whiteouts import is_opaque_marker, is_whiteout_name
from lcow.graphdriver.driver import Driver
from lcow.images.importer import ImportResult, import_image
from lcow.samples import SAMPLE_IMAGE_NAME, write_sample_image, write_sample_layers
from lcow.storage.dataroot import DataRoot

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = (
    "the main job on generated samples: convert the sample layers, import the sample image into "
    "a data root, show status, chain, changes and sizes, export a layer back to a tar"
)

_HEADERS = ("layer", "entries", "content", "image", "file", "inodes", "seconds")
_CHAIN_HEADERS = ("#", "layer id", "parent", "disk", "content", "file", "diff-size")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of ``lcow demo``.

    Args:
        parser: the command's parser.
    """
    parser.add_argument(
        "--out", "-out", type=Path, default=Path("demo-out"), metavar="DIR",
        help="where everything goes (default: ./demo-out)",
    )  # fmt: skip
    parser.add_argument(
        "--format", dest="image_format", choices=("docker", "docker-oci", "oci"),
        default="docker", help="layout of the sample image tarball (default: docker)",
    )  # fmt: skip
    parser.add_argument(
        "--compression", choices=("none", "gzip", "zstd"), default="none",
        help="how the sample image stores its layers (default: none)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def _convert_layers(out: Path) -> list[dict[str, Any]]:
    """Step 1: the sample layer tars and their ``<n>/layer.vhd`` conversions."""
    tars = write_sample_layers(out)
    options = ConvertOptions(convert_whiteouts=True, vhd_footer=True)
    rows = []
    for number, tar in enumerate(tars, start=1):
        layer_dir = out / str(number)
        layer_dir.mkdir(exist_ok=True)
        started = time.perf_counter()
        result = tar2ext4(tar, layer_dir / "layer.vhd", options)
        rows.append(
            {
                "layer": f"{number}/layer.vhd ({tar.name})",
                "entries": result.entries,
                "content_size": result.content_size,
                "image_size": result.image_size,
                "file_size": result.file_size,
                "inodes": result.inodes,
                "seconds": round(time.perf_counter() - started, 3),
            }
        )
    return rows


def _export_stats(path: Path) -> dict[str, Any]:
    entries = whiteouts = opaque = 0
    with tarfile.open(path) as tf:
        for info in tf:
            entries += 1
            base = info.name.rstrip("/").rsplit("/", 1)[-1]
            if is_opaque_marker(base):
                opaque += 1
            elif is_whiteout_name(base):
                whiteouts += 1
    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "entries": entries,
        "whiteouts": whiteouts,
        "opaque_markers": opaque,
    }


@dataclass(frozen=True)
class _ChainRow:
    layer_id: str
    parent: str | None
    diff_id: str
    content_size: int
    file_size: int
    diff_size: int

    def to_json(self) -> dict[str, Any]:
        return {
            "Id": self.layer_id,
            "Parent": self.parent,
            "DiffID": self.diff_id,
            "ContentSize": self.content_size,
            "FileSize": self.file_size,
            "DiffSize": self.diff_size,
        }


def _chain(driver: Driver, result: ImportResult) -> list[_ChainRow]:
    rows = []
    for layer in result.layers:
        meta = driver.root.read_meta(layer.layer_id)
        content = meta.get("content_size")
        disk = DataRoot.layer_file(Path(driver.get_layer_path(layer.layer_id)))
        rows.append(
            _ChainRow(
                layer_id=layer.layer_id,
                parent=layer.parent,
                diff_id=layer.diff_id,
                content_size=content if isinstance(content, int) else 0,
                file_size=disk.path.stat().st_size if disk is not None else 0,
                diff_size=driver.diff_size(layer.layer_id, layer.parent),
            )
        )
    return rows


def _say(args: argparse.Namespace, *lines: str | list[str]) -> None:
    """Print lines (a list stands for its lines), each escaped, unless ``--json``."""
    if not args.json:
        write_lines(line for item in lines for line in ([item] if isinstance(item, str) else item))


def _conversion_table(rows: list[dict[str, Any]]) -> list[str]:
    return format_table(
        _HEADERS,
        [
            (
                r["layer"],
                str(r["entries"]),
                format_size(r["content_size"]),
                format_size(r["image_size"]),
                format_size(r["file_size"]),
                str(r["inodes"]),
                f"{r['seconds']:.2f}",
            )
            for r in rows
        ],
    )


def _chain_table(rows: list[_ChainRow]) -> list[str]:
    return format_table(
        _CHAIN_HEADERS,
        [
            (
                str(n),
                row.layer_id[:12],
                (row.parent or "-")[:12],
                "read-only",
                format_size(row.content_size),
                format_size(row.file_size),
                format_size(row.diff_size),
            )
            for n, row in enumerate(rows, start=1)
        ],
    )


def run(args: argparse.Namespace) -> int:
    """Run ``lcow demo``.

    Args:
        args: parsed flags (see :func:`add_arguments`).

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    out: Path = args.out
    _say(args, f"writing the sample layers into {out}/, converting each (tar2ext4 -overlay -vhd)")
    converted = _convert_layers(out)
    _say(args, _conversion_table(converted))

    image = write_sample_image(
        out / "sample-image.tar", args.image_format, compression=args.compression
    )
    root = out / "root"
    _say(
        args,
        "",
        f"importing {image} ({SAMPLE_IMAGE_NAME}, {args.image_format} format, layers "
        f"{args.compression}) into the data root {root}/ (userspace backend) ...",
    )
    driver = Driver(root, ["lcow.backend=userspace"])
    started = time.perf_counter()
    result = import_image(driver, image)
    seconds = time.perf_counter() - started
    count, new = len(result.layers), len(result.created)
    _say(
        args,
        f"{count} layers ({new} new, {count - new} already there) in {seconds:.2f} s; "
        "layer ids are Docker's chain IDs",
    )

    status = [[k, v] for k, v in driver.status()]
    _say(args, "", "status:", [f"  {k + ':':<8} {v}".rstrip() for k, v in status])

    chain = _chain(driver, result)
    _say(args, "", "the chain, bottom first (lcow ls; diff-size against each layer's parent):")
    _say(args, _chain_table(chain))

    top, parent = result.layers[-1], result.layers[-2]
    changes = sorted(driver.changes(top.layer_id, parent.layer_id), key=lambda c: c.path)
    _say(args, "", f"changes of the top layer {top.layer_id[:12]} against {parent.layer_id[:12]}:")
    _say(args, [f"  {c}" for c in changes])

    exported = result.layers[1]
    export_path = out / "layer.tar"
    with atomic_output(export_path) as fd:
        driver.write_diff(exported.layer_id, exported.parent, fd)
    export = _export_stats(export_path)
    _say(
        args,
        "",
        f"exported layer 2 ({exported.layer_id[:12]}, the whiteout layer) back to "
        f"{export_path}: {export['entries']} entries, {export['whiteouts']} whiteouts, "
        f"{export['opaque_markers']} opaque markers, {format_size(export['bytes'])}",
    )

    _say(
        args,
        "",
        f"summary: {SAMPLE_IMAGE_NAME} is {count} layers in {root}/ "
        f"({format_size(sum(r.content_size for r in chain))} of tar content in "
        f"{format_size(sum(r.file_size for r in chain))} of layer images); the top layer has "
        f"{len(changes)} changes ({format_size(chain[-1].diff_size)}).",
        f"next: lcow --root {root} tree {top.layer_id[:12]} /etc",
    )
    if args.json:
        value = {
            "Converted": converted,
            "Image": str(image),
            "Import": result_json(result),
            "Status": status,
            "Chain": [row.to_json() for row in chain],
            "Changes": [{"Path": c.path, "Kind": int(c.kind)} for c in changes],
            "Export": export,
        }
        write_json(value)
    return ExitStatus.OK
