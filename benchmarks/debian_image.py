"""The Debian-rootfs benchmark image: built here without the network, pushed with skopeo.

Shared by ``bench_containerd.py`` and ``bench_registry.py``. The image is the four-layer image
of ``tests/containerd/images.py`` with a bigger base: the busybox root filesystem plus this
machine's ``/usr/lib/python3`` and ``/usr/share/doc`` (Debian files), then the three small
layers with whiteouts and opaque directories. The importing script puts the repository's root
and ``src`` on ``sys.path`` first.
"""

from __future__ import annotations

import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from tests.containerd.images import build_image, push_image
from tests.plugin.dockerd import busybox_rootfs

__all__ = ["BASE_TREES", "PushedDebian", "base_rootfs", "push_debian"]

BASE_TREES = ("usr/lib/python3", "usr/share/doc")  # host files below / (no /etc: secrets)
NAME = "lcowbench/debian"


def base_rootfs(path: Path) -> dict[str, int]:
    """Write the busybox root filesystem plus the host trees of :data:`BASE_TREES` to
    ``path`` as one tar; its size and entry count."""
    busybox = busybox_rootfs(path.with_name("busybox.tar"))
    entries = 0

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        nonlocal entries
        if not (info.isreg() or info.isdir() or info.issym() or info.islnk()):
            return None  # sockets, fifos, devices have no place in an image
        entries += 1
        return info

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as out:
        with tarfile.open(busybox) as tf:
            for member in tf:
                out.addfile(member, tf.extractfile(member) if member.isreg() else None)
                entries += 1
        for parent in ("usr", "usr/lib", "usr/share"):
            info = out.gettarinfo(f"/{parent}", arcname=parent)
            out.addfile(info)
            entries += 1
        for tree in BASE_TREES:
            out.add(f"/{tree}", arcname=tree, filter=keep)
    busybox.unlink()
    return {"bytes": path.stat().st_size, "entries": entries}


@dataclass(frozen=True)
class PushedDebian:
    """The image in the registry.

    Attributes:
        reference: ``127.0.0.1:PORT/lcowbench/debian:v1``.
        base: the base layer's uncompressed tar size and entry count.
        gzip_layer_bytes: each layer blob's size.
        diff_ids: each layer's diff ID.
    """

    reference: str
    base: dict[str, int]
    gzip_layer_bytes: list[int]
    diff_ids: list[str]


def push_debian(data: Path, registry: str) -> PushedDebian:
    """Build the image below ``data`` and push it to ``registry`` (``host:port``); the build
    files are removed again (the registry holds the image)."""
    work = data / "image"
    work.mkdir(parents=True)
    base = base_rootfs(data / "base.tar")
    image = build_image(work, base=data / "base.tar")
    (data / "base.tar").unlink()  # the layout holds it (gzip) from now on
    skopeo_tmp = data / "skopeo"
    skopeo_tmp.mkdir(exist_ok=True)
    ref = push_image(image, registry, NAME, skopeo_tmp)
    shutil.rmtree(work)
    return PushedDebian(ref, base, [layer.size for layer in image.layers],
                        [layer.diff_id for layer in image.layers])  # fmt: skip
