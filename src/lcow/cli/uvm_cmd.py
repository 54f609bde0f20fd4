"""``lcow uvm build``: the vm backend's kernel and initramfs (SPEC §2 ``lcow.kirdpath``).

Downloads Debian's cloud kernel package (not installed on the host), compiles the guest agent
and assembles the initramfs into the kirdpath: ``--out DIR``, else ``-o lcow.kirdpath=DIR``,
else ``$LCOW_KIRDPATH``, else ``/var/lib/lcow/uvm`` (where the vm backend looks when no
kirdpath is given). File names follow ``-o lcow.kernel=`` / ``-o lcow.initrd=``. Idempotent:
up-to-date assets are left alone (``--force`` rebuilds).
"""

from __future__ import annotations

import argparse
import sys

from lcow._util.escape import quoted
from lcow.cli._driver import add_json, emit
from lcow.cli._output import write_lines
from lcow.cli.status import ExitStatus, UsageError

__all__ = ["SUMMARY", "add_arguments", "run"]

SUMMARY = "utility VM assets for the vm backend: 'uvm build' makes the kernel and initramfs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``lcow uvm``."""
    parser.add_argument("action", choices=["build"], help="what to do: build")
    parser.add_argument("--out", metavar="DIR", default=None, help="the kirdpath to fill")
    parser.add_argument("--deb", metavar="FILE", default=None, help="a kernel .deb to use")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    add_json(parser)


def _option(args: argparse.Namespace, key: str) -> str | None:
    for item in reversed(args.driver_options):
        name, _, value = item.partition("=")
        if name.strip().lower() == key and value:
            return str(value)
    return None


def run(args: argparse.Namespace) -> int:
    """Run ``lcow uvm build``."""
    from lcow.backends.vm.assets import build_assets, default_kirdpath

    if args.action != "build":
        raise UsageError(f"unknown action {quoted(args.action)}")
    out = args.out or _option(args, "lcow.kirdpath") or default_kirdpath()
    assets = build_assets(
        out,
        _option(args, "lcow.kernel") or "bootx64.efi",
        _option(args, "lcow.initrd") or "initrd.img",
        deb=args.deb,
        force=args.force,
        progress=lambda line: write_lines(f"lcow uvm: {line}", sys.stderr),
    )
    emit(args, {"Kernel": str(assets.kernel), "Initrd": str(assets.initrd)},
         [str(assets.kernel), str(assets.initrd)])  # fmt: skip
    return ExitStatus.OK
