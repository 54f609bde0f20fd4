"""The namespace being built: inodes, names, and moby's overwrite rules (SPEC §6.6, §6.7).

Only metadata lives here; file data is already in the image when an inode is added. Replacing or
removing a name drops link counts, and an inode left without names is freed together with its
data blocks, so duplicate entries never leak space.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterator

from lcow.errors import InvalidArgument, LimitExceeded, NotFound
from lcow.formats.ext4.extents import Run
from lcow.formats.ext4.layout import LOST_AND_FOUND_INO, MAX_LINKS, MAX_NAME_LEN, ROOT_INO

__all__ = ["Inode", "Tree"]


class Inode:
    """One inode under construction. Times are integer nanoseconds."""

    __slots__ = (
        "atime",
        "children",
        "ctime",
        "data",
        "gid",
        "ino",
        "links",
        "mode",
        "mtime",
        "parent",
        "rdev",
        "runs",
        "size",
        "uid",
        "xattrs",
    )

    def __init__(self, ino: int, mode: int, uid: int, gid: int, mtime: int) -> None:
        self.ino = ino
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.mtime = mtime
        self.atime = mtime
        self.ctime = mtime
        self.size = 0
        self.links = 0  # names of a non-directory; subdirectory count of a directory
        self.runs: list[Run] | None = None  # data extents (regular files)
        self.children: dict[bytes, Inode] | None = None  # directories
        self.parent: Inode | None = None  # directories
        self.xattrs: dict[bytes, bytes] | None = None
        self.data: bytes | None = None  # symlink target or inline file data
        self.rdev = 0  # (major, minor) packed as the kernel's new_encode_dev

    @property
    def is_dir(self) -> bool:
        """True for directories."""
        return self.children is not None


def encode_dev(major: int, minor: int) -> int:
    """The kernel's ``new_encode_dev`` (what ext4 stores in ``i_block[1]``)."""
    return (minor & 0xFF) | ((major & 0xFFF) << 8) | ((minor & ~0xFF) << 12)


class Tree:
    """Inodes and directory entries, with Docker's unpack semantics for repeated names.

    Args:
        free_runs: called with the data runs of an inode that lost its last name.
    """

    def __init__(self, free_runs: Callable[[list[Run]], None]) -> None:
        self._free_runs = free_runs
        self.inodes: list[Inode | None] = [None] * LOST_AND_FOUND_INO  # index = ino - 1
        self.root = self._new_dir_at(ROOT_INO, 0o755, 0, 0, 0)
        self.root.parent = self.root
        lost = self._new_dir_at(LOST_AND_FOUND_INO, 0o700, 0, 0, 0)
        self._attach(self.root, b"lost+found", lost)
        self._dir_cache: dict[bytes, Inode] = {b"": self.root}

    # -- inode allocation --------------------------------------------------------------------

    def _new_dir_at(self, ino: int, perm: int, uid: int, gid: int, mtime: int) -> Inode:
        node = Inode(ino, stat.S_IFDIR | perm, uid, gid, mtime)
        node.children = {}
        self.inodes[ino - 1] = node
        return node

    def new_inode(self, mode: int, uid: int, gid: int, mtime: int) -> Inode:
        """A new, unnamed inode with the next number."""
        node = Inode(len(self.inodes) + 1, mode, uid, gid, mtime)
        self.inodes.append(node)
        if stat.S_ISDIR(mode):
            node.children = {}
        return node

    def live_inodes(self) -> Iterator[Inode]:
        """Inodes still in use, in number order."""
        return (node for node in self.inodes if node is not None)

    def _release(self, node: Inode) -> None:
        """Forget an inode that has no names left."""
        if node.runs:
            self._free_runs(node.runs)
            node.runs = None
        self.inodes[node.ino - 1] = None

    # -- lookups -----------------------------------------------------------------------------

    def directory(self, parts: list[bytes], shown: str, placeholder: Inode | None) -> Inode:
        """The directory at ``parts``, creating missing ones.

        Missing directories are created like ``placeholder`` (mode 0755, its owner and times),
        and take the real metadata when their own entry arrives.
        """
        key = b"/".join(parts)
        node = self._dir_cache.get(key)
        if node is not None:
            return node
        node = self.root
        for i, part in enumerate(parts):
            child = node.children.get(part)  # type: ignore[union-attr]
            if child is None:
                ref = placeholder or self.root
                child = self.new_inode(stat.S_IFDIR | 0o755, ref.uid, ref.gid, ref.mtime)
                child.atime, child.ctime = ref.atime, ref.ctime
                self._attach(node, part, child)
            elif not child.is_dir:
                where = b"/".join(parts[: i + 1]).decode("utf-8", "backslashreplace")
                raise InvalidArgument(f"{shown}: parent {where} is not a directory", subject=shown)
            node = child
        self._dir_cache[key] = node
        return node

    def lookup(self, parts: list[bytes]) -> Inode | None:
        """The inode named by ``parts`` (no symlinks followed), or ``None``."""
        node = self.root
        for part in parts:
            if node.children is None:
                return None
            child = node.children.get(part)
            if child is None:
                return None
            node = child
        return node

    # -- name changes ------------------------------------------------------------------------

    def _attach(self, parent: Inode, name: bytes, node: Inode) -> None:
        if len(name) > MAX_NAME_LEN:
            shown = name.decode("utf-8", "backslashreplace")
            raise InvalidArgument(f"{shown}: invalid name (longer than {MAX_NAME_LEN} bytes)", subject=shown)
        parent.children[name] = node  # type: ignore[index]
        if node.children is not None:
            node.parent = parent
            parent.links += 1
        else:
            node.links += 1

    def remove(self, parent: Inode, name: bytes) -> None:
        """Remove ``name`` from ``parent`` with everything below it (``os.RemoveAll``)."""
        node = parent.children.pop(name)  # type: ignore[union-attr]
        if node.children is not None:
            parent.links -= 1
        else:
            node.links -= 1
            if node.links == 0:
                self._release(node)
            return
        self._dir_cache.clear()  # cached paths may run through the removed directory
        stack = [node]
        while stack:
            d = stack.pop()
            for child in d.children.values():  # type: ignore[union-attr]
                if child.children is None:
                    child.links -= 1
                    if child.links == 0:
                        self._release(child)
                else:
                    stack.append(child)
            d.children = {}
            self._release(d)

    def place(self, parent: Inode, name: bytes, node: Inode, shown: str) -> None:
        """Give ``node`` the name ``name`` in ``parent``, replacing what was there.

        A non-directory replaces anything (a directory with its whole subtree); a new directory
        over an existing non-directory replaces it. Merging a directory into a directory is the
        caller's business (:meth:`merge_dir`).
        """
        if name in parent.children:  # type: ignore[operator]
            self.remove(parent, name)
        if node.children is not None and parent.links >= MAX_LINKS - 2:
            raise LimitExceeded(f"{shown}: exceeded parent directory maximum link count", subject=shown)
        self._attach(parent, name, node)

    def link(self, parent: Inode, name: bytes, target: Inode, shown: str) -> None:
        """Add a hard link ``name`` in ``parent`` to the existing non-directory ``target``."""
        existing = parent.children.get(name)  # type: ignore[union-attr]
        if existing is target:
            return
        if existing is not None:
            self.remove(parent, name)
        if self.inodes[target.ino - 1] is not target:
            raise NotFound(f"{shown}: hard link target was removed by this entry", subject=shown)
        if target.links >= MAX_LINKS:
            raise LimitExceeded(f"{shown}: too many links to the target (max {MAX_LINKS})", subject=shown)
        self._attach(parent, name, target)


    def release_unnamed(self, node: Inode) -> None:
        """Free an inode that was created but never given a name (unused link sources)."""
        if node.links == 0 and self.inodes[node.ino - 1] is node:
            self._release(node)
