"""``lcow --root DIR images``: the images the data root holds by name (what ``pull`` recorded).

One line per image: name, digest (12 hex), platform, top layer id (12 characters) or
``missing`` when that layer is gone; ``--no-trunc`` prints whole digests and ids, ``--json``
every field.
"""

from __future__ import annotations

import argparse

from lcow.cli._driver import add_json, emit, root_exists, root_path
from lcow.cli._format import format_table
from lcow.cli.status import ExitStatus
from lcow.errors import NotFound
from lcow.images.store import ImageRecord, read_records
from lcow.storage.dataroot import DataRoot

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = "list the images pulled into the data root"

_SHORT = 12


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``lcow images``.

    Args:
        parser: the command's parser.
    """
    parser.add_argument("--no-trunc", action="store_true", help="print whole digests and ids")
    add_json(parser)


def _row(root: DataRoot, record: ImageRecord, whole: bool) -> list[str]:
    def short(text: str | None) -> str:
        if text is None:
            return "-"
        text = text.removeprefix("sha256:")
        return text if whole else text[:_SHORT]

    present = record.top is None or DataRoot.layer_file(root.layer_dir(record.top)) is not None
    return [
        record.name,
        short(record.digest),
        record.platform or "-",
        short(record.top) if present else "missing",
    ]


def run(args: argparse.Namespace) -> int:
    """Run ``lcow images``.

    Returns:
        :attr:`ExitStatus.OK`.

    Raises:
        NotFound: no such data root.
    """
    path = root_path(args)
    if not root_exists(args):
        raise NotFound(f"{path}: no such data root", subject=str(path))
    root = DataRoot(path)
    records = read_records(root)
    value = [
        {
            "Name": r.name,
            "Digest": r.digest,
            "Manifest": r.manifest,
            "Config": r.config,
            "Platform": r.platform,
            "Layers": list(r.layers),
            "Top": r.top,
            "Present": r.top is None or DataRoot.layer_file(root.layer_dir(r.top)) is not None,
        }
        for r in records
    ]
    rows = [_row(root, r, args.no_trunc) for r in records]
    emit(args, value, format_table(["NAME", "DIGEST", "PLATFORM", "TOP LAYER"], rows))
    return ExitStatus.OK
