"""``lcow vhd2tar``: export a layer image as a tar stream, the Diff of a layer (SPEC §3, §5.3).

``lcow vhd2tar -i IMAGE [-o OUT] [--json] [--no-whiteout-conversion] [--top PATH]``. ``IMAGE`` is
a raw ext4 image, a fixed VHD (``layer.vhd``) or a dynamic VHDX (``sandbox.vhdx``, whose layer
content is ``--top /upper``). The tar goes to standard output unless ``-o`` names a file; a file
is written under a temporary name beside it and renamed on success. Output is written straight
to the descriptor, so file data moves in the kernel (``splice`` to a pipe,
``copy_file_range`` to a file). Overlay whiteouts become AUFS markers unless
``--no-whiteout-conversion``. ``--json`` prints ``{"entries", "bytes", ...}``: on standard error
when the tar goes to standard output, else on standard output.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

from lcow._util.escape import quoted
from lcow.cli._format import format_size
from lcow.cli._output import write_json, write_lines
from lcow.cli.status import ExitStatus, UsageError
from lcow.convert.export import ExportResult, export_layer
from lcow.formats.ext4.reader import Ext4Reader

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = "export a layer image (layer.vhd, sandbox.vhdx, raw ext4) as a tar stream"

_STDOUT = "-"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of ``lcow vhd2tar``.

    Args:
        parser: the command's parser.
    """
    parser.add_argument(
        "-i", "--input", "-input", dest="input", required=True, metavar="IMAGE",
        help="layer image: raw ext4, fixed VHD (layer.vhd) or dynamic VHDX (sandbox.vhdx)",
    )  # fmt: skip
    parser.add_argument(
        "-o", "--output", "-output", dest="output", default=_STDOUT, metavar="OUT",
        help="output tar file ('-' or omitted: standard output)",
    )  # fmt: skip
    parser.add_argument(
        "--no-whiteout-conversion", dest="whiteouts", action="store_false",
        help="keep overlay whiteouts (0/0 character devices, opaque xattrs) as they are",
    )  # fmt: skip
    parser.add_argument(
        "--top", default="/", metavar="PATH",
        help="directory whose contents are the layer (default '/'; '/upper' for a sandbox)",
    )  # fmt: skip
    parser.add_argument(
        "--json", "-json", dest="json", action="store_true",
        help="print a JSON summary (on stderr when the tar goes to stdout)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run ``lcow vhd2tar``.

    Args:
        args: parsed flags (see :func:`add_arguments`).

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    top = os.fsencode(args.top)
    if not top.startswith(b"/"):
        raise UsageError(f"--top: {quoted(args.top)} is not an absolute path inside the image")
    to_stdout = args.output == _STDOUT
    if to_stdout and os.isatty(sys.stdout.fileno()):
        raise UsageError("refusing to write a tar to a terminal: give -o OUT or redirect stdout")
    started = time.monotonic()
    with Ext4Reader.open(args.input) as reader:
        if to_stdout:
            sys.stdout.flush()
            result = export_layer(
                reader, sys.stdout.fileno(), aufs_whiteouts=args.whiteouts, top=top
            )
        else:
            result = _export_to_file(reader, Path(args.output), args.whiteouts, top)
    elapsed = time.monotonic() - started
    summary = {
        "image": args.input,
        "output": None if to_stdout else args.output,
        "entries": result.entries,
        "bytes": result.bytes_written,
        "seconds": round(elapsed, 3),
    }
    stream = sys.stderr if to_stdout else sys.stdout
    if args.json:
        write_json(summary, stream)
    elif not to_stdout:
        write_lines(
            f"{args.output}: {result.entries} entries, {format_size(result.bytes_written)}"
            f" tar from {args.input}, {elapsed:.2f} s",
            stream,
        )
    return ExitStatus.OK


def _export_to_file(reader: Ext4Reader, out: Path, whiteouts: bool, top: bytes) -> ExportResult:
    """Export into a temporary file beside ``out``, then rename it over ``out``."""
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        result = export_layer(reader, fd, aufs_whiteouts=whiteouts, top=top)
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        fd = -1
        os.replace(tmp, out)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return result


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
