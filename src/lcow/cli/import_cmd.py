"""``lcow --root DIR import IMAGE.tar|-``: import an image tarball as a chain of layers.

Reads a ``docker save`` tarball (``manifest.json``; Docker before and after 25) or an OCI image
layout tarball (``oci-layout``, ``index.json``, ``blobs/``), itself plain, gzip or zstd, with
layers stored plain, gzip or zstd (:mod:`lcow.images`). Every manifest, config and blob is checked
against its digest; layer ids are the hex of Docker's chain IDs; layers already present are
skipped; on any failure the layers this import created are removed. Prints the layer ids
bottom-up, one per line, with a summary on stderr; ``--json`` prints the whole result. A progress
bar is drawn on stderr when it is a terminal. Creates the data root if needed.
"""

from __future__ import annotations

import argparse
import sys
from typing import BinaryIO

from lcow.cli._driver import add_json, emit, open_driver
from lcow.cli._output import write_lines
from lcow.cli._progress import byte_progress
from lcow.cli.status import ExitStatus, UsageError
from lcow.images.importer import ImportedLayer, ImportPlan, ImportResult, import_image

__all__ = ["SUMMARY", "add_arguments", "result_json", "run"]

SUMMARY = "import a docker-save or OCI image tarball; prints the layer ids (chain IDs)"

_STDIN = "-"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``lcow import``.

    Args:
        parser: the command's parser.
    """
    parser.add_argument(
        "image", metavar="IMAGE", help="the image tarball (plain/gzip/zstd); '-' reads stdin"
    )
    add_json(parser)


def result_json(result: ImportResult) -> dict[str, object]:
    """The ``--json`` form of an import's result."""
    return {
        "Format": result.format,
        "Images": [
            {
                "Tags": list(image.tags),
                "Config": image.config,
                "Layers": list(image.layer_ids),
                "Top": image.top,
            }
            for image in result.images
        ],
        "Layers": [
            {
                "Id": layer.layer_id,
                "Parent": layer.parent,
                "DiffID": layer.diff_id,
                "ChainID": layer.chain_id,
                "Created": layer.created,
                "Size": layer.size,
                "Compression": layer.compression or None,
            }
            for layer in result.layers
        ],
    }


def _summary(name: str, result: ImportResult) -> list[str]:
    created = len(result.created)
    lines = [
        f"imported {name} ({result.format}): {len(result.layers)} layers, {created} new, "
        f"{len(result.layers) - created} already present"
    ]
    for image in result.images:
        tags = ", ".join(image.tags) or image.config
        lines.append(f"  {tags}: top layer {image.top or '(none)'}")
    return lines


def run(args: argparse.Namespace) -> int:
    """Run ``lcow import``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    source: str | BinaryIO = args.image
    name = args.image
    if args.image == _STDIN:
        if sys.stdin.isatty():
            raise UsageError("no input: give IMAGE or pipe an image tarball into stdin")
        source, name = sys.stdin.buffer, "<stdin>"
    driver = open_driver(args, init=True)
    with byte_progress("import") as bar:
        applied = 0

        def on_plan(plan: ImportPlan) -> None:
            if bar is not None:
                bar.set_total(plan.bytes_to_apply)

        def on_layer(layer: ImportedLayer) -> None:
            nonlocal applied
            applied += 1
            if bar is not None:
                bar.set_description(f"import ({applied} layers done)")

        result = import_image(
            driver,
            source,
            progress=None if bar is None else bar.add,
            on_plan=on_plan,
            on_layer=on_layer,
        )
    emit(args, result_json(result), [layer.layer_id for layer in result.layers])
    if not args.json:
        write_lines(_summary(name, result), sys.stderr)
    return ExitStatus.OK
