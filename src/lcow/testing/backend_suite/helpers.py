"""What the conformance cases build inputs with and look at results through: layer tars, the
unpack size, leftovers, a layer folder's names and modes, ``layerchain.json`` as LCOW writes
it, a view's names and files, the disks' formats (read with lcow's own readers)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lcow.formats.ext4.reader import Ext4Reader
from lcow.formats.source import open_source
from lcow.formats.vhd.footer import FOOTER_SIZE, read_footer
from lcow.formats.vhd.vhdx import VhdxImage
from lcow.testing.backend_suite.spec import OWN_METADATA, REMOVING

if TYPE_CHECKING:
    from lcow.graphdriver.driver import Driver

__all__ = [
    "chain_bytes",
    "check_layer_vhd",
    "layer_listing",
    "layer_tar",
    "leftovers",
    "mode_of",
    "pipe_feeder",
    "raises",
    "read_view_file",
    "sandbox_root_names",
    "sha256_of",
    "unpack_size",
    "vhdx_virtual_size",
    "view_names",
    "visible_names",
]


def layer_tar(
    files: dict[str, bytes | None],
    *,
    whiteouts: Sequence[str] = (),
    symlinks: dict[str, str] | None = None,
    hardlinks: dict[str, str] | None = None,
    mtime: int = 1_600_000_000,
) -> bytes:
    """A PAX layer tar: ``files`` maps paths to content (``None`` = directory, 0755), then
    symlinks, hard links (``name -> target``) and AUFS whiteouts (``.wh.<name>`` markers)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.mode, info.size = 0o644, len(data)
                tar.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, mtime
            tar.addfile(info)
        for name, target in (hardlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = tarfile.LNKTYPE, target, mtime
            tar.addfile(info)
        for name in whiteouts:
            parent, base = os.path.split(name)
            info = tarfile.TarInfo(os.path.join(parent, ".wh." + base))
            info.mtime = mtime
            tar.addfile(info, io.BytesIO(b""))
    return buf.getvalue()


def unpack_size(data: bytes) -> int:
    """moby's unpack size: the sum of the size field of every tar entry (SPEC §5.8)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return sum(member.size for member in tar.getmembers())


def leftovers(root: Path) -> list[str]:
    """Temporaries (``*.tmp-*``) and ``-removing`` folders anywhere below ``root``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            if ".tmp-" in name or name.endswith(REMOVING):
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def layer_listing(folder: Path) -> set[str]:
    """A layer folder's names, lcow's own metadata file left out."""
    return set(os.listdir(folder)) - OWN_METADATA


def visible_names(folder: Path) -> list[str]:
    """Names in a folder, dot files (lcow's lock, temporaries) left out."""
    return sorted(n for n in os.listdir(folder) if not n.startswith("."))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def chain_bytes(folders: Sequence[Path]) -> bytes:
    """``layerchain.json`` as LCOW writes it: compact, no newline, ``null`` for a base."""
    value = [str(f) for f in folders] if folders else None
    return json.dumps(value, separators=(",", ":")).encode()


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def view_names(driver: Driver, layer_id: str, path: str = "/") -> list[str]:
    """Names in a directory of the view; the image's empty root ``lost+found`` (shown by a
    host-mounted single layer) is not content and is left out, as graphtest's readDir does."""
    view = driver.get(layer_id)
    try:
        names = [i.name for i in view.readdir(path)]
    finally:
        driver.put(layer_id)
    if path.strip("/") == "":
        names = [n for n in names if n != "lost+found"]
    return names


def read_view_file(driver: Driver, layer_id: str, path: str) -> bytes:
    view = driver.get(layer_id)
    try:
        return view.readfile(path)
    finally:
        driver.put(layer_id)


def raises(kind: type[BaseException], call: Callable[[], object]) -> BaseException:
    try:
        call()
    except kind as exc:
        return exc
    raise AssertionError(f"expected {kind.__name__}, nothing was raised")


def vhdx_virtual_size(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    with VhdxImage(fd, name=str(path), owns_fd=True) as image:
        return image.size


def sandbox_root_names(path: Path) -> list[bytes]:
    """Names in the root directory of the ext4 inside a sandbox."""
    with Ext4Reader(open_source(path), close_source=True) as reader:
        return sorted(e.name for e in reader.iterdir(reader.lookup(b"/")))


def check_layer_vhd(path: Path) -> None:
    footer = read_footer(path)
    assert footer is not None, f"{path}: no valid VHD footer"
    assert footer.disk_type == 2, f"{path}: footer disk type {footer.disk_type}, not fixed"
    assert footer.current_size == path.stat().st_size - FOOTER_SIZE
    assert footer.original_size == footer.current_size


@contextlib.contextmanager
def pipe_feeder(data: bytes) -> Iterator[tuple[int, list[int]]]:
    """A pipe whose write end a thread fills with ``data``; yields (read fd, [bytes written])."""
    read_fd, write_fd = os.pipe()
    written = [0]

    def feed() -> None:
        try:
            view = memoryview(data)
            while view:
                n = os.write(write_fd, view)
                written[0] += n
                view = view[n:]
        except BrokenPipeError:
            pass
        finally:
            os.close(write_fd)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    try:
        yield read_fd, written
    finally:
        os.close(read_fd)
        thread.join(10)
