"""The namespace being built: inodes, names, and moby's overwrite rules (SPEC §6.6, §6.7).

Inodes are rows of compact typed arrays indexed by inode number (about 70 bytes each), with
dictionaries only for what few inodes have (directory entries, xattrs, symlink targets, sparse
maps), so a layer of a million entries stays small. File data is already in the image when an
inode is added. Replacing or removing a name drops link counts, and an inode left without names
is freed together with its data blocks, so duplicate entries never leak space.
"""

from __future__ import annotations

import stat
from array import array
from collections.abc import Callable

from lcow.errors import InvalidArgument, LimitExceeded, NotFound
from lcow.formats.ext4.extents import Run
from lcow.formats.ext4.layout import LOST_AND_FOUND_INO, MAX_LINKS, MAX_NAME_LEN, ROOT_INO

__all__ = ["TIME_BIAS", "Tree", "encode_dev"]


#: Times are stored as unsigned ns offsets from ext4's earliest second (-2^31), which covers
#: its whole range (to 0x37fffffff s, year 2446) in 64 bits.
TIME_BIAS = (1 << 31) * 1_000_000_000


def encode_dev(major: int, minor: int) -> int:
    """The kernel's ``new_encode_dev`` (what ext4 stores in ``i_block[1]``)."""
    return (minor & 0xFF) | ((major & 0xFFF) << 8) | ((minor & ~0xFF) << 12)


class Tree:
    """Inodes and directory entries, with Docker's unpack semantics for repeated names.

    Row ``ino`` of each array describes inode ``ino`` (row 0 is unused). ``mode == 0`` marks a
    free inode. For a non-directory ``links`` counts its names; for a directory it counts its
    subdirectories (its link count is ``2 + links``). A dense regular file's data is the
    ``nblocks`` blocks from ``start``, and so is a directory's once the writer has placed its
    blocks; sparse files and slow symlinks keep ``runs`` instead.

    Args:
        free_runs: called with the data runs of an inode that lost its last name.
    """

    def __init__(self, free_runs: Callable[[list[Run]], None]) -> None:
        self._free_runs = free_runs
        self.mode = array("H")
        self.uid = array("I")
        self.gid = array("I")
        self.size = array("Q")
        # Times: ns + TIME_BIAS (see times() / set_times()).
        self.mtime = array("Q")
        self.atime = array("Q")
        self.ctime = array("Q")
        self.links = array("I")
        self.start = array("Q")
        self.nblocks = array("Q")
        self.children: dict[int, dict[bytes, int]] = {}
        self.parent: dict[int, int] = {}
        self.xattrs: dict[int, dict[bytes, bytes]] = {}
        self.data: dict[int, bytes] = {}  # symlink targets and inline file data
        self.runs: dict[int, list[Run]] = {}
        self.rdev: dict[int, int] = {}
        for _ in range(LOST_AND_FOUND_INO + 1):  # row 0, reserved inodes 1..10, lost+found
            self._append_row(0, 0, 0, TIME_BIAS, TIME_BIAS, TIME_BIAS)
        self.mode[ROOT_INO] = stat.S_IFDIR | 0o755
        self.children[ROOT_INO] = {}
        self.parent[ROOT_INO] = ROOT_INO
        self.mode[LOST_AND_FOUND_INO] = stat.S_IFDIR | 0o700
        self.children[LOST_AND_FOUND_INO] = {}
        self._attach(ROOT_INO, b"lost+found", LOST_AND_FOUND_INO)
        self._dir_cache: dict[bytes, int] = {b"": ROOT_INO}

    @property
    def count(self) -> int:
        """Highest inode number handed out."""
        return len(self.mode) - 1

    # -- inode allocation --------------------------------------------------------------------

    def _append_row(  # noqa: PLR0913, PLR0917 - hot loop: once per tar entry; one positional per column of the inode row
        self, mode: int, uid: int, gid: int, mtime: int, atime: int = 0, ctime: int = 0
    ) -> int:
        """Add a row; times are already biased (0 = the earliest time ext4 has)."""
        self.mode.append(mode)
        self.uid.append(uid)
        self.gid.append(gid)
        self.size.append(0)
        self.mtime.append(mtime)
        self.atime.append(atime)
        self.ctime.append(ctime)
        self.links.append(0)
        self.start.append(0)
        self.nblocks.append(0)
        return len(self.mode) - 1

    def new_inode(  # noqa: PLR0913, PLR0917 - hot loop: once per tar entry; mode, owner and the three inode times
        self,
        mode: int,
        uid: int,
        gid: int,
        mtime: int,
        atime: int | None = None,
        ctime: int | None = None,
    ) -> int:
        """A new, unnamed inode with the next number (times in ns; atime and ctime default to
        mtime)."""
        m = mtime + TIME_BIAS
        ino = self._append_row(
            mode,
            uid,
            gid,
            m,
            m if atime is None else atime + TIME_BIAS,
            m if ctime is None else ctime + TIME_BIAS,
        )
        if stat.S_ISDIR(mode):
            self.children[ino] = {}
        return ino

    def times(self, ino: int) -> tuple[int, int, int]:
        """``(mtime, atime, ctime)`` of ``ino`` in ns."""
        return (
            self.mtime[ino] - TIME_BIAS,
            self.atime[ino] - TIME_BIAS,
            self.ctime[ino] - TIME_BIAS,
        )

    def set_times(self, ino: int, mtime: int, atime: int, ctime: int) -> None:
        """Set the three times of ``ino`` (ns)."""
        self.mtime[ino] = mtime + TIME_BIAS
        self.atime[ino] = atime + TIME_BIAS
        self.ctime[ino] = ctime + TIME_BIAS

    def is_dir(self, ino: int) -> bool:
        """True for directories."""
        return ino in self.children

    def is_live(self, ino: int) -> bool:
        """True while ``ino`` is in use."""
        return self.mode[ino] != 0

    def data_runs(self, ino: int) -> list[Run] | None:
        """The data extents of ``ino`` (``None`` when it maps no blocks)."""
        runs = self.runs.get(ino)
        if runs is not None:
            return runs
        count = self.nblocks[ino]
        return [(0, self.start[ino], count)] if count else None

    def _release(self, ino: int) -> None:
        """Forget an inode that has no names left, giving back its blocks."""
        runs = self.data_runs(ino)
        if runs:
            self._free_runs(runs)
        self.mode[ino] = 0
        self.nblocks[ino] = 0
        for table in (self.children, self.parent, self.xattrs, self.data, self.runs, self.rdev):
            table.pop(ino, None)

    def release_unnamed(self, ino: int) -> None:
        """Free an inode that was created but never given a name (unused link sources)."""
        if self.links[ino] == 0 and self.mode[ino] != 0:
            self._release(ino)

    # -- lookups -----------------------------------------------------------------------------

    def directory(self, parts: list[bytes], shown: str) -> int:
        """The directory at ``parts``, creating missing ones.

        Missing directories get mode 0755 and the root's owner and times, and take their real
        metadata when their own entry arrives.
        """
        key = b"/".join(parts)
        ino = self._dir_cache.get(key)
        if ino is not None:
            return ino
        ino = ROOT_INO
        for i, part in enumerate(parts):
            child = self.children[ino].get(part)
            if child is None:
                child = self.new_inode(
                    stat.S_IFDIR | 0o755,
                    self.uid[ROOT_INO],
                    self.gid[ROOT_INO],
                    self.mtime[ROOT_INO],
                )
                self.atime[child], self.ctime[child] = self.atime[ROOT_INO], self.ctime[ROOT_INO]
                self._attach(ino, part, child)
            elif child not in self.children:
                where = b"/".join(parts[: i + 1]).decode("utf-8", "backslashreplace")
                raise InvalidArgument(f"{shown}: parent {where} is not a directory", subject=shown)
            ino = child
        self._dir_cache[key] = ino
        return ino

    def parent_directory(self, parts: list[bytes], path: bytes, shown: str) -> int:
        """The directory that holds ``parts[-1]``, creating missing ones (as
        :meth:`directory`); ``path`` is its own path, ``b"/".join(parts[:-1])``."""
        ino = self._dir_cache.get(path)
        if ino is not None:
            return ino
        return self.directory(parts[:-1], shown)

    def lookup(self, parts: list[bytes]) -> int | None:
        """The inode named by ``parts`` (no symlinks followed), or ``None``."""
        ino = ROOT_INO
        for part in parts:
            entries = self.children.get(ino)
            if entries is None:
                return None
            child = entries.get(part)
            if child is None:
                return None
            ino = child
        return ino

    # -- name changes ------------------------------------------------------------------------

    def _attach(self, parent: int, name: bytes, ino: int) -> None:
        if len(name) > MAX_NAME_LEN:
            shown = name.decode("utf-8", "backslashreplace")
            raise InvalidArgument(
                f"{shown}: invalid name (longer than {MAX_NAME_LEN} bytes)", subject=shown
            )
        self.children[parent][name] = ino
        if ino in self.children:
            self.parent[ino] = parent
            self.links[parent] += 1
        else:
            self.links[ino] += 1

    def _unlink(self, ino: int) -> None:
        self.links[ino] -= 1
        if self.links[ino] == 0:
            self._release(ino)

    def remove(self, parent: int, name: bytes) -> None:
        """Remove ``name`` from ``parent`` with everything below it (``os.RemoveAll``)."""
        ino = self.children[parent].pop(name)
        if ino not in self.children:
            self._unlink(ino)
            return
        self.links[parent] -= 1
        self._dir_cache.clear()  # cached paths may run through the removed directory
        stack = [ino]
        while stack:
            d = stack.pop()
            for child in self.children[d].values():
                if child in self.children:
                    stack.append(child)
                else:
                    self._unlink(child)
            self._release(d)

    def place(self, parent: int, name: bytes, ino: int, shown: str) -> None:
        """Give ``ino`` the name ``name`` in ``parent``, replacing what was there.

        A non-directory replaces anything (a directory with its whole subtree); a new directory
        over a non-directory replaces it. A directory entry for an existing directory is merged
        by the caller instead.
        """
        if name in self.children[parent]:
            self.remove(parent, name)
        if ino in self.children and self.links[parent] >= MAX_LINKS - 2:
            raise LimitExceeded(
                f"{shown}: exceeded parent directory maximum link count", subject=shown
            )
        self._attach(parent, name, ino)

    def link(self, parent: int, name: bytes, target: int, shown: str) -> None:
        """Add a hard link ``name`` in ``parent`` to the existing non-directory ``target``."""
        existing = self.children[parent].get(name)
        if existing == target:
            return
        if existing is not None:
            self.remove(parent, name)
        if self.mode[target] == 0:
            raise NotFound(f"{shown}: hard link target was removed by this entry", subject=shown)
        if self.links[target] >= MAX_LINKS:
            raise LimitExceeded(
                f"{shown}: too many links to the target (max {MAX_LINKS})", subject=shown
            )
        self._attach(parent, name, target)
