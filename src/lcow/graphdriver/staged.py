"""Layers built out of sight: a new layer's folder made under a hidden name, filled, and
published whole by one rename (:meth:`lcow.graphdriver.driver.Driver.stage`).

Docker's graph-driver API makes a layer in two visible steps, Create (an empty folder) and then
ApplyDiff. For a layer named by its chain ID (an image import or a pull) that first step is a
lie a kill can leave behind: a layer that exists, under the name of content it does not hold.
A staged layer exists for nobody until it is whole; a kill leaves a hidden folder Cleanup sweeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["StagedLayer"]


@dataclass(frozen=True)
class StagedLayer:
    """A layer being built.

    Attributes:
        layer_id: the id it will have.
        parent: the layer it will sit on (``None``: a base layer); it must exist when the
            staged layer is published.
        folder: the hidden folder in the data root it is built in.
    """

    layer_id: str
    parent: str | None
    folder: Path
