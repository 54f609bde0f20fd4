"""Image import: ``docker save`` and OCI image-layout tarballs into a data root (issue 4 item 7).

* :func:`import_image` — verify and import every layer, named by Docker's chain IDs.
* :func:`chain_ids` — Docker's chain IDs of a list of diff IDs.
* errors: :class:`ImageError` and its kinds (all ``InvalidArgument``).

Layering: ``images`` uses ``graphdriver`` (a driver instance is passed in), ``storage`` and
``errors``; the CLI and the plugin use ``images``.
"""

from __future__ import annotations

from lcow.images.chainid import chain_id, chain_ids, layer_id
from lcow.images.errors import DigestMismatch, ImageError, MissingBlob, UnsafeMember
from lcow.images.importer import (
    ImportedImage,
    ImportedLayer,
    ImportPlan,
    ImportResult,
    import_image,
    plan_import,
    run_import,
)

__all__ = [
    "DigestMismatch",
    "ImageError",
    "ImportPlan",
    "ImportResult",
    "ImportedImage",
    "ImportedLayer",
    "MissingBlob",
    "UnsafeMember",
    "chain_id",
    "chain_ids",
    "import_image",
    "layer_id",
    "plan_import",
    "run_import",
]
