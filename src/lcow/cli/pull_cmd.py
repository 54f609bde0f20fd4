"""``lcow --root DIR pull [--platform OS/ARCH] [--plain-http] [--ca-file F] REF``: pull an image.

References are normalised as ``docker pull`` does (``busybox`` is
``docker.io/library/busybox:latest``); credentials come from the Docker client's config
(:mod:`lcow.registry.credentials`). The manifest (for an index: the entry for ``--platform``,
default ``linux/<host arch>``) and the config are fetched and checked first, and only then is the
data root opened (created if needed): a refused login or a missing tag creates nothing. The
layers then land as ``lcow import`` lands them (:mod:`lcow.images.pull`). Prints the layer ids
bottom-up and a summary on stderr; ``--json`` prints the whole result. A progress bar is drawn
on stderr when it is a terminal.

Converted layers published with ``lcow publish`` are looked for first when the reference is a
tag (``--no-converted`` turns that off); a reference pinned by digest uses them only with
``--converted``, since their content is vouched for by the repository's publisher, not by the
digest (docs/registry.md, "Trust").
"""

from __future__ import annotations

import argparse
import sys

from lcow.cli._argtypes import count, positive_int, positive_seconds
from lcow.cli._driver import add_json, emit, open_driver
from lcow.cli._output import write_lines
from lcow.cli._progress import byte_progress
from lcow.cli.import_cmd import result_json
from lcow.cli.status import ExitStatus, UsageError
from lcow.errors import InvalidArgument
from lcow.images.importer import ImportedLayer, ImportPlan
from lcow.images.pull import DEFAULT_PARALLEL, PullResult, land_image
from lcow.registry.client import ClientOptions, RegistryClient
from lcow.registry.credentials import find_credentials
from lcow.registry.reference import parse_reference
from lcow.registry.resolve import host_platform, parse_platform, resolve

__all__ = ["SUMMARY", "add_arguments", "pull_json", "run"]

SUMMARY = "pull an image from a registry; prints the layer ids (chain IDs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``lcow pull``.

    Args:
        parser: the command's parser.
    """
    parser.add_argument("reference", metavar="REF", help="image reference, as docker writes it")
    parser.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", default=None,
                        help="the platform to pick in a multi-platform image "
                        "(default: linux/<this machine's architecture>)")  # fmt: skip
    parser.add_argument("--plain-http", action="store_true",
                        help="talk HTTP, not HTTPS (a local registry)")  # fmt: skip
    parser.add_argument("--ca-file", metavar="F", default=None,
                        help="PEM file of CAs to trust besides the system's")  # fmt: skip
    parser.add_argument("--timeout", metavar="SECONDS", default=30.0,
                        type=positive_seconds,
                        help="give up on a connection or a read idle this long "
                        "(default 30)")  # fmt: skip
    parser.add_argument("--retries", metavar="N", default=4,
                        type=count,
                        help="further attempts on connection errors, timeouts, 5xx and 429 "
                        "(default 4)")  # fmt: skip
    parser.add_argument("--parallel", metavar="N", default=DEFAULT_PARALLEL, type=positive_int,
                        help="layers downloaded and converted at once "
                        f"(default {DEFAULT_PARALLEL})")  # fmt: skip
    converted = parser.add_mutually_exclusive_group()
    converted.add_argument("--no-converted", dest="converted", action="store_false",
                           default=None,
                           help="ignore published converted layers: convert the tar "
                           "layers")  # fmt: skip
    converted.add_argument("--converted", dest="converted", action="store_true",
                           help="use published converted layers even for a reference pinned "
                           "by digest (they are trusted as far as the repository's "
                           "publishers, not the digest)")  # fmt: skip
    add_json(parser)


def pull_json(pulled: PullResult) -> dict[str, object]:
    """The ``--json`` form of a pull's result."""
    record = pulled.record
    return {
        "Name": record.name,
        "Digest": record.digest,
        "Manifest": record.manifest,
        "MediaType": pulled.image.media_type,
        "Platform": record.platform,
        "Config": record.config,
        "Top": record.top,
        "Artifact": pulled.artifact,
        "Layers": [
            {**entry, "Converted": layer.converted}
            for entry, layer in zip(
                result_json(pulled.result)["Layers"],  # type: ignore[call-overload]
                pulled.result.layers,
                strict=True,
            )
        ],
    }


def run(args: argparse.Namespace) -> int:
    """Run ``lcow pull``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    try:
        reference = parse_reference(args.reference)
        platform = parse_platform(args.platform) if args.platform else host_platform()
    except InvalidArgument as exc:
        raise UsageError(str(exc)) from exc
    options = ClientOptions(plain_http=args.plain_http, ca_file=args.ca_file,
                            timeout=args.timeout, retries=args.retries)  # fmt: skip
    credentials = find_credentials(reference.registry)
    with RegistryClient(reference.api_host, reference.registry, reference.repository,
                        credentials=credentials, options=options) as client:  # fmt: skip
        image = resolve(client, reference, platform)
        driver = open_driver(args, init=True)
        with byte_progress(f"pull {reference}") as bar:
            applied = 0

            def on_plan(plan: ImportPlan) -> None:
                if bar is not None:
                    bar.set_total(plan.bytes_to_apply)

            def on_layer(layer: ImportedLayer) -> None:
                nonlocal applied
                applied += 1
                if bar is not None:
                    bar.set_description(f"pull ({applied} layers done)")

            converted = args.converted
            if converted is None:  # the default: a tag, not a digest the user pinned
                converted = reference.digest is None
            pulled = land_image(driver, client, image, parallel=args.parallel,
                                progress=None if bar is None else bar.add,
                                on_plan=on_plan, on_layer=on_layer,
                                converted=converted)  # fmt: skip
    layers = pulled.result.layers
    emit(args, pull_json(pulled), [layer.layer_id for layer in layers])
    if not args.json:
        created = len(pulled.result.created)
        if pulled.artifact is not None:
            write_lines([f"converted layers from artifact {pulled.artifact}"], sys.stderr)
        where = f" ({pulled.record.platform})" if pulled.record.platform else ""
        write_lines(
            [
                f"pulled {pulled.record.name}{where}: {len(layers)} layers, {created} new, "
                f"{len(layers) - created} already present",
                f"  digest {pulled.record.digest}, top layer {pulled.record.top or '(none)'}",
            ],
            sys.stderr,
        )
    return ExitStatus.OK
