"""``lcow --root DIR publish [--plain-http] [--ca-file F] REF``: share an image's converted layers.

The image must be one this data root pulled (``lcow images`` lists them); its ``layer.vhd``
files are pushed to the image's repository as an OCI artifact referring to the image manifest
(:mod:`lcow.images.publish`), so that other hosts' ``lcow pull`` can download them instead of
converting the tars. Credentials come from the Docker client's config, as for ``pull``; the
token asked for has the ``pull,push`` scope. Prints the artifact's digest; ``--json`` prints
the whole result.
"""

from __future__ import annotations

import argparse
import sys

from lcow.cli._argtypes import count, positive_seconds
from lcow.cli._driver import add_json, emit, open_driver
from lcow.cli._output import write_lines
from lcow.cli.status import ExitStatus, UsageError
from lcow.errors import InvalidArgument, NotFound
from lcow.images.publish import PublishResult, publish_image
from lcow.images.store import read_records
from lcow.registry.client import ClientOptions, RegistryClient
from lcow.registry.credentials import find_credentials
from lcow.registry.reference import parse_reference

__all__ = ["SUMMARY", "add_arguments", "publish_json", "run"]

SUMMARY = "push a pulled image's converted layers to its repository, for other hosts' pulls"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``lcow publish``.

    Args:
        parser: the command's parser.
    """
    parser.add_argument("reference", metavar="REF",
                        help="the image, as it was pulled (see 'lcow images')")  # fmt: skip
    parser.add_argument("--plain-http", action="store_true",
                        help="talk HTTP, not HTTPS (a local registry)")  # fmt: skip
    parser.add_argument("--ca-file", metavar="F", default=None,
                        help="PEM file of CAs to trust besides the system's")  # fmt: skip
    parser.add_argument("--timeout", metavar="SECONDS", default=30.0, type=positive_seconds,
                        help="give up on a connection or a read idle this long "
                        "(default 30)")  # fmt: skip
    parser.add_argument("--retries", metavar="N", default=4, type=count,
                        help="further attempts on connection errors, timeouts, 5xx and 429 "
                        "(default 4)")  # fmt: skip
    add_json(parser)


def publish_json(result: PublishResult) -> dict[str, object]:
    """The ``--json`` form of a publish's result."""
    return {
        "Artifact": result.artifact,
        "Subject": result.subject,
        "Index": result.index,
        "Layers": [
            {
                "Id": layer.layer_id,
                "Digest": layer.layer.digest,
                "Size": layer.layer.size,
                "MediaType": layer.layer.media_type,
                "ImageDigest": layer.layer.image_digest,
                "ImageSize": layer.layer.image_size,
                "DiffID": layer.layer.diff_id,
                "ChainID": layer.layer.chain_id,
                "RootHash": layer.layer.root_hash,
                "Uploaded": layer.uploaded,
            }
            for layer in result.layers
        ],
    }


def run(args: argparse.Namespace) -> int:
    """Run ``lcow publish``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    try:
        reference = parse_reference(args.reference)
    except InvalidArgument as exc:
        raise UsageError(str(exc)) from exc
    driver = open_driver(args)
    records = {record.name: record for record in read_records(driver.root)}
    record = records.get(str(reference))
    if record is None:
        raise NotFound(f"{reference}: no such image in {driver.root.root} ('lcow images' lists "
                       "the images pulled there)", subject=str(reference))  # fmt: skip
    options = ClientOptions(plain_http=args.plain_http, ca_file=args.ca_file,
                            timeout=args.timeout, retries=args.retries)  # fmt: skip
    credentials = find_credentials(reference.registry)
    with RegistryClient(reference.api_host, reference.registry, reference.repository,
                        credentials=credentials, options=options, push=True) as client:  # fmt: skip
        result = publish_image(driver, client, record)
    emit(args, publish_json(result), [result.artifact])
    if not args.json:
        uploaded = sum(layer.uploaded for layer in result.layers)
        write_lines(
            [
                f"published {record.name}: {len(result.layers)} converted layers "
                f"({uploaded} uploaded), artifact {result.artifact}",
                f"  subject {result.subject}, listed by {result.index}",
            ],
            sys.stderr,
        )
    return ExitStatus.OK
