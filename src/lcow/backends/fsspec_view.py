"""An fsspec file system over a layer view, so fsspec-aware tools can read a layer (issue 4).

``ViewFileSystem(view)`` exposes any :class:`~lcow.backends.base.ContainerFS` (what
``Driver.get`` returns) read-only: ``ls``, ``info``, ``open`` for reading, ``cat``, ``find``,
``walk``, ``glob`` … Paths are absolute inside the view. Writes raise ``NotSupported`` for the
userspace backend, as the view itself does.
"""

from __future__ import annotations

import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass
class _WalkFrame:
    """One directory of :meth:`ViewFileSystem.walk` in progress."""

    top: str
    dirs: Any  # names, or name -> info with ``detail``: what the caller may prune
    files: Any
    full: dict[str, str]  # directory name -> its path
    depth_left: int | None
    below: Iterator[str] | None = None


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

    def walk(
        self,
        path: str,
        maxdepth: int | None = None,
        topdown: bool = True,
        on_error: Any = "omit",
        **kwargs: Any,
    ) -> Iterator[tuple[str, Any, Any]]:
        """``(dirpath, dirs, files)`` of every directory under ``path``, like fsspec's
        ``walk`` (and so ``find``, ``glob``, ``du``) but with a stack instead of recursion, so
        a deep tree meets the view's depth limit, never the interpreter's recursion limit.

        ``on_error`` applies at every level (``"omit"``: a directory that cannot be listed for
        ``FileNotFoundError``/``OSError`` shows as empty); the view's ``CorruptImage`` and
        ``LimitExceeded`` always propagate.
        """
        if maxdepth is not None and maxdepth < 1:
            raise ValueError("maxdepth must be at least 1")
        detail = kwargs.pop("detail", False)
        first = self._walk_frame(self._strip_protocol(path), maxdepth, detail, on_error, kwargs)
        if first is None:
            return
        stack = [first]
        if topdown:
            yield first.top, first.dirs, first.files
        while stack:
            frame = stack[-1]
            if frame.below is None:  # after the caller may have pruned ``dirs`` (topdown)
                deeper = frame.depth_left is None or frame.depth_left > 1
                frame.below = iter([frame.full[d] for d in frame.dirs] if deeper else [])
            sub = next(frame.below, None)
            if sub is None:
                stack.pop()
                if not topdown:
                    yield frame.top, frame.dirs, frame.files
                continue
            left = None if frame.depth_left is None else frame.depth_left - 1
            child = self._walk_frame(sub, left, detail, on_error, kwargs)
            if child is not None:
                stack.append(child)
                if topdown:
                    yield child.top, child.dirs, child.files

    def _walk_frame(
        self, path: str, depth_left: int | None, detail: bool, on_error: Any, kwargs: Any
    ) -> _WalkFrame | None:
        try:
            listing = self.ls(path, detail=True, **kwargs)
        except OSError as exc:  # FileNotFoundError included
            if on_error == "raise":
                raise
            if callable(on_error):
                on_error(exc)
            return None
        full: dict[str, str] = {}
        dirs: dict[str, Any] = {}
        files: dict[str, Any] = {}
        for info in listing:
            name_path = info["name"].rstrip("/")
            name = name_path.rsplit("/", 1)[-1]
            if info["type"] == "directory" and name_path != path:
                full[name] = name_path
                dirs[name] = info
            elif name_path == path:  # ``path`` is a file itself
                files[""] = info
            else:
                files[name] = info
        if detail:
            return _WalkFrame(path, dirs, files, full, depth_left)
        return _WalkFrame(path, list(dirs), list(files), full, depth_left)

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
