"""``archivepath``: Docker's ``archive.TarWithOptions`` over any view (SPEC §4.8, §5.3).

Generic over a reader with ``lstat``/``readdir``/``readlink``/``open`` (every ContainerFS), so the
host and userspace views pack identically. Semantics follow Docker: names are relative to the
archived directory (a single file is archived under its base name), ``IncludeFiles`` selects
what to walk, ``ExcludePatterns`` skips (``!`` patterns re-include), ``RebaseNames`` renames the
first occurrence of an include, ``IncludeSourceDir`` adds ``./`` itself; ``ChownOpts`` overrides
owners; the overlay whiteout format turns 0/0 devices and opaque directories into AUFS markers.
Output is an uncompressed tar, PAX only where ustar does not fit; a repeated inode becomes a
hard link to its first name; sockets are skipped (tar cannot hold them, as in Docker).

Errors: a missing source path raises ``FileNotFoundError``; a missing include or an entry that
vanishes during the walk is skipped (Docker logs and goes on); any other error is raised, which
leaves the stream truncated, so the reader sees it.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable, Hashable, Mapping
from typing import BinaryIO, Protocol

from lcow.backends.base import FileInfo
from lcow.backends.patterns import PatternMatcher
from lcow.backends.taroptions import OVERLAY_WHITEOUTS, TarOptions
from lcow.convert.tarwriter import END_OF_ARCHIVE, TYPEFLAGS, TarHeader, padding
from lcow.errors import FailedPrecondition
from lcow.formats.whiteouts import (
    OVERLAY_XATTR_PREFIXES,
    is_opaque,
    is_overlay_whiteout,
    opaque_marker_path,
    whiteout_path,
)

__all__ = ["XATTRS_NOT_EXPORTED", "TreeReader", "exported_xattrs", "tar_with_options"]

_CHUNK = 1 << 20
#: Xattrs never written to a tar: overlayfs's own bookkeeping and the host's SELinux label
#: (properties of where the files sit, not of the files).
XATTRS_NOT_EXPORTED = (*OVERLAY_XATTR_PREFIXES, b"security.selinux")

XattrReader = Callable[[str, FileInfo], Mapping[bytes, bytes]]
LinkKey = Callable[[str, FileInfo], Hashable]


class TreeReader(Protocol):
    """What the writer needs from a view (a subset of ContainerFS)."""

    def lstat(self, path: str) -> FileInfo:
        """Information about ``path`` itself."""
        ...

    def readdir(self, path: str) -> list[FileInfo]:
        """Entries of a directory."""
        ...

    def readlink(self, path: str) -> str:
        """A symlink's target."""
        ...

    def open(self, path: str) -> BinaryIO:
        """A readable regular file."""
        ...


def exported_xattrs(xattrs: Mapping[bytes, bytes]) -> dict[bytes, bytes]:
    """``xattrs`` minus those in :data:`XATTRS_NOT_EXPORTED`."""
    return {k: v for k, v in xattrs.items() if not k.startswith(XATTRS_NOT_EXPORTED)}


def tar_with_options(  # noqa: PLR0913 - Docker's TarWithOptions(path, options) plus the view's reader and output; xattrs and link_key keyword-only
    reader: TreeReader,
    path: str,
    out: Callable[[bytes], object],
    options: TarOptions | None = None,
    *,
    xattrs: XattrReader | None = None,
    link_key: LinkKey | None = None,
) -> None:
    """Write a tar of ``path`` to ``out`` as ``archive.TarWithOptions(path, options)`` does.

    Args:
        reader: the view to read.
        path: absolute path inside the view (a directory's contents, or one file).
        out: receives the tar bytes in order.
        options: Docker's TarOptions (``None`` = defaults).
        xattrs: all extended attributes of an entry (unfiltered); ``None`` = no xattrs.
        link_key: identity of a multiply-linked inode (default: ``FileInfo.ino``); entries with
            equal keys after the first become hard links.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        FailedPrecondition: a file changed size while it was being read.
        InvalidArgument: a malformed exclude pattern.
    """
    _Archiver(reader, out, options or TarOptions(), xattrs, link_key).run(path)


class _Archiver:
    def __init__(
        self,
        reader: TreeReader,
        out: Callable[[bytes], object],
        options: TarOptions,
        xattrs: XattrReader | None,
        link_key: LinkKey | None,
    ) -> None:
        self.reader = reader
        self.out = out
        self.options = options
        self.matcher = PatternMatcher(options.exclude_patterns)
        self.xattrs = xattrs
        self.link_key = link_key
        self.links: dict[Hashable, bytes] = {}
        self.seen: set[str] = set()

    def run(self, path: str) -> None:
        src = posixpath.normpath("/" + path.lstrip("/"))
        info = self.reader.lstat(src)
        includes = list(self.options.include_files)
        if not info.is_dir:
            # Docker: a file cannot be walked with includes; archive it by its base name.
            src, base = posixpath.split(src)
            includes = [base]
        for include in includes or ["."]:
            walk_root = posixpath.normpath(posixpath.join(src, include))
            try:
                root_info = self.reader.lstat(walk_root)
            except FileNotFoundError:
                continue
            self._walk(src, include, walk_root, root_info)
        self.out(END_OF_ARCHIVE)

    def _walk(self, src: str, include: str, path: str, info: FileInfo) -> None:
        # Depth first with a stack, not recursion: a tree's depth is the reader's to bound.
        pending = [(path, info)]
        while pending:
            path, info = pending.pop()
            if not self._visit(src, include, path, info) or not info.is_dir:
                continue
            try:
                children = self.reader.readdir(path)
            except FileNotFoundError:
                continue
            children.sort(key=lambda child: os.fsencode(child.name), reverse=True)
            pending.extend((posixpath.join(path, child.name), child) for child in children)

    def _visit(self, src: str, include: str, path: str, info: FileInfo) -> bool:
        """Archive one entry; False when a directory must not be descended into."""
        rel = posixpath.relpath(path, src)
        if rel == "." and info.is_dir and not self.options.include_source_dir:
            return True
        if self.options.include_source_dir and include == "." and rel != ".":
            rel = "./" + rel
        if include != rel and self.matcher.matches(rel):
            return info.is_dir and self.matcher.reincluded_below(rel)
        if rel in self.seen:
            return True
        self.seen.add(rel)
        rebase = self.options.rebase_names.get(include, "")
        if rebase:
            rel = rel.replace(include, "" if rebase == "/" else rebase, 1)
        try:
            self._add(path, rel, info)
        except FileNotFoundError:
            return False  # vanished while being archived
        return True

    def _add(self, path: str, rel: str, info: FileInfo) -> None:
        fmt = stat.S_IFMT(info.mode)
        typeflag = TYPEFLAGS.get(fmt)
        if typeflag is None:
            return  # sockets: tar has no type for them
        name = os.fsencode(rel)
        if fmt == stat.S_IFDIR:
            name += b"/"
        all_xattrs = dict(self.xattrs(path, info)) if self.xattrs is not None else {}
        uid, gid = self.options.chown if self.options.chown is not None else (info.uid, info.gid)
        mode = info.mode
        size = info.size if fmt == stat.S_IFREG else 0
        linkname = b""
        if fmt != stat.S_IFDIR and info.nlink > 1:
            key = self.link_key(path, info) if self.link_key is not None else info.ino
            first = self.links.get(key)
            if first is None:
                self.links[key] = name
            else:
                typeflag, linkname, size = b"1", first, 0
        if fmt == stat.S_IFLNK and typeflag != b"1":
            linkname = os.fsencode(self.reader.readlink(path))
        major = minor = 0
        if fmt in (stat.S_IFCHR, stat.S_IFBLK):
            major, minor = os.major(info.rdev), os.minor(info.rdev)
        overlay = self.options.whiteout_format == OVERLAY_WHITEOUTS
        if overlay and typeflag == b"3" and is_overlay_whiteout(info.mode, info.rdev):
            name = whiteout_path(name)
            typeflag, mode = b"0", 0o600
        # Open before the header goes out, so a vanished file leaves no half-written member.
        data = self.reader.open(path) if typeflag == b"0" and size else None
        try:
            self.out(
                TarHeader.encode(
                    name,
                    typeflag=typeflag,
                    mode=mode,
                    uid=uid,
                    gid=gid,
                    size=size,
                    mtime_ns=info.mtime_ns,
                    linkname=linkname,
                    devmajor=major,
                    devminor=minor,
                    xattrs=exported_xattrs(all_xattrs),
                )
            )
            if overlay and fmt == stat.S_IFDIR and is_opaque(all_xattrs):
                self.out(
                    TarHeader.encode(
                        opaque_marker_path(name),
                        typeflag=b"0",
                        mode=info.mode & 0o777,
                        uid=uid,
                        gid=gid,
                        size=0,
                        mtime_ns=0,
                    )
                )
            if data is not None:
                self._copy(data, rel, size)
        finally:
            if data is not None:
                data.close()

    def _copy(self, data: BinaryIO, rel: str, size: int) -> None:
        left = size
        while left:
            chunk = data.read(min(left, _CHUNK))
            if not chunk:
                break
            self.out(chunk)
            left -= len(chunk)
        if left or data.read(1):
            raise FailedPrecondition(
                f"{rel}: file changed size while being archived (expected {size} bytes)",
                subject=rel,
            )
        self.out(padding(size))
