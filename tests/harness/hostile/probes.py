"""What a check sees of a finished layer: a :class:`Probe` over lcow's ext4 reader
(:class:`ReaderProbe`) or over a kernel mount (:class:`MountProbe`, the independent oracle)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import NamedTuple, Protocol

from lcow.errors import NotFound
from tests.harness.hostile.tarbuild import MiB

__all__ = ["MountProbe", "Node", "Probe", "ReaderProbe"]


class Node(NamedTuple):
    """One path of a finished layer, as ``lstat`` and ``getxattr`` would show it."""

    mode: int
    size: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    ino: int
    mtime_ns: int
    target: bytes | None
    xattrs: dict[bytes, bytes]


class Probe(Protocol):
    """Read access to a finished layer (paths are absolute bytes, symlinks not followed)."""

    def node(self, path: bytes) -> Node | None:
        """The entry at ``path``, ``None`` if it does not exist."""

    def names(self, path: bytes) -> list[bytes]:
        """Sorted names in the directory at ``path``."""

    def read(self, path: bytes, limit: int = MiB) -> bytes:
        """Up to ``limit`` bytes of the regular file at ``path``."""

    def count(self, path: bytes) -> int:
        """Entries in the directory at ``path`` (cheaper than :meth:`names` for huge ones)."""


class ReaderProbe:
    """A :class:`Probe` over lcow's own ext4 reader."""

    def __init__(self, reader: object) -> None:
        from lcow.formats.ext4.reader import Ext4Reader

        assert isinstance(reader, Ext4Reader)
        self.reader = reader

    def node(self, path: bytes) -> Node | None:
        try:
            inode = self.reader.lookup(path)
        except NotFound:
            return None
        entry = self.reader.entry(inode, path)
        return Node(
            mode=entry.mode,
            size=entry.size,
            nlink=entry.nlink,
            uid=entry.uid,
            gid=entry.gid,
            rdev=entry.rdev,
            ino=entry.ino,
            mtime_ns=entry.mtime_ns,
            target=entry.link_target,
            xattrs=entry.xattrs,
        )

    def names(self, path: bytes) -> list[bytes]:
        inode = self.reader.lookup(path)
        return [e.name for e in self.reader.listdir(inode, path=path)]

    def read(self, path: bytes, limit: int = MiB) -> bytes:
        inode = self.reader.lookup(path)
        with self.reader.open_file(inode, path=path) as fh:
            return bytes(fh.read(limit))

    def count(self, path: bytes) -> int:
        inode = self.reader.lookup(path)
        return sum(1 for _ in self.reader.iterdir(inode, path=path))


class MountProbe:
    """A :class:`Probe` over a kernel mount of the layer (the independent oracle)."""

    def __init__(self, mountpoint: Path) -> None:
        self.root = os.fsencode(mountpoint)

    def _host(self, path: bytes) -> bytes:
        return self.root + b"/" + path.lstrip(b"/")

    def node(self, path: bytes) -> Node | None:
        host = self._host(path)
        try:
            st = os.lstat(host)
        except FileNotFoundError:
            return None
        xattrs = {}
        for name in os.listxattr(host, follow_symlinks=False):
            xattrs[os.fsencode(name)] = os.getxattr(host, name, follow_symlinks=False)
        return Node(
            mode=st.st_mode,
            size=st.st_size,
            nlink=st.st_nlink,
            uid=st.st_uid,
            gid=st.st_gid,
            rdev=st.st_rdev,
            ino=st.st_ino,
            mtime_ns=st.st_mtime_ns,
            target=os.readlink(host) if stat.S_ISLNK(st.st_mode) else None,
            xattrs=xattrs,
        )

    def names(self, path: bytes) -> list[bytes]:
        return sorted(os.listdir(self._host(path)))

    def read(self, path: bytes, limit: int = MiB) -> bytes:
        with open(self._host(path), "rb") as fh:
            return fh.read(limit)

    def count(self, path: bytes) -> int:
        with os.scandir(self._host(path)) as it:
            return sum(1 for _ in it)
