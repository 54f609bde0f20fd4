"""ext4 reader: the lean metadata scan behind Changes and DiffSize (SPEC §5.6-§5.8; issue 3).

A full walk (:meth:`Ext4Reader.walk`) decodes every inode into an :class:`Inode`, reads xattrs
and link targets and builds an :class:`Entry` per path — what an export needs. Changes and
DiffSize compare far less, and on a 70,000-entry layer the difference is most of their cost.
Here the common inode is decoded straight from the bulk-read inode table
(:class:`~lcow.formats.ext4.read_itable.InodeTable`) into the few fields compared, directories
are listed without per-entry objects, and xattrs are read only where they can matter: a
directory's (for the overlay opaque flag) and, on request, ``security.capability`` of an inode
that has any. Anything unusual — 128-byte inodes, inline or xattr-carrying directories, deep
extent trees, checksum verification, a damaged inode — takes the checked path
(:meth:`Ext4Reader.used_inode`), which raises the same precise errors as a walk. The walk's
bounds hold: directories reached twice, shared directory blocks and nesting deeper than
``limits.max_depth`` stop it.

The functions take a :class:`~lcow.formats.ext4.read_volume.Volume` and use the reader's lower
modules (lookups, directory listings, xattrs); the facade :class:`Ext4Reader` exposes them as
:meth:`~Ext4Reader.scan`, :meth:`~Ext4Reader.scan_dir` and :meth:`~Ext4Reader.content_size`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from lcow.errors import InvalidArgument, LimitExceeded
from lcow.formats.ext4.layout import EXT4_XATTR_MAGIC, IncompatFeature, InodeFlag
from lcow.formats.ext4.read_content import xattrs as inode_xattrs
from lcow.formats.ext4.read_directory import children, iterdir
from lcow.formats.ext4.read_extents import DataRun, simple_extent_runs
from lcow.formats.ext4.read_inode import (
    GOOD_OLD_INODE_SIZE,
    LEAN_INODE,
    SIZE_INODE,
    VALID_FILE_TYPES,
    Inode,
    decode_rdev,
)
from lcow.formats.ext4.read_itable import CHUNK
from lcow.formats.ext4.read_listing import list_inodes, list_names
from lcow.formats.ext4.read_lookup import lookup, normal_path
from lcow.formats.ext4.read_types import ScanEntry
from lcow.formats.ext4.read_volume import Volume, corrupt
from lcow.formats.whiteouts import is_opaque

__all__ = ["content_size", "scan", "scan_dir"]

_NS = 1_000_000_000
_EXTRA_MTIME = 12  # i_extra_isize bytes that include i_mtime_extra
_INLINE_DATA_FL = int(InodeFlag.INLINE_DATA)
_EXTENTS_FL = int(InodeFlag.EXTENTS)
_DIR_FAST_FLAGS = _EXTENTS_FL | _INLINE_DATA_FL  # a fast-scanned directory has extents only
_DEVICE_TYPES = (stat.S_IFCHR, stat.S_IFBLK)
_S_IFDIR = stat.S_IFDIR
_XATTR_MAGIC_BYTES = EXT4_XATTR_MAGIC.to_bytes(4, "little")
_CAPABILITY_XATTR = b"security.capability"
_tuple_new = tuple.__new__  # builds ScanEntry records without the NamedTuple's Python __new__


def _too_deep(vol: Volume, ino: int, path: bytes) -> LimitExceeded:
    return LimitExceeded(
        f"{vol.name}: inode {ino} ({os.fsdecode(path)}): nesting deeper than "
        f"{vol.limits.max_depth} directories"
    )


def _fast(vol: Volume) -> bool:
    """Whether the inline decoder may be used (large inodes, no checksum verification)."""
    sb = vol.superblock
    verify = vol.verify_checksums and sb.has_metadata_csum
    return sb.s_inode_size > GOOD_OLD_INODE_SIZE and not verify


# -- scan ------------------------------------------------------------------------------------


def scan(
    vol: Volume,
    top: bytes = b"/",
    *,
    capability: bool = False,
    relative: bool = False,
    hide_lost_found: bool = False,
) -> Iterator[ScanEntry]:
    """See :meth:`Ext4Reader.scan`."""
    root = lookup(vol, top)
    top_path = normal_path(top)
    shown = b"/" if relative else top_path
    yield _checked_entry(vol, root, top_path, shown, capability)
    if not root.is_dir:
        return
    seen_blocks: set[int] = set()
    listing = children(vol, root, path=top_path, seen_blocks=seen_blocks)
    if hide_lost_found:
        listing = _without_empty_lost_found(vol, listing, top_path)
    yield from _scan_below(
        vol,
        listing,
        shown,
        b"" if not relative or top_path == b"/" else top_path,
        capability=capability,
        recursive=True,
        seen_dirs={root.ino},
        seen_blocks=seen_blocks,
    )


def scan_dir(  # noqa: PLR0913 - one lazy-walk step: the caller carries seen_dirs/seen_blocks across calls; options keyword-only
    vol: Volume,
    ino: int,
    *,
    path: bytes,
    base: bytes = b"",
    capability: bool = False,
    hide_lost_found: bool = False,
    seen_dirs: set[int],
    seen_blocks: set[int],
) -> list[ScanEntry]:
    """Metadata of the entries of one directory (not the directory, not below them).

    :func:`scan` one level at a time, for callers that expand a tree lazily (a merged view of
    layers reads only the directories a comparison reaches). The caller keeps ``seen_dirs`` and
    ``seen_blocks`` across calls on one image, so loops and shared blocks are still caught, and
    bounds the depth itself.

    Args:
        vol: the filesystem.
        ino: the directory's inode.
        path: its path as the entries should show it (absolute form).
        base: what ``path`` lacks to be the path in the image (``b"/upper"`` for a sandbox's
            content; error messages name image paths).
        capability: fill :attr:`ScanEntry.capability`.
        hide_lost_found: leave out an empty ``lost+found`` entry.
        seen_dirs: directory inodes listed as entries so far (updated).
        seen_blocks: directory blocks read so far (updated).

    Returns:
        The entries, names sorted.

    Raises:
        InvalidArgument: ``ino`` is not a directory.
        CorruptImage: damage in the directory or its entries' inodes.
        LimitExceeded: a configured limit is hit.
    """
    full = base + path if path != b"/" else base or b"/"
    inode = vol.used_inode(ino, path=full)
    if not inode.is_dir:
        raise InvalidArgument(f"{vol.name}: inode {ino} ({os.fsdecode(full)}): not a directory")
    listing = children(vol, inode, path=full, seen_blocks=seen_blocks)
    if hide_lost_found:
        listing = _without_empty_lost_found(vol, listing, full)
    below = _scan_below(
        vol,
        listing,
        path,
        base,
        capability=capability,
        recursive=False,
        seen_dirs=seen_dirs,
        seen_blocks=seen_blocks,
    )
    return list(below)


def _scan_below(  # noqa: PLR0912, PLR0913, PLR0915 - hot loop: decodes each entry's inode inline before the checked fallback; a split adds a call per entry
    vol: Volume,
    listing: list[tuple[bytes, int]],
    shown: bytes,
    base: bytes,
    *,
    capability: bool,
    recursive: bool,
    seen_dirs: set[int],
    seen_blocks: set[int],
) -> Iterator[ScanEntry]:
    """The entries of ``listing`` (a directory shown as ``shown``; ``base + shown`` is its
    path in the image) and, if ``recursive``, everything below them, depth first."""
    stack = [((b"" if shown == b"/" else shown) + b"/", iter(listing))]
    sb = vol.superblock
    max_depth = vol.limits.max_depth
    isz = sb.s_inode_size
    ipg = sb.s_inodes_per_group
    table = vol.inode_table
    chunks = table.chunks
    # The common case is decoded inline: a used, well-formed inode — for a directory, one
    # without xattrs whose extent tree is only its root. Anything else takes the checked path
    # (vol.used_inode), which raises the precise error.
    fast = _fast(vol)
    unpack = LEAN_INODE.unpack_from
    bad_flags = 0 if sb.incompat(IncompatFeature.INLINE_DATA) else _INLINE_DATA_FL
    max_extra = isz - GOOD_OLD_INODE_SIZE
    xattr_room = max_extra - 4  # an in-inode xattr magic fits up to here
    acl_hi = 1 << 32 if sb.incompat(IncompatFeature.BIT64) else 0  # else the high half is unused
    bs = vol.block_size
    blocks_count = sb.s_blocks_count
    first_data_block = sb.s_first_data_block
    max_dir_size = vol.limits.max_dir_size
    new = _tuple_new
    while stack:
        dir_prefix, entries = stack[-1]
        for name, ino in entries:
            path = dir_prefix + name
            runs: list[DataRun] | None = None
            if fast:
                group, index = divmod(ino - 1, ipg)
                chunk, off = divmod(index * isz, CHUNK)
                data = chunks.get((group, chunk))
                if data is None:
                    data, off = table.slot(ino, base + path)
                (
                    mode, uid, size, mtime, gid, links, flags, dev_old, dev_new,
                    acl, size_hi, acl_high, uid_hi, gid_hi, extra, mtime_x,
                ) = unpack(data, off)  # fmt: skip
                fmt = mode & 0o170000
                ok = (
                    fmt in VALID_FILE_TYPES
                    and links
                    and not flags & bad_flags
                    and not extra & 3
                    and extra <= max_extra
                )
                has_xattrs = False
                if ok and (capability or fmt == _S_IFDIR):
                    has_xattrs = bool(
                        acl | acl_high * acl_hi
                        or (
                            extra <= xattr_room
                            and data[off + 128 + extra : off + 132 + extra] == _XATTR_MAGIC_BYTES
                        )
                    )
                    if fmt == _S_IFDIR:
                        size |= size_hi << 32
                        if (
                            not has_xattrs
                            and flags & _DIR_FAST_FLAGS == _EXTENTS_FL
                            and size <= max_dir_size
                        ):
                            runs = simple_extent_runs(
                                data[off + 40 : off + 100],
                                -(-size // bs),
                                blocks_count,
                                first_data_block,
                            )
                        ok = runs is not None
                if ok:
                    secs = mtime - 0x100000000 if mtime & 0x80000000 else mtime
                    if extra >= _EXTRA_MTIME:
                        secs += (mtime_x & 3) << 32
                        mtime_ns = secs * _NS + (mtime_x >> 2)
                    else:
                        mtime_ns = secs * _NS
                    yield new(
                        ScanEntry,
                        (
                            path,
                            ino,
                            mode,
                            uid | uid_hi << 16,
                            gid | gid_hi << 16,
                            size | size_hi << 32,
                            mtime_ns,
                            decode_rdev(dev_old, dev_new) if fmt in _DEVICE_TYPES else 0,
                            links,
                            False,
                            _capability(vol, ino, base + path)
                            if has_xattrs and capability
                            else None,
                        ),
                    )
                    if runs is None:
                        continue
            if runs is None:
                inode = vol.used_inode(ino, path=base + path)
                yield _checked_entry(vol, inode, base + path, path, capability)
                if not inode.is_dir:
                    continue
            if ino in seen_dirs:
                raise corrupt(vol, ino, base + path, "directory reached twice (loop)")
            seen_dirs.add(ino)
            if not recursive:
                continue
            if len(stack) >= max_depth:
                raise _too_deep(vol, ino, base + path)
            if runs is None:
                listing = children(vol, inode, path=base + path, seen_blocks=seen_blocks)
            else:
                listing = list_names(vol, runs, ino=ino, path=base + path, seen_blocks=seen_blocks)
            stack.append((path + b"/", iter(listing)))
            break
        else:
            stack.pop()


def _without_empty_lost_found(
    vol: Volume, listing: list[tuple[bytes, int]], top_path: bytes
) -> list[tuple[bytes, int]]:
    for i, (name, ino) in enumerate(listing):
        if name == b"lost+found":
            path = (b"" if top_path == b"/" else top_path) + b"/lost+found"
            inode = vol.used_inode(ino, path=path)
            if inode.is_dir and next(iter(iterdir(vol, inode, path=path)), None) is None:
                return listing[:i] + listing[i + 1 :]
            break
    return listing


def _checked_entry(
    vol: Volume, inode: Inode, path: bytes, shown: bytes, capability: bool
) -> ScanEntry:
    """The :class:`ScanEntry` of an inode decoded by the checked path."""
    opaque = False
    cap = None
    if inode.is_dir or capability:
        xattrs = inode_xattrs(vol, inode, path=path)
        opaque = inode.is_dir and is_opaque(xattrs)
        cap = xattrs.get(_CAPABILITY_XATTR) if capability else None
    return ScanEntry(
        shown,
        inode.ino,
        inode.mode,
        inode.uid,
        inode.gid,
        inode.size,
        inode.mtime_ns,
        inode.rdev,
        inode.nlink,
        opaque,
        cap,
    )


def _capability(vol: Volume, ino: int, path: bytes) -> bytes | None:
    inode = vol.used_inode(ino, path=path)
    return inode_xattrs(vol, inode, path=path).get(_CAPABILITY_XATTR)


# -- content size ------------------------------------------------------------------------------


def content_size(  # noqa: PLR0912, PLR0915 - hot loop: decodes each inode's size inline over the tree; a split adds a call per inode
    vol: Volume, top: bytes = b"/", *, hide_lost_found: bool = False
) -> int:
    """See :meth:`Ext4Reader.content_size`."""
    if not _fast(vol):
        seen: set[int] = set()
        total = 0
        walk = scan(vol, top, hide_lost_found=hide_lost_found)
        next(walk)
        for e in walk:
            if not stat.S_ISDIR(e.mode) and e.ino not in seen:
                seen.add(e.ino)
                total += e.size
        return total
    root = lookup(vol, top)
    top_path = normal_path(top)
    if not root.is_dir:
        return 0
    seen_dirs = {root.ino}
    seen_blocks: set[int] = set()
    counted: set[int] = set()
    named = children(vol, root, path=top_path, seen_blocks=seen_blocks)
    if hide_lost_found:
        named = _without_empty_lost_found(vol, named, top_path)
    # The directory being summed: its path, and how to find an entry's name for a message.
    dir_path = top_path
    dir_ino, dir_runs = root.ino, None
    inos = [ino for _, ino in named]
    names = {ino: name for name, ino in named}
    # Directories still to read: (path, depth, inode, runs or None for the checked path).
    pending: list[tuple[bytes, int, int, list[DataRun] | None]] = []
    sb = vol.superblock
    max_depth = vol.limits.max_depth
    isz = sb.s_inode_size
    ipg = sb.s_inodes_per_group
    table = vol.inode_table
    chunks = table.chunks
    unpack = SIZE_INODE.unpack_from
    bad_flags = 0 if sb.incompat(IncompatFeature.INLINE_DATA) else _INLINE_DATA_FL
    max_extra = isz - GOOD_OLD_INODE_SIZE
    bs = vol.block_size
    blocks_count = sb.s_blocks_count
    first_data_block = sb.s_first_data_block
    max_dir_size = vol.limits.max_dir_size
    total = 0
    depth = 1
    while True:
        for ino in inos:
            if ino in counted:
                continue
            runs = None
            group, index = divmod(ino - 1, ipg)
            chunk, off = divmod(index * isz, CHUNK)
            data = chunks.get((group, chunk))
            if data is None:
                data, off = table.slot(ino, dir_path)
            mode, size, links, flags, size_hi, extra = unpack(data, off)
            fmt = mode & 0o170000
            if (
                fmt in VALID_FILE_TYPES
                and links
                and not flags & bad_flags
                and not extra & 3
                and extra <= max_extra
            ):
                if fmt != _S_IFDIR:
                    counted.add(ino)
                    total += size | size_hi << 32
                    continue
                size |= size_hi << 32
                if flags & _DIR_FAST_FLAGS == _EXTENTS_FL and size <= max_dir_size:
                    runs = simple_extent_runs(
                        data[off + 40 : off + 100], -(-size // bs), blocks_count, first_data_block
                    )
            name = names.get(ino)
            if name is None:  # rare: name the entry with a second, named read of its directory
                again: list[DataRun] = dir_runs or []
                named = list_names(vol, again, ino=dir_ino, path=dir_path, seen_blocks=set())
                names = {i: n for n, i in named}
                name = names[ino]
            path = (b"" if dir_path == b"/" else dir_path) + b"/" + name
            if runs is None:
                inode = vol.used_inode(ino, path=path)
                if not inode.is_dir:
                    counted.add(ino)
                    total += inode.size
                    continue
            if ino in seen_dirs:
                raise corrupt(vol, ino, path, "directory reached twice (loop)")
            seen_dirs.add(ino)
            if depth >= max_depth:
                raise _too_deep(vol, ino, path)
            pending.append((path, depth + 1, ino, runs))
        if not pending:
            return total
        dir_path, depth, dir_ino, dir_runs = pending.pop()
        if dir_runs is None:  # listed by the checked path, with names
            inode = vol.used_inode(dir_ino, path=dir_path)
            named = children(vol, inode, path=dir_path, seen_blocks=seen_blocks)
            inos = [ino for _, ino in named]
            names = {ino: name for name, ino in named}
        else:
            seen = seen_blocks
            inos, names = list_inodes(vol, dir_runs, ino=dir_ino, path=dir_path, seen_blocks=seen)
