"""The inputs of a crash campaign: ApplyDiff tars and a three-layer ``docker save`` image, and
the manifest digest that compares a tar with the layer exported from it."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["Fixtures", "ImageLayer", "make_fixtures", "tar_manifest", "write_layer_tar"]


def _add(
    tar: tarfile.TarFile,
    name: str,
    kind: bytes = tarfile.REGTYPE,
    data: bytes = b"",
    *,
    target: str = "",
    mode: int = 0o644,
    mtime: int = 1_600_000_000,
) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.linkname = kind, mode, mtime, target
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if info.size else None)


def write_layer_tar(path: Path, seed: int, *, dirs: int, files: int) -> Path:
    """A layer tar of ``dirs`` directories of ``files`` files (0 B to 16 KiB, random bytes), a
    hard link and a symlink per directory, a whiteout and an opaque directory."""
    rng = random.Random(seed)
    top = f"s{seed}"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, top, tarfile.DIRTYPE, mode=0o755)
        for d in range(dirs):
            folder = f"{top}/d{d:03d}"
            _add(tar, folder, tarfile.DIRTYPE, mode=0o755, mtime=1_600_000_000 + d)
            for f in range(files):
                size = rng.choice((0, 9, 200, 1500, 4096, 5000, 16384))
                _add(tar, f"{folder}/f{f:03d}", data=rng.randbytes(size), mtime=1_600_000_100 + f)
            _add(tar, f"{folder}/hard", tarfile.LNKTYPE, target=f"{folder}/f001")
            _add(tar, f"{folder}/sym", tarfile.SYMTYPE, target="../d000/f000", mode=0o777)
        _add(tar, "opaque", tarfile.DIRTYPE, mode=0o755)
        _add(tar, "opaque/.wh..wh..opq")
        _add(tar, "opaque/kept", data=f"layer {seed}\n".encode())
        _add(tar, f".wh.gone-{seed}")
    return path


def tar_manifest(stream: IO[bytes]) -> str:
    """A digest of a layer tar's content: names, types, modes, mtimes, owners, file bytes (hard
    links as their target's bytes), link targets, whiteouts (by name only). Equal for a tar and
    the layer ``Driver.diff`` exports after ApplyDiff of it (the empty ``lost+found`` left
    out)."""
    entries: dict[str, str] = {}
    content: dict[str, str] = {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            name = member.name.lstrip("/").removeprefix("./").rstrip("/")
            if not name or name == ".":
                continue
            meta = f"{member.mode & 0o7777:o}:{member.uid}:{member.gid}:{int(member.mtime)}"
            if name.rsplit("/", 1)[-1].startswith(".wh."):
                entries[name] = "w"  # a whiteout's own metadata is not kept (overlay form)
            elif member.isreg():
                reader = tar.extractfile(member)
                digest = hashlib.sha256(reader.read() if reader else b"").hexdigest()
                content[name] = digest
                entries[name] = f"f:{meta}:{digest}"
            elif member.islnk():
                target = member.linkname.lstrip("/").removeprefix("./")
                entries[name] = f"h:{content.get(target, '?' + target)}"  # shares the inode
            elif member.isdir():
                entries[name] = f"d:{meta}"
            elif member.issym():
                entries[name] = f"l:{member.linkname}"
            else:
                entries[name] = f"{member.type.decode()}:{meta}:{member.devmajor}:{member.devminor}"
    if entries.get("lost+found", "").startswith("d:") and not any(
        n.startswith("lost+found/") for n in entries
    ):
        del entries["lost+found"]  # an exported image's own empty lost+found
    text = json.dumps(sorted(entries.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _manifest_of_file(path: Path) -> str:
    with open(path, "rb") as f:
        return tar_manifest(f)


@dataclass(frozen=True)
class ImageLayer:
    """One layer of the fixture image: its id (chain ID hex), parent and tar's manifest."""

    layer_id: str
    parent: str | None
    manifest: str


@dataclass(frozen=True)
class Fixtures:
    """Inputs of a campaign, written once.

    Attributes:
        tars: the ApplyDiff tars (path → manifest digest).
        image: a three-layer ``docker save`` tarball (the middle layer stored gzip).
        image_gz: the same tarball gzip-compressed (import spools it to an anonymous file).
        image_layers: its layers bottom-up.
    """

    tars: dict[str, str]
    image: Path
    image_gz: Path
    image_layers: tuple[ImageLayer, ...]


def make_fixtures(folder: Path, *, scale: float = 1.0) -> Fixtures:
    """Write the tars and the image under ``folder``. ``scale`` 1.0: ApplyDiff tars of ~5.7 MB
    and 1,265 entries (image layers a third of that); 0.5 for quick runs."""
    from lcow.images.chainid import chain_id, layer_id

    folder.mkdir(parents=True, exist_ok=True)
    dirs = max(2, round(20 * scale))
    tars = {}
    for seed in (1, 2):
        path = write_layer_tar(folder / f"layer-{seed}.tar", seed, dirs=dirs, files=60)
        tars[str(path)] = _manifest_of_file(path)
    blobs: list[tuple[str, bytes, str]] = []  # (member, stored bytes, diff id)
    layers: list[ImageLayer] = []
    parent_chain: str | None = None
    parent: str | None = None
    for index, seed in enumerate((11, 12, 13)):
        path = write_layer_tar(folder / f"image-{seed}.tar", seed, dirs=max(2, dirs // 3), files=60)
        raw = path.read_bytes()
        diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
        stored = gzip.compress(raw, compresslevel=1, mtime=0) if index == 1 else raw
        blobs.append((f"{hashlib.sha256(stored).hexdigest()}/layer.tar", stored, diff_id))
        chain = chain_id(parent_chain, diff_id)
        lid = layer_id(chain)
        layers.append(ImageLayer(lid, parent, _manifest_of_file(path)))
        parent_chain, parent = chain, lid
        path.unlink()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [d for _, _, d in blobs]},
        }
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": ["crash:1"], "Layers": [m for m, _, _ in blobs]}]
    ).encode()
    image = folder / "image.tar"
    with tarfile.open(image, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, config_name, data=config)
        for member, stored, _ in blobs:
            _add(tar, member.split("/")[0], tarfile.DIRTYPE, mode=0o755)
            _add(tar, member, data=stored)
        _add(tar, "manifest.json", data=manifest)
    image_gz = folder / "image.tar.gz"
    image_gz.write_bytes(gzip.compress(image.read_bytes(), compresslevel=1, mtime=0))
    return Fixtures(tars, image, image_gz, tuple(layers))
