"""A read-only overlay union of layer images, read in user space (SPEC §3 Get, §5.4).

Each layer contributes a subtree of its image: the whole filesystem of a ``layer.vhd``, the
``upper/`` directory of a ``sandbox.vhdx``. Lookups follow overlayfs: the nearest layer wins, a
0/0 character device (whiteout) hides the name below it, a directory with
``trusted.overlay.opaque=y`` hides everything below it, and a non-directory hides whatever lower
layers have under its name. Images are opened on first use and directory listings cached.
"""

from __future__ import annotations

import io
import os
import posixpath
import stat
from collections.abc import Callable, Hashable, Mapping
from typing import BinaryIO

from lcow.backends.archive import tar_with_options
from lcow.backends.base import FileInfo, LayerDisk
from lcow.backends.readonly import ReadOnlyWrites
from lcow.backends.resolve import resolve_in_view
from lcow.backends.taroptions import TarOptions
from lcow.errors import InvalidArgument, LimitExceeded, NotFound
from lcow.formats.ext4.layout import ROOT_INO
from lcow.formats.ext4.read_dirs import DirEntry
from lcow.formats.ext4.read_inode import Inode
from lcow.formats.ext4.reader import Ext4Reader, ReadLimits
from lcow.formats.source import open_source
from lcow.formats.whiteouts import is_opaque, is_overlay_whiteout

__all__ = ["UnionView"]

_MAX_SYMLINKS = 40
_LISTING_CACHE = 4096
_INODE_CACHE = 1 << 16
_MAX_DEPTH = ReadLimits().max_depth  # deepest path a lookup follows, as deep as a walk goes


class _Layer:
    """One layer's own content: an image subtree, opened lazily."""

    def __init__(self, disk: LayerDisk) -> None:
        self.disk = disk
        self._reader: Ext4Reader | None = None
        self._top: Inode | None = None
        self._empty = disk.disk is None
        self._listings: dict[int, dict[bytes, DirEntry]] = {}
        self._inodes: dict[int, Inode] = {}
        self._parents: dict[int, int] = {}  # directory -> the parent its '..' was checked against

    def _open(self) -> None:
        if self._reader is not None or self._empty:
            return
        assert self.disk.disk is not None
        reader = Ext4Reader(open_source(self.disk.disk.path), close_source=True)
        top = reader.lookup(b"/")
        if self.disk.disk.writable:  # a sandbox's own content is its upper/ directory
            upper = self.child_of(reader, top, b"upper")
            if upper is None or not upper.is_dir:
                reader.close()
                self._empty = True
                return
            top = upper
        self._reader, self._top = reader, top

    def listing(self, reader: Ext4Reader, inode: Inode) -> dict[bytes, DirEntry]:
        """A directory's entries by name (cached)."""
        entries = self._listings.get(inode.ino)
        if entries is None:
            entries = {e.name: e for e in reader.iterdir(inode)}
            if inode.ino == ROOT_INO and b"lost+found" in entries:
                # Every ext4 has one; an empty one at the image root is not layer content.
                lost = reader.inode(entries[b"lost+found"].ino)
                if lost.is_dir and next(iter(reader.iterdir(lost)), None) is None:
                    del entries[b"lost+found"]
            if len(self._listings) >= _LISTING_CACHE:
                self._listings.clear()
            self._listings[inode.ino] = entries
        return entries

    def child_of(self, reader: Ext4Reader, inode: Inode, name: bytes) -> Inode | None:
        """The inode named ``name`` in directory ``inode``, or ``None``."""
        found = self.listing(reader, inode).get(name)
        if found is None:
            return None
        child = self._inodes.get(found.ino)
        if child is None:
            child = reader.inode(found.ino)
            if len(self._inodes) >= _INODE_CACHE:
                self._inodes.clear()
            self._inodes[found.ino] = child
        return child

    def enter(self, parent: Inode, child: Inode, path: list[bytes]) -> None:
        """Check a step of a lookup into directory ``child`` (see
        :meth:`Ext4Reader.check_subdir`): resolving paths one checked step at a time, the view
        never follows a directory loop or a second name of a directory.

        Raises:
            CorruptImage: a loop or a hard-linked directory, naming the image and the path.
        """
        if self._parents.get(child.ino) == parent.ino:
            return
        assert self._reader is not None
        inner = b"/" + b"/".join(path)
        if self.disk.disk is not None and self.disk.disk.writable:
            inner = b"/upper" + inner
        self._reader.check_subdir(parent, child, path=inner)
        if len(self._parents) >= _INODE_CACHE:
            self._parents.clear()
        self._parents[child.ino] = parent.ino

    def descend(
        self, reader: Ext4Reader, node: Inode, parts: list[bytes]
    ) -> tuple[Inode | None, bool]:
        """Follow ``parts`` down this layer from its top ``node``.

        Returns:
            The inode reached (``None`` when the path is missing or hidden here) and whether
            the layers below are hidden: by an opaque directory on the way, a whiteout, or a
            non-directory where the path needs a directory.
        """
        stop_after = False
        for k, part in enumerate(parts):
            if not node.is_dir:
                return None, True  # a non-directory in this layer hides the path below
            if k and self.is_opaque(node):
                stop_after = True
            child = self.child_of(reader, node, part)
            if child is None:
                return None, stop_after
            if _is_whiteout(child):
                return None, True
            if child.is_dir:
                self.enter(node, child, parts[: k + 1])
            node = child
        return node, stop_after

    @property
    def reader(self) -> Ext4Reader | None:
        self._open()
        return self._reader

    def top(self) -> Inode | None:
        self._open()
        return self._top

    def names(self, inode: Inode) -> dict[bytes, DirEntry]:
        """Entries of a directory of this layer."""
        assert self._reader is not None
        return self.listing(self._reader, inode)

    def is_opaque(self, inode: Inode) -> bool:
        assert self._reader is not None
        return inode.is_dir and is_opaque(self._reader.xattrs(inode))

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._listings.clear()
        self._inodes.clear()
        self._parents.clear()


def _is_whiteout(inode: Inode) -> bool:
    return is_overlay_whiteout(inode.mode, inode.rdev)


def _split(path: str) -> list[bytes]:
    norm = posixpath.normpath("/" + path)
    return [os.fsencode(p) for p in norm.split("/") if p]


class UnionView(ReadOnlyWrites):
    """The ContainerFS of the userspace backend: read operations over the union."""

    def __init__(self, layer_id: str, disks: list[LayerDisk]) -> None:
        self.layer_id = layer_id
        self._layers = [_Layer(d) for d in disks]

    @property
    def path(self) -> str:
        """LCOW's in-VM union path; the userspace view has no host directory."""
        return f"/tmp/{self.layer_id}-mount"

    # -- resolution --------------------------------------------------------------------------

    def _candidates(self, parts: list[bytes]) -> list[tuple[_Layer, Inode]]:
        """Layers holding ``parts``, nearest first: one entry for a non-directory, every
        contributing layer for a directory (stopping at an opaque one)."""
        found: list[tuple[_Layer, Inode]] = []
        if len(parts) > _MAX_DEPTH:
            shown = os.fsdecode(b"/" + b"/".join(parts[:_MAX_DEPTH]))
            raise LimitExceeded(
                f"{self.layer_id}: {shown}/...: nesting deeper than {_MAX_DEPTH} directories",
                subject=shown,
            )
        for layer in self._layers:
            reader = layer.reader
            top = layer.top()
            if reader is None or top is None:
                continue
            node, stop_after = layer.descend(reader, top, parts)
            if node is None:
                if stop_after:
                    return found
                continue
            if not node.is_dir:
                return found or [(layer, node)]
            if found and not found[0][1].is_dir:
                return found
            found.append((layer, node))
            if stop_after or (parts and layer.is_opaque(node)):
                return found
        return found

    def _lookup(self, path: str) -> tuple[_Layer, Inode, list[bytes]]:
        parts = _split(path)
        found = self._candidates(parts)
        if not found:
            if not parts:  # an empty view still has a root: 0755, 0:0
                raise _EmptyRoot
            raise NotFound(f"{path}: no such file or directory", subject=path)
        layer, inode = found[0]
        return layer, inode, parts

    def _info(self, name: str, inode: Inode) -> FileInfo:
        return FileInfo(
            name=name,
            size=inode.size,
            mode=inode.mode,
            mtime_ns=inode.mtime_ns,
            uid=inode.uid,
            gid=inode.gid,
            nlink=inode.nlink,
            rdev=inode.rdev,
            ino=inode.ino,
        )

    # -- read operations ---------------------------------------------------------------------

    def lstat(self, path: str) -> FileInfo:
        """Information about ``path`` itself."""
        try:
            _, inode, parts = self._lookup(path)
        except _EmptyRoot:
            return FileInfo(
                name="/", size=4096, mode=stat.S_IFDIR | 0o755, mtime_ns=0, uid=0, gid=0, nlink=2
            )
        return self._info(os.fsdecode(parts[-1]) if parts else "/", inode)

    def stat(self, path: str) -> FileInfo:
        """Information about ``path`` with symlinks followed inside the view."""
        return self.lstat(self.resolve_path(path))

    def readlink(self, path: str) -> str:
        """A symlink's target."""
        layer, inode, _ = self._lookup(path)
        if not inode.is_symlink:
            raise InvalidArgument(f"{path}: not a symbolic link", subject=path)
        assert layer.reader is not None
        return os.fsdecode(layer.reader.readlink(inode))

    def readdir(self, path: str) -> list[FileInfo]:
        """Entries of a directory, merged over the layers, sorted by name."""
        parts = _split(path)
        found = self._candidates(parts)
        if not found:
            if not parts:
                return []
            raise NotFound(f"{path}: no such file or directory", subject=path)
        if not found[0][1].is_dir:
            raise InvalidArgument(f"{path}: not a directory", subject=path)
        hidden: set[bytes] = set()
        result: dict[bytes, FileInfo] = {}
        for layer, inode in found:
            reader = layer.reader
            assert reader is not None
            for name, entry in layer.names(inode).items():
                if name in hidden or name in result:
                    continue
                child = reader.inode(entry.ino)
                hidden.add(name)
                if _is_whiteout(child):
                    continue
                result[name] = self._info(os.fsdecode(name), child)
        return [result[name] for name in sorted(result)]

    def open(self, path: str) -> BinaryIO:
        """A readable binary file object over a regular file."""
        layer, inode, _ = self._lookup(self.resolve_path(path))
        if not inode.is_reg:
            raise InvalidArgument(f"{path}: not a regular file", subject=path)
        assert layer.reader is not None
        return io.BufferedReader(layer.reader.open_file(inode))

    def readfile(self, path: str) -> bytes:
        """A whole regular file."""
        with self.open(path) as fh:
            return fh.read()

    def resolve_path(self, path: str) -> str:
        """Resolve every symlink in ``path``; absolute targets and ``..`` stay inside the view."""
        return resolve_in_view(path, self.lstat, self.readlink)

    def archive_path(
        self, path: str, out: Callable[[bytes], object], options: TarOptions | None = None
    ) -> None:
        """Write a tar of ``path`` as Docker's ``TarWithOptions`` (see
        :func:`~lcow.backends.archive.tar_with_options`), xattrs included."""

        def xattrs(entry: str, info: FileInfo) -> Mapping[bytes, bytes]:
            try:
                layer, inode, _ = self._lookup(entry)
            except _EmptyRoot:
                return {}
            assert layer.reader is not None
            return layer.reader.xattrs(inode)

        def link_key(entry: str, info: FileInfo) -> Hashable:
            layer, inode, _ = self._lookup(entry)  # inode numbers are per layer image
            return id(layer), inode.ino

        tar_with_options(self, path, out, options, xattrs=xattrs, link_key=link_key)

    def close(self) -> None:
        """Close every opened image."""
        for layer in self._layers:
            layer.close()


class _EmptyRoot(Exception):
    """Internal: the view has no content at all (its root is synthesised)."""
