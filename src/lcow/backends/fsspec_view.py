"""An fsspec file system over a layer view, so fsspec-aware tools can read a layer (issue 4).

``ViewFileSystem(view)`` exposes any :class:`~lcow.backends.base.ContainerFS` (what
``Driver.get`` returns) read-only: ``ls``, ``info``, ``open`` for reading, ``cat``, ``find``,
``walk``, ``glob`` … Paths are absolute inside the view. Writes raise ``NotSupported`` for the
userspace backend, as the view itself does.
"""

from __future__ import annotations

import posixpath
import stat
from typing import Any

from fsspec.spec import AbstractFileSystem

from lcow.backends.base import ContainerFS, FileInfo
from lcow.errors import NotSupported

__all__ = ["ViewFileSystem"]


def _type(info: FileInfo) -> str:
    if stat.S_ISDIR(info.mode):
        return "directory"
    if stat.S_ISREG(info.mode):
        return "file"
    return "other"


class ViewFileSystem(AbstractFileSystem):  # type: ignore[misc]
    """Read-only fsspec file system backed by a layer view.

    Args:
        view: the view, from ``Driver.get``; the caller keeps its Get/Put pairing.
    """

    protocol = "lcow"
    root_marker = "/"
    cachable = False  # one instance per view, never shared through fsspec's cache

    def __init__(self, view: ContainerFS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.view = view

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        if path.startswith("lcow://"):
            path = path[len("lcow://") :]
        return posixpath.normpath("/" + path.lstrip("/"))

    def _entry(self, path: str, info: FileInfo) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": path,
            "size": info.size,
            "type": _type(info),
            "mode": info.mode,
            "uid": info.uid,
            "gid": info.gid,
            "mtime": info.mtime_ns / 1e9,
            "nlink": info.nlink,
            "islink": stat.S_ISLNK(info.mode),
        }
        if stat.S_ISLNK(info.mode):
            entry["destination"] = self.view.readlink(path)
        return entry

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """``lstat`` of ``path`` as an fsspec info dict (``FileNotFoundError`` if missing)."""
        path = self._strip_protocol(path)
        return self._entry(path, self.view.lstat(path))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        """Entries of a directory (or the file itself), sorted by name."""
        path = self._strip_protocol(path)
        info = self.view.lstat(path)
        if not stat.S_ISDIR(info.mode):
            entries = [self._entry(path, info)]
        else:
            entries = [
                self._entry(posixpath.join(path, child.name), child)
                for child in self.view.readdir(path)
            ]
        return entries if detail else [e["name"] for e in entries]

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if mode != "rb":
            raise NotSupported(f"{path}: the layer view is read-only (mode {mode!r})", subject=path)
        return self.view.open(self._strip_protocol(path))

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        """A file's bytes, or the ``[start, end)`` slice of them."""
        with self._open(path) as fh:
            if start:
                fh.seek(start if start >= 0 else max(0, fh.seek(0, 2) + start))
            data: bytes = fh.read() if end is None else fh.read(max(0, end - (start or 0)))
        return data
