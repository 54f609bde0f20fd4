"""ext4 reader: the bounded walk of a tree behind layer export (SPEC §6.4, §5.5).

A walk is iterative (no recursion per level) and bounded whatever the image holds: it keeps the
set of directories it entered (a directory reached twice is a loop or a second name), the set
of directory blocks it read (two directories sharing a block), and stops at
``limits.max_depth``. Functions over a :class:`~lcow.formats.ext4.read_volume.Volume`; the
facade :class:`~lcow.formats.ext4.reader.Ext4Reader` exposes them as methods and documents them
there.
"""

from __future__ import annotations

from collections.abc import Iterator

from lcow.errors import LimitExceeded
from lcow.formats.ext4.read_content import readlink, xattrs
from lcow.formats.ext4.read_directory import children
from lcow.formats.ext4.read_inode import Inode
from lcow.formats.ext4.read_lookup import lookup, normal_path
from lcow.formats.ext4.read_types import Entry
from lcow.formats.ext4.read_volume import Volume, corrupt, where

__all__ = ["entry", "walk", "walk_inodes"]


def entry(vol: Volume, inode: Inode, path: bytes, *, with_xattrs: bool = True) -> Entry:
    """See :meth:`Ext4Reader.entry`."""
    return Entry(
        path=path,
        ino=inode.ino,
        mode=inode.mode,
        uid=inode.uid,
        gid=inode.gid,
        size=inode.size,
        nlink=inode.nlink,
        blocks=inode.blocks,
        atime_ns=inode.atime_ns,
        mtime_ns=inode.mtime_ns,
        ctime_ns=inode.ctime_ns,
        crtime_ns=inode.crtime_ns,
        rdev=inode.rdev,
        link_target=readlink(vol, inode, path=path) if inode.is_symlink else None,
        xattrs=xattrs(vol, inode, path=path) if with_xattrs else {},
        inode=inode,
    )


def walk(vol: Volume, top: bytes = b"/", *, with_xattrs: bool = True) -> Iterator[Entry]:
    """See :meth:`Ext4Reader.walk`."""
    for path, inode in walk_inodes(vol, top):
        yield entry(vol, inode, path, with_xattrs=with_xattrs)


def walk_inodes(vol: Volume, top: bytes = b"/") -> Iterator[tuple[bytes, Inode]]:
    """See :meth:`Ext4Reader.walk_inodes`."""
    root = lookup(vol, top)
    top_path = normal_path(top)
    yield top_path, root
    if not root.is_dir:
        return
    seen_dirs = {root.ino}
    seen_blocks: set[int] = set()
    prefix = b"" if top_path == b"/" else top_path
    stack = [(prefix, iter(children(vol, root, path=top_path, seen_blocks=seen_blocks)))]
    max_depth = vol.limits.max_depth
    used_inode = vol.used_inode
    while stack:
        dir_path, listing = stack[-1]
        child = next(listing, None)
        if child is None:
            stack.pop()
            continue
        path = dir_path + b"/" + child[0]
        inode = used_inode(child[1], path=path)
        yield path, inode
        if not inode.is_dir:
            continue
        if inode.ino in seen_dirs:
            raise corrupt(vol, inode.ino, path, "directory reached twice (loop)")
        seen_dirs.add(inode.ino)
        if len(stack) >= max_depth:
            raise LimitExceeded(
                f"{where(vol, inode.ino, path)}: nesting deeper than {max_depth} directories"
            )
        stack.append((path, iter(children(vol, inode, path=path, seen_blocks=seen_blocks))))
