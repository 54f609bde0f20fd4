"""The images a data root holds by name: ``<root>/.images.json``.

A pull records its image here once every layer is in place: the name it was pulled as
(normalised, ``127.0.0.1:5000/app:1``), the digest that name resolved to, the image manifest's
digest, the config digest (Docker's image ID) and the layer ids bottom-up. The file starts with
a dot, so no layer id can be mistaken for it (ids start with a letter or digit), and it is
replaced whole, atomically and durably, under the data root's lock, so concurrent pulls of
different names keep each other's records. Removing a layer does not edit the file:
``lcow images`` shows a record whose top layer is gone as ``missing``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from lcow._util.atomic import atomic_output
from lcow.storage.dataroot import DataRoot
from lcow.storage.locks import RootLock

__all__ = ["IMAGES_FILE", "ImageRecord", "read_records", "record_image"]

log = logging.getLogger(__name__)

IMAGES_FILE = ".images.json"
_VERSION = 1


@dataclass(frozen=True)
class ImageRecord:
    """One named image of the data root.

    Attributes:
        name: the normalised reference it was pulled as.
        digest: what the name resolved to (an index's digest for a multi-platform image).
        manifest: the image manifest's digest.
        config: the config's digest (Docker's image ID).
        layers: the layer ids, bottom first (the last is the image's top layer).
        platform: ``os/arch[/variant]`` chosen in an index, ``None`` for a single manifest.
        source: where it came from (``registry``).
    """

    name: str
    digest: str
    manifest: str
    config: str
    layers: tuple[str, ...]
    platform: str | None
    source: str

    @property
    def top(self) -> str | None:
        """The top layer id (``None`` for an image without layers)."""
        return self.layers[-1] if self.layers else None


def _parse(value: Any) -> ImageRecord | None:
    if not isinstance(value, Mapping):
        return None
    try:
        layers = value["layers"]
        if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
            return None
        fields = {k: value[k] for k in ("name", "digest", "manifest", "config", "source")}
        if not all(isinstance(v, str) for v in fields.values()):
            return None
        platform = value.get("platform")
        return ImageRecord(layers=tuple(layers), platform=platform if isinstance(platform, str)
                           else None, **fields)  # fmt: skip
    except KeyError:
        return None


def _load(root: DataRoot) -> dict[str, ImageRecord]:
    path = root.root / IMAGES_FILE
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as exc:
        log.warning("%s: unreadable image records (%s); starting a new file", path, exc)
        return {}
    images = document.get("images") if isinstance(document, Mapping) else None
    records = {}
    for value in images if isinstance(images, list) else []:
        record = _parse(value)
        if record is None:
            log.warning("%s: skipping a malformed image record", path)
            continue
        records[record.name] = record
    return records


def read_records(root: DataRoot) -> list[ImageRecord]:
    """The recorded images, sorted by name (none when the file is absent)."""
    return sorted(_load(root).values(), key=lambda r: r.name)


def record_image(root: DataRoot, record: ImageRecord) -> None:
    """Add or replace the record of ``record.name``, atomically and durably."""
    with RootLock(root.root).hold():
        records = _load(root)
        records[record.name] = record
        document = {
            "version": _VERSION,
            "images": [asdict(r) for r in sorted(records.values(), key=lambda r: r.name)],
        }
        with atomic_output(root.root / IMAGES_FILE, mode=0o600, fsync=True) as fd:
            os.write(fd, json.dumps(document, indent=1, sort_keys=True).encode())
