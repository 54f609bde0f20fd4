"""Read-only ext4 reader for layer images (SPEC §6; issue 3).

:class:`Ext4Reader` reads every image the project meets — lcow's and tar2ext4's writers,
``mke2fs -d`` and the kernel — from a :class:`~lcow.formats.source.ByteSource` (raw file, fixed
VHD, dynamic VHDX, memory). It supports 1-64 KiB blocks, 32- and 64-byte group descriptors
(``64bit``, ``meta_bg``, ``flex_bg``), 128-byte and larger inodes, ``huge_file``, extent trees of
any depth and ext2/3 block maps, inline data (files, directories, symlinks), linear and htree
directories, in-inode, external-block and EA-inode xattrs, fast and slow symlinks and devices;
with ``verify_checksums=True`` every ``metadata_csum`` (or ``gdt_csum``) checksum it passes is
checked.

The reader is built for hostile input: the superblock is checked eagerly, every structure is
bounds-checked before use, a walk keeps a set of visited directories (no loops) and of directory
blocks (no shared blocks), limits its depth and the size of each directory
(:class:`ReadLimits`), and reads each metadata block a bounded number of times; a lookup, which
sees one path and not the whole tree, checks every directory it enters against that
directory's ``..`` (:meth:`Ext4Reader.check_subdir`), so it cannot loop either. Damage raises
:class:`~lcow.errors.CorruptImage` naming the image, inode and path; limits raise
:class:`~lcow.errors.LimitExceeded`; refused features :class:`~lcow.errors.NotSupported`.

Layer export (Diff) builds on :meth:`Ext4Reader.walk_inodes` (every entry's inode),
:meth:`Ext4Reader.open_file` (contents) and :meth:`Ext4Reader.spans` (where the bytes sit in the
host file, for ``os.copy_file_range``); Changes and DiffSize on the lean metadata scan
(:meth:`Ext4Reader.scan`, :meth:`Ext4Reader.scan_dir`, :meth:`Ext4Reader.content_size`).

This module is the facade: :class:`Ext4Reader` is a
:class:`~lcow.formats.ext4.read_volume.Volume` (superblock, group descriptors, blocks, inodes,
block mapping) that gathers as methods the functions of the modules below it, each of which
takes the volume and imports only modules under it:

* :mod:`~lcow.formats.ext4.read_content` — file data, symlink targets, xattrs;
* :mod:`~lcow.formats.ext4.read_directory` — a directory's entries
  (:mod:`~lcow.formats.ext4.read_listing` lists them fast for walks);
* :mod:`~lcow.formats.ext4.read_lookup` — path resolution and its loop check;
* :mod:`~lcow.formats.ext4.read_walk` — the bounded walk;
* :mod:`~lcow.formats.ext4.read_scan` — the lean metadata scan.

Inodes are read a chunk of inode table at a time (:mod:`lcow.formats.ext4.read_itable`).
"""

from __future__ import annotations

from collections.abc import Iterator

from lcow.formats.ext4 import read_content, read_directory, read_lookup, read_scan, read_walk
from lcow.formats.ext4.read_dirs import DirEntry
from lcow.formats.ext4.read_extents import DataRun
from lcow.formats.ext4.read_file import FileReader
from lcow.formats.ext4.read_inode import Inode
from lcow.formats.ext4.read_super import Superblock
from lcow.formats.ext4.read_types import ByteSpan, Entry, ReadLimits, ScanEntry
from lcow.formats.ext4.read_volume import Volume

__all__ = [
    "ByteSpan",
    "DataRun",
    "DirEntry",
    "Entry",
    "Ext4Reader",
    "FileReader",
    "Inode",
    "ReadLimits",
    "ScanEntry",
    "Superblock",
]


class Ext4Reader(Volume):
    """A read-only view of an ext4 filesystem.

    Made with :meth:`open` (an image file) or from a :class:`~lcow.formats.source.ByteSource`
    (see :class:`~lcow.formats.ext4.read_volume.Volume` for the constructor, the attributes and
    the primitives :meth:`read_block`, :meth:`group_desc`, :meth:`inode`, :meth:`used_inode` and
    :meth:`data_runs`).
    """

    # -- data -----------------------------------------------------------------------------

    def inline_data(self, inode: Inode, *, path: bytes | None = None) -> bytes:
        """The ``i_size`` bytes of an inline-data inode (``i_block`` then ``system.data``).

        Raises:
            CorruptImage: the inode is not inline, or its size exceeds the stored bytes.
        """
        return read_content.inline_data(self, inode, path=path)

    def spans(self, inode: Inode, *, path: bytes | None = None) -> Iterator[ByteSpan]:
        """Where each byte of a file's contents lives, in file order, covering ``[0, size)``.

        Stored ranges are translated through the container (VHDX blocks may be absent), so
        ``host_offset`` can be handed to ``os.copy_file_range`` with ``source.fileno()``.

        Raises:
            CorruptImage: a bad mapping (see :meth:`data_runs`).
        """
        return read_content.spans(self, inode, path=path)

    def open_file(self, inode: Inode, *, path: bytes | None = None) -> FileReader:
        """A seekable binary reader over a file's contents (regular file, symlink, directory).

        Raises:
            CorruptImage: a bad mapping (raised on first read).
        """
        return read_content.open_file(self, inode, path=path)

    def read_file(
        self, inode: Inode, *, path: bytes | None = None, max_size: int = 1 << 30
    ) -> bytes:
        """A whole file's contents.

        Raises:
            LimitExceeded: the file is larger than ``max_size``.
            CorruptImage: a bad mapping.
        """
        return read_content.read_file(self, inode, path=path, max_size=max_size)

    def readlink(self, inode: Inode, *, path: bytes | None = None) -> bytes:
        """A symlink's target.

        Raises:
            InvalidArgument: not a symlink.
            CorruptImage: empty or oversized target, a fast symlink whose size does not fit.
        """
        return read_content.readlink(self, inode, path=path)

    # -- xattrs ---------------------------------------------------------------------------

    def xattrs(self, inode: Inode, *, path: bytes | None = None) -> dict[bytes, bytes]:
        """Extended attributes as ``getxattr`` shows them (``system.data`` excluded).

        Raises:
            CorruptImage: malformed entries, a bad EA inode.
            LimitExceeded: values beyond ``limits.max_xattr_bytes``.
        """
        return read_content.xattrs(self, inode, path=path)

    # -- directories ----------------------------------------------------------------------

    def iterdir(
        self, inode: Inode, *, path: bytes | None = None, seen_blocks: set[int] | None = None
    ) -> Iterator[DirEntry]:
        """Live entries of a directory in on-disk order, without ``.`` and ``..``.

        Args:
            inode: the directory.
            path: its path, for error messages.
            seen_blocks: directory blocks already read in this walk; a block read twice is
                corruption (two directories sharing a block). ``None`` not to track.

        Raises:
            InvalidArgument: not a directory.
            LimitExceeded: the directory is larger than ``limits.max_dir_size``.
            CorruptImage: bad records or mapping.
        """
        return read_directory.iterdir(self, inode, path=path, seen_blocks=seen_blocks)

    def listdir(
        self, inode: Inode, *, path: bytes | None = None, seen_blocks: set[int] | None = None
    ) -> list[DirEntry]:
        """Entries of a directory sorted by name (see :meth:`iterdir`).

        Raises:
            CorruptImage: duplicate names, or see :meth:`iterdir`.
            LimitExceeded: more than ``limits.max_dir_entries`` entries.
        """
        return read_directory.listdir(self, inode, path=path, seen_blocks=seen_blocks)

    def lookup(self, path: bytes) -> Inode:
        """The inode at ``path`` (absolute or relative to the root; symlinks not followed).

        Raises:
            NotFound: a component is missing or not a directory.
            CorruptImage: damage on the way.
        """
        return read_lookup.lookup(self, path)

    def dotdot(self, inode: Inode, *, path: bytes | None = None) -> int:
        """The inode a directory's ``..`` entry names: its parent (the root's is itself).

        Read from the first directory block (or, inline, the first four bytes of ``i_block``).

        Raises:
            InvalidArgument: not a directory.
            CorruptImage: no ``..`` entry where it belongs, or a bad record in that block.
        """
        return read_lookup.dotdot(self, inode, path=path)

    def check_subdir(self, parent: Inode, child: Inode, *, path: bytes | None = None) -> None:
        """Check a directory reached by a name in directory ``parent``: it must be a child of
        ``parent`` alone.

        A directory has one name (no hard links to directories), so its ``..`` names the one
        directory holding it and it is never the root. A path resolved through checked steps
        therefore never loops, whatever the image holds: this is how lookups that see one path,
        not the whole tree, stop at a directory loop or a hard-linked directory (whole walks
        also keep a set of the directories they entered).

        Args:
            parent: the directory the name was found in.
            child: the directory the name points at.
            path: the child's path, for the message.

        Raises:
            CorruptImage: ``child`` is the root, or its ``..`` names another directory (a loop,
                or a second name of a directory); see also :meth:`dotdot`.
        """
        read_lookup.check_subdir(self, parent, child, path=path)

    # -- walk -----------------------------------------------------------------------------

    def children(
        self, inode: Inode, *, path: bytes, seen_blocks: set[int]
    ) -> list[tuple[bytes, int]]:
        """``(name, ino)`` of a directory's entries sorted by name: :meth:`listdir` for walks.

        Same checks and errors as :meth:`listdir`, but directory blocks are read a run at a
        time and records parsed without building :class:`DirEntry` objects.

        Args:
            inode: the directory.
            path: its path, for error messages.
            seen_blocks: directory blocks already read in this walk (see :meth:`iterdir`).

        Raises:
            CorruptImage: bad records or mapping, a shared block, duplicate names.
            LimitExceeded: see :meth:`listdir`.
        """
        return read_directory.children(self, inode, path=path, seen_blocks=seen_blocks)

    def entry(self, inode: Inode, path: bytes, *, xattrs: bool = True) -> Entry:
        """Build the :class:`Entry` of an inode reached at ``path``.

        Raises:
            CorruptImage: bad symlink target or xattrs.
        """
        return read_walk.entry(self, inode, path, with_xattrs=xattrs)

    def walk(self, top: bytes = b"/", *, xattrs: bool = True) -> Iterator[Entry]:
        """Every entry under ``top`` (itself first), depth first, children sorted by name.

        Hard links appear once per name with the same ``ino``. The walk is bounded: a
        directory reached twice, a directory block shared by two directories, or nesting
        deeper than ``limits.max_depth`` stops it with an error.

        Args:
            top: directory (or file) to start at.
            xattrs: read extended attributes (cheaper to skip when not needed).

        Yields:
            Entries with absolute paths.

        Raises:
            NotFound: ``top`` does not exist.
            CorruptImage: damage anywhere in the tree, naming inode and path.
            LimitExceeded: a configured limit is hit.
        """
        return read_walk.walk(self, top, with_xattrs=xattrs)

    def walk_inodes(self, top: bytes = b"/") -> Iterator[tuple[bytes, Inode]]:
        """``(path, inode)`` of every entry under ``top``: :meth:`walk` without building
        :class:`Entry` objects (no xattrs or link targets read).

        Raises:
            NotFound: ``top`` does not exist.
            CorruptImage: damage anywhere in the tree, naming inode and path.
            LimitExceeded: a configured limit is hit.
        """
        return read_walk.walk_inodes(self, top)

    # -- metadata scan (lcow.formats.ext4.read_scan) -----------------------------------------

    def scan(
        self,
        top: bytes = b"/",
        *,
        capability: bool = False,
        relative: bool = False,
        hide_lost_found: bool = False,
    ) -> Iterator[ScanEntry]:
        """Metadata of every entry under ``top`` (itself first), in :meth:`walk` order, fast.

        What Changes and DiffSize compare, and nothing more (see
        :mod:`lcow.formats.ext4.read_scan`): the inode table is read in bulk and only the
        needed fields are decoded; xattrs are read only for directories (the overlay opaque
        flag) and, with ``capability``, for entries that have any. Symlink targets are not
        read. The same bounds as :meth:`walk` apply.

        Args:
            top: directory (or file) to start at.
            capability: fill :attr:`ScanEntry.capability` (``security.capability``).
            relative: give paths relative to ``top`` in absolute form (``top`` itself is
                ``b"/"``), as a layer whose content lives in ``/upper`` sees them.
            hide_lost_found: leave out ``top``'s ``lost+found`` when it is an empty directory
                (every ext4 root has one; it is not layer content).

        Yields:
            Entries with absolute paths.

        Raises:
            NotFound: ``top`` does not exist.
            CorruptImage: damage anywhere in the tree, naming inode and path.
            LimitExceeded: a configured limit is hit.
        """
        return read_scan.scan(
            self, top, capability=capability, relative=relative, hide_lost_found=hide_lost_found
        )

    def scan_dir(  # noqa: PLR0913 - forwards read_scan.scan_dir's keyword-only arguments unchanged
        self,
        ino: int,
        *,
        path: bytes,
        base: bytes = b"",
        capability: bool = False,
        hide_lost_found: bool = False,
        seen_dirs: set[int],
        seen_blocks: set[int],
    ) -> list[ScanEntry]:
        """Metadata of one directory's entries: :meth:`scan` one level at a time, for callers
        that expand a tree lazily (see :func:`lcow.formats.ext4.read_scan.scan_dir`).

        Raises:
            InvalidArgument: ``ino`` is not a directory.
            CorruptImage: damage in the directory or its entries' inodes.
            LimitExceeded: a configured limit is hit.
        """
        return read_scan.scan_dir(
            self,
            ino,
            path=path,
            base=base,
            capability=capability,
            hide_lost_found=hide_lost_found,
            seen_dirs=seen_dirs,
            seen_blocks=seen_blocks,
        )

    def content_size(self, top: bytes = b"/", *, hide_lost_found: bool = False) -> int:
        """Bytes of the distinct non-directory inodes below ``top`` (hard links once).

        overlay2's DiffSize of a layer whose content is ``top``: the sizes :meth:`scan` would
        report for every non-directory below ``top``, each inode counted once, with the same
        bounds, but without records or order; a name is read (and checked) only where an
        error message needs it, since names do not change a size.

        Args:
            top: the directory whose contents are summed.
            hide_lost_found: leave out ``top``'s ``lost+found`` when it is an empty directory.

        Raises:
            NotFound: ``top`` does not exist.
            CorruptImage: damage anywhere in the tree, naming inode and path.
            LimitExceeded: a configured limit is hit.
        """
        return read_scan.content_size(self, top, hide_lost_found=hide_lost_found)
