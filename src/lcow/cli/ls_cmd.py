"""``lcow --root DIR ls``: the layers of a data root with their parents, disks and sizes.

One row per layer, parents before children: id, parent, depth (number of ancestors), kind of
disk (``layer.vhd`` read-only, ``sandbox.vhdx`` writable, ``-`` none yet), content size
(ApplyDiff's unpack size, when recorded), file size and space used on disk. A layer whose
``layerchain.json`` cannot be read is listed with parent ``?``. ``--json``: a list of objects
``{"Id", "Parent", "Depth", "Kind", "ContentSize", "FileSize", "DiskUsage", "DiffID", "Error"}``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from lcow.cli._driver import add_json, emit, open_driver
from lcow.cli._format import format_size, format_table
from lcow.cli.status import ExitStatus
from lcow.errors import LcowError
from lcow.storage.dataroot import DataRoot

__all__ = ["SUMMARY", "add_arguments", "layer_rows", "run"]

SUMMARY = "list layers: parent, depth, kind of disk, content/file/disk sizes"

_HEADERS = ("ID", "PARENT", "DEPTH", "KIND", "CONTENT", "FILE", "DISK")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``lcow ls``.

    Args:
        parser: the command's parser.
    """
    parser.add_argument(
        "--no-trunc", action="store_true", help="show full ids (default: 12 characters)"
    )
    add_json(parser)


def _layer(root: DataRoot, layer_id: str) -> dict[str, Any]:
    folder = root.layer_dir(layer_id)
    row: dict[str, Any] = {"Id": layer_id, "Parent": None, "Depth": 0, "Error": None}
    try:
        chain = root.read_chain(layer_id)
        row["Parent"] = chain[0].name if chain else None
        row["Depth"] = len(chain)
    except LcowError as exc:
        row["Parent"], row["Depth"], row["Error"] = "?", None, str(exc)
    disk = DataRoot.layer_file(folder)
    row["Kind"] = disk.path.name if disk is not None else None
    file_size = disk_usage = None
    if disk is not None:
        try:
            st = os.stat(disk.path)
            file_size, disk_usage = st.st_size, st.st_blocks * 512
        except OSError:
            pass
    meta = root.read_meta(layer_id)
    content = meta.get("content_size") if disk is not None and not disk.writable else None
    row["ContentSize"] = content if isinstance(content, int) else None
    row["FileSize"] = file_size
    row["DiskUsage"] = disk_usage
    diff_id = meta.get("diff_id")
    row["DiffID"] = diff_id if isinstance(diff_id, str) else None
    return row


def layer_rows(root: DataRoot) -> list[dict[str, Any]]:
    """Every layer of ``root``, parents before children (siblings by id).

    Args:
        root: the data root.

    Returns:
        One ``--json`` object per layer.
    """
    rows = {i: _layer(root, i) for i in root.layer_ids()}
    children: dict[str | None, list[str]] = {}
    for layer_id, row in rows.items():
        parent = row["Parent"] if row["Parent"] in rows else None
        children.setdefault(parent, []).append(layer_id)
    ordered: list[dict[str, Any]] = []
    pending = list(reversed(sorted(children.get(None, []))))
    while pending:
        layer_id = pending.pop()
        ordered.append(rows[layer_id])
        pending.extend(reversed(sorted(children.get(layer_id, []))))
    seen = {row["Id"] for row in ordered}
    ordered += [rows[i] for i in sorted(rows) if i not in seen]  # cycles: still listed
    return ordered


def _size(value: int | None) -> str:
    return "-" if value is None else format_size(value)


def run(args: argparse.Namespace) -> int:
    """Run ``lcow ls``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    rows = layer_rows(open_driver(args).root)

    def short(value: str | None) -> str:
        if value is None:
            return "-"
        return value if args.no_trunc else value[:12]

    table = [
        (
            short(row["Id"]),
            short(row["Parent"]),
            "?" if row["Depth"] is None else str(row["Depth"]),
            row["Kind"] or "-",
            _size(row["ContentSize"]),
            _size(row["FileSize"]),
            _size(row["DiskUsage"]),
        )
        for row in rows
    ]
    text = format_table(_HEADERS, table) if table else "(no layers)"
    emit(args, rows, text)
    return ExitStatus.OK
