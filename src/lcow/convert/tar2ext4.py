"""tar stream -> ext4 image [-> dm-verity] [-> VHD footer] (SPEC §5.2, §6.6, §6.7, §7.1, §8).

Entries are applied in archive order with moby's unpack semantics: the later entry wins, a
directory merges into a directory, anything else replaces what was there (a directory with its
subtree), missing parents are created and take their metadata when their own entry arrives.
The output is written under a temporary name beside the destination and renamed into place only
when complete, so a failed conversion leaves nothing behind; a caller that stages the output
itself (ApplyDiff) hands in a descriptor instead, written in place.
"""

from __future__ import annotations

import errno
import logging
import os
import stat

from lcow._util.escape import quoted
from lcow._util.outbuf import no_space
from lcow.convert.entrypath import split_path
from lcow.convert.input import TarInput, TarSource, open_tar_input
from lcow.convert.options import ConvertOptions, ConvertResult
from lcow.convert.tarstream import TarEntry, TarReader
from lcow.errors import InvalidArgument, LimitExceeded, NoSpace, NotFound
from lcow.formats.ext4.layout import INODE_XATTR_SPACE, ROOT_INO
from lcow.formats.ext4.tree import encode_dev
from lcow.formats.ext4.writer import Ext4Writer
from lcow.formats.ext4.xattrs import acl_to_disk, pack_xattrs, split_name, xattr_items
from lcow.formats.whiteouts import (
    LINK_DIR,
    META_PREFIX,
    WHITEOUT_MODE,
    WHITEOUT_PREFIX,
    hidden_name,
    is_opaque_marker,
    with_opaque,
)

__all__ = ["convert_stream", "tar2ext4"]

log = logging.getLogger(__name__)

_PROGRESS_EVERY = 8 << 20

_TYPE_MODE = {
    b"0": stat.S_IFREG,
    b"7": stat.S_IFREG,  # contiguous file: a regular file everywhere that matters
    b"2": stat.S_IFLNK,
    b"3": stat.S_IFCHR,
    b"4": stat.S_IFBLK,
    b"5": stat.S_IFDIR,
    b"6": stat.S_IFIFO,
}
_TYPE_NAMES = {
    b"1": "hard link",
    b"S": "sparse",
    b"D": "GNU dump dir",
    b"M": "multi-volume",
    b"V": "volume label",
    b"N": "old GNU long name",
}


_FULL = (errno.ENOSPC, errno.EDQUOT)  # the output file system is full
_MAX_ID = 0xFFFFFFFF
_MAX_MAJOR = 0xFFF  # what new_encode_dev (ext4's i_block[1]) keeps
_MAX_MINOR = 0xFFFFF
_DEVICES = (b"3", b"4")  # tar types of character and block devices


def _shown(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


class _Converter:
    """Applies tar entries to an :class:`Ext4Writer`."""

    def __init__(self, writer: Ext4Writer, reader: TarReader, options: ConvertOptions) -> None:
        self.w = writer
        self.tree = writer.tree
        self.reader = reader
        self.opts = options
        self.inline_max = 60 + INODE_XATTR_SPACE - 4 - 20 if options.inline_data else -1
        self.hidden_links: dict[bytes, int] = {}  # AUFS .wh..wh.plnk hard-link sources
        self.entries = 0
        self.content_size = 0

    # -- names -------------------------------------------------------------------------------

    def _parts(self, name: bytes, entry: TarEntry, what: str = "path") -> list[bytes]:
        return self._split(name, entry, what)[0]

    def _split(self, name: bytes, entry: TarEntry, what: str = "path") -> tuple[list[bytes], bytes]:
        """``name``'s components and its parent's path, the name and path limits applied."""
        if self.opts.convert_slash:
            name = name.replace(b"\\", b"/")
        split = split_path(name)
        if split is None:
            shown = _shown(entry.name)
            if b".." in name.split(b"/"):
                raise InvalidArgument(f"{shown}: name contains a '..' component", subject=shown)
            raise InvalidArgument(f"{shown}: name contains a NUL byte", subject=shown)
        parts, parent, longest, length = split
        opts = self.opts
        if (  # every entry passes here: the usual case is one test
            len(parts) > opts.max_depth or longest > opts.max_name_len or length > opts.max_path_len
        ):
            self._check_path(parts, entry, what)
        return parts, parent

    def _check_path(self, parts: list[bytes], entry: TarEntry, what: str) -> None:
        """Apply the name, path and depth limits to an entry name or link target that broke
        one of them as counted by :meth:`_split` (a whiteout's uncounted prefix may save it)."""
        opts = self.opts
        if len(parts) > opts.max_depth:
            shown = _shown(entry.name)
            raise LimitExceeded(
                f"{shown}: {what} is {len(parts)} levels deep, more than the limit of "
                f"max_depth={opts.max_depth}",
                subject=shown,
            )
        # An AUFS whiteout names ".wh." + the name it hides: the prefix is not stored.
        slack = (
            len(WHITEOUT_PREFIX)
            if opts.convert_whiteouts and parts and parts[-1].startswith(WHITEOUT_PREFIX)
            else 0
        )
        length = sum(map(len, parts)) + len(parts) - slack  # "/a/b": a slash before each part
        if length > opts.max_path_len:
            shown = _shown(entry.name)
            raise LimitExceeded(
                f"{shown}: {what} of {length} bytes is longer than the limit of "
                f"max_path_len={opts.max_path_len}",
                subject=shown,
            )
        last = len(parts) - 1
        for i, part in enumerate(parts):
            if len(part) - (slack if i == last else 0) > opts.max_name_len:
                shown = _shown(entry.name)
                size = len(part) - (slack if i == last else 0)
                raise LimitExceeded(
                    f"{shown}: {what} has a component of {size} bytes, longer than the "
                    f"limit of max_name_len={opts.max_name_len}",
                    subject=shown,
                )

    # -- main loop ---------------------------------------------------------------------------

    def run(self) -> None:
        reader = self.reader
        progress = self.opts.progress
        next_report = _PROGRESS_EVERY
        max_entries = self.opts.max_entries
        for entry in reader.entries():
            self.entries += 1
            if self.entries > max_entries:
                shown = _shown(entry.name)
                raise LimitExceeded(
                    f"{shown}: more than {max_entries} entries, the limit of "
                    f"max_entries={max_entries}",
                    subject=shown,
                )
            self.content_size += entry.realsize
            try:
                self._apply(entry)
            except OSError as exc:  # a full output while this entry's data moved in the kernel
                if exc.errno not in _FULL or isinstance(exc, NoSpace):
                    raise
                raise no_space(_shown(entry.name), exc.errno) from exc
            if progress is not None and reader.consumed >= next_report:
                progress(reader.consumed)
                next_report = reader.consumed + _PROGRESS_EVERY
        reader.drain()
        if progress is not None:
            progress(reader.consumed)

    def _apply(self, entry: TarEntry) -> None:  # noqa: PLR0912 - hot loop: per tar entry, one branch per member type (SPEC §6.6), inline
        parts, parent_path = self._split(entry.name, entry)
        typeflag = entry.type
        shown = _shown(entry.name)
        if self.opts.convert_whiteouts and parts:
            base = parts[-1]
            if parts[0].startswith(META_PREFIX):
                self._aufs_meta(entry, parts, shown)
                return
            if base.startswith(WHITEOUT_PREFIX):  # inline: every entry passes here
                self._whiteout(entry, parts, base, shown)
                return
        if typeflag == b"1":
            self._hardlink(entry, parts, shown)
            return
        mode_type = _TYPE_MODE.get(typeflag)
        if mode_type is None:
            kind = _TYPE_NAMES.get(typeflag, f"type {quoted(typeflag)}")
            raise InvalidArgument(f"{shown}: unsupported tar entry type {kind}", subject=shown)
        if not parts:  # the root itself
            if mode_type != stat.S_IFDIR:
                raise InvalidArgument(f"{shown}: the root must be a directory", subject=shown)
            self._update_dir(ROOT_INO, entry)
            self.reader.skip_data(entry.size, entry)
            self.reader.finish_data(entry)
            return
        tree = self.tree
        parent = tree.parent_directory(parts, parent_path, shown)
        name = parts[-1]
        if mode_type == stat.S_IFDIR:
            existing = tree.children[parent].get(name)
            if existing is not None and existing in tree.children:
                self._update_dir(existing, entry)
            else:
                node = self._new_node(entry, stat.S_IFDIR)
                self.tree.place(parent, name, node, shown)
            self.reader.skip_data(entry.size, entry)
            self.reader.finish_data(entry)
            return
        node = self._new_node(entry, mode_type)
        if mode_type == stat.S_IFREG:
            self._file_data(node, entry, shown)
        else:
            if mode_type == stat.S_IFLNK:
                target = entry.linkname
                if not target:
                    raise InvalidArgument(
                        f"{shown}: symbolic link with an empty target", subject=shown
                    )
                if len(target) >= 4096:
                    raise InvalidArgument(
                        f"{shown}: symbolic link target longer than 4095 bytes", subject=shown
                    )
                tree.data[node] = target
                tree.size[node] = len(target)
            elif mode_type in (stat.S_IFCHR, stat.S_IFBLK):
                tree.rdev[node] = encode_dev(entry.devmajor, entry.devminor)
            self.reader.skip_data(entry.size, entry)
            self.reader.finish_data(entry)
        self.tree.place(parent, name, node, shown)

    # -- node construction -------------------------------------------------------------------

    def _check_ids(self, entry: TarEntry) -> None:
        """Owners must fit ext4's 32-bit fields, device numbers Linux's 12+20 bits."""
        if 0 <= entry.uid <= _MAX_ID and 0 <= entry.gid <= _MAX_ID and entry.type not in _DEVICES:
            return  # the usual case, checked once per entry
        checks = [("uid", entry.uid, _MAX_ID), ("gid", entry.gid, _MAX_ID)]
        if entry.type in _DEVICES:
            checks += [
                ("device major", entry.devmajor, _MAX_MAJOR),
                ("device minor", entry.devminor, _MAX_MINOR),
            ]
        for what, value, high in checks:
            if not 0 <= value <= high:
                shown = _shown(entry.name)
                raise InvalidArgument(
                    f"{shown}: {what} {value} is out of range (0..{high})", subject=shown
                )

    def _new_node(self, entry: TarEntry, mode_type: int) -> int:
        tree = self.tree
        self._check_ids(entry)
        perm = 0o777 if mode_type == stat.S_IFLNK else entry.mode
        ino = tree.new_inode(
            mode_type | perm, entry.uid, entry.gid, entry.mtime_ns, entry.atime_ns, entry.ctime_ns
        )
        if entry.xattrs:
            tree.xattrs[ino] = self._xattrs(entry)
            self._check_xattrs(ino, _shown(entry.name))
        return ino

    def _xattrs(self, entry: TarEntry) -> dict[bytes, bytes]:
        kept = {}
        opts = self.opts
        for name, value in entry.xattrs.items():  # type: ignore[union-attr]
            if len(name) > opts.max_xattr_name_len or len(value) > opts.max_xattr_value_len:
                shown = _shown(entry.name)
                limit, size, key = (
                    ("max_xattr_name_len", len(name), "name")
                    if len(name) > opts.max_xattr_name_len
                    else ("max_xattr_value_len", len(value), "value")
                )
                raise LimitExceeded(
                    f"{shown}: xattr {_shown(name)[:80]} has a {key} of {size} bytes, more than "
                    f"the limit of {limit}={getattr(opts, limit)}",
                    subject=shown,
                )
            split = split_name(name)
            if split is None:
                log.warning(
                    "%s: skipping xattr %r in an unknown namespace", _shown(entry.name), name
                )
                continue
            if split[0] in (2, 3):  # POSIX ACLs: ext4 stores its own compact form
                disk = acl_to_disk(value)
                if disk is None:
                    shown = _shown(entry.name)
                    raise InvalidArgument(
                        f"{shown}: malformed POSIX ACL in {name.decode()}", subject=shown
                    )
                value = disk
            kept[name] = value
        return kept

    def _check_xattrs(self, ino: int, shown: str) -> None:
        """Fail now, naming the entry, if the attributes cannot fit the inode and one block."""
        pack_xattrs(xattr_items(self.tree.xattrs[ino]), owner=shown)

    def _update_dir(self, ino: int, entry: TarEntry) -> None:
        """A directory entry for an existing directory: new metadata, xattrs merged."""
        tree = self.tree
        self._check_ids(entry)
        tree.mode[ino] = stat.S_IFDIR | entry.mode
        tree.uid[ino], tree.gid[ino] = entry.uid, entry.gid
        mtime = entry.mtime_ns
        tree.set_times(
            ino,
            mtime,
            mtime if entry.atime_ns is None else entry.atime_ns,
            mtime if entry.ctime_ns is None else entry.ctime_ns,
        )
        if entry.xattrs:
            merged = dict(tree.xattrs.get(ino) or {})
            merged.update(self._xattrs(entry))
            tree.xattrs[ino] = merged
            self._check_xattrs(ino, _shown(entry.name))

    def _file_data(self, node: int, entry: TarEntry, shown: str) -> None:
        reader = self.reader
        self.w.out.owner = shown  # a full file system names the entry whose bytes did not fit
        size = entry.realsize
        if entry.sparse is not None:
            placed = self.w.sparse_runs(node, entry.sparse, size, shown)
            stored = sum(length for _, length in placed)
            if stored != entry.size:
                raise InvalidArgument(
                    f"{shown}: sparse map describes {stored} bytes "
                    f"but the entry holds {entry.size}",
                    subject=shown,
                )
            for offset, length in placed:
                reader.copy_data(length, self.w.out, offset, entry)
        elif 0 < size <= self.inline_max and not entry.xattrs:
            self.tree.data[node] = reader.read_data(size, entry)
            self.tree.size[node] = size
        else:
            offset = self.w.file_runs(node, size, shown)
            if size:
                reader.copy_data(size, self.w.out, offset, entry)
        reader.finish_data(entry)

    # -- links and whiteouts -----------------------------------------------------------------

    def _hardlink(self, entry: TarEntry, parts: list[bytes], shown: str) -> None:
        if not parts:
            raise InvalidArgument(f"{shown}: hard link cannot replace the root", subject=shown)
        target_parts = self._parts(entry.linkname, entry, "hard link target")
        target: int | None
        if self.opts.convert_whiteouts and len(target_parts) == 2 and target_parts[0] == LINK_DIR:
            target = self.hidden_links.get(target_parts[1])
        else:
            target = self.tree.lookup(target_parts)
        if target is None:
            link = _shown(entry.linkname)
            raise NotFound(f"{shown}: hard link target {link} not found", subject=shown)
        if target in self.tree.children:
            link = _shown(entry.linkname)
            raise InvalidArgument(f"{shown}: hard link target {link} is a directory", subject=shown)
        parent = self.tree.directory(parts[:-1], shown)
        self.tree.link(parent, parts[-1], target, shown)
        self.reader.skip_data(entry.size, entry)
        self.reader.finish_data(entry)

    def _whiteout(self, entry: TarEntry, parts: list[bytes], base: bytes, shown: str) -> None:
        reader = self.reader
        reader.skip_data(entry.size, entry)
        reader.finish_data(entry)
        tree = self.tree
        parent = tree.directory(parts[:-1], shown)
        if is_opaque_marker(base):
            tree.xattrs[parent] = with_opaque(tree.xattrs.get(parent))
            self._check_xattrs(parent, shown)
            return
        if base.startswith(META_PREFIX):
            return  # other AUFS metadata inside a directory: not content
        hidden = hidden_name(base)
        if hidden in (b"", b".", b".."):
            what = quoted(hidden) if hidden else "an empty name"
            raise InvalidArgument(f"{shown}: whiteout of {what} is not a name", subject=shown)
        self._check_ids(entry)
        node = tree.new_inode(WHITEOUT_MODE, entry.uid, entry.gid, entry.mtime_ns)  # rdev 0/0
        tree.place(parent, hidden, node, shown)

    def _aufs_meta(self, entry: TarEntry, parts: list[bytes], shown: str) -> None:
        """``/.wh..wh.*``: only regular files in ``.wh..wh.plnk`` matter (hard-link sources)."""
        if parts[0] == LINK_DIR and len(parts) == 2 and _TYPE_MODE.get(entry.type) == stat.S_IFREG:
            node = self._new_node(entry, stat.S_IFREG)
            self._file_data(node, entry, shown)
            old = self.hidden_links.pop(parts[1], None)
            if old is not None:
                self.tree.release_unnamed(old)
            self.hidden_links[parts[1]] = node
            return
        self.reader.skip_data(entry.size, entry)
        self.reader.finish_data(entry)

    def finish(self) -> None:
        """Drop link sources that nothing linked to."""
        for node in self.hidden_links.values():
            self.tree.release_unnamed(node)
        self.hidden_links.clear()


def convert_stream(
    source: TarSource, out_fd: int, options: ConvertOptions, *, unsynced: bool = False
) -> ConvertResult:
    """Convert the tar readable from ``source`` into the empty file ``out_fd``; ``unsynced``:
    nothing syncs the image afterwards (then it is written as any file of its size would be)."""
    digests = None
    if options.vhd_footer and not options.dm_verity and os.fstat(out_fd).st_size == 0:
        from lcow.formats.vhd.identity import PieceDigests

        # The footer's id hashes the image: hashed on its way out, it is never read back.
        digests = PieceDigests()
    writer = Ext4Writer(
        out_fd,
        max_size=options.max_size,
        inline_data=options.inline_data,
        # A layer is stored, not read back now: keep its pages from piling up dirty (which
        # makes writeback throttle big layers). The verity hash reads the image right after.
        write_behind=not options.dm_verity,
        observer=digests,
        # An image synced next is best written behind early; one nobody syncs only if it is
        # big (its size is close to the tar's when that is known).
        expected_size=source.known_size() if unsynced else None,
    )
    try:
        reader = TarReader(
            source.fd, source.initial, start=source.start, end=source.end, name=source.name
        )
        conv = _Converter(writer, reader, options)
        conv.run()
        conv.finish()
        writer.out.owner = None  # what follows is the image's own metadata
        stats = writer.close()
    finally:
        writer.out.discard()
    file_size = stats.size
    root_hash = hash_offset = None
    if options.dm_verity:
        from lcow.formats.verity import append_hash_tree

        info = append_hash_tree(out_fd, stats.size)
        root_hash, hash_offset = info.root_hash_hex, info.hash_offset
        file_size = info.hash_offset + info.hash_size
    if options.vhd_footer:
        from lcow.formats.vhd.footer import FOOTER_SIZE, append_fixed_footer

        unique_id = None if digests is None else digests.unique_id(out_fd, file_size)
        append_fixed_footer(out_fd, file_size, unique_id=unique_id)
        file_size += FOOTER_SIZE
    return ConvertResult(
        entries=conv.entries,
        content_size=conv.content_size,
        image_size=stats.size,
        file_size=file_size,
        inodes=stats.used_inodes,
        blocks=stats.used_blocks,
        root_hash=root_hash,
        hash_offset=hash_offset,
    )


def tar2ext4(
    src: TarInput,
    dst: str | os.PathLike[str] | int,
    options: ConvertOptions | None = None,
    *,
    name: str | None = None,
) -> ConvertResult:
    """Convert a tar (plain, gzip or zstd) into an ext4 image file at ``dst``.

    Args:
        src: a path, a readable binary file object, a file descriptor, or a
            :class:`~lcow.convert.input.FileSlice` (a tar stored inside another file).
        dst: the output path, written under a temporary name and renamed when complete (synced
            first with ``options.fsync``); or the descriptor of an empty file the caller made
            (e.g. under its own temporary name), written in place and neither synced, renamed
            nor closed: what becomes of it is the caller's (a failed conversion leaves it
            partly written).
        options: conversion options; defaults to :class:`ConvertOptions()`.
        name: what messages about the input as a whole call it (a cut stream, a missing end
            marker); default: its path, ``<stdin>``, a file object's name or ``<stream>``.

    Returns:
        What was written.

    Raises:
        InvalidArgument: malformed or unsupported input (the message names the entry).
        LimitExceeded: the image would exceed ``options.max_size``, or another limit of
            ``options`` (entries, name, path, depth, xattr sizes) is passed.
        NotFound: a hard link names a missing target.
        NoSpace: the output's file system filled up; ``entry`` names the tar entry whose data
            did not fit (``None``: the image's own metadata, the message then names ``dst``).
        Busy: no conversion slot became free within ``options.slot_timeout``
            (:mod:`lcow.convert.limits`).
    """
    from lcow._util.atomic import output_to
    from lcow.convert.limits import conversion_slot

    opts = options or ConvertOptions()
    shown = f"output descriptor {dst}" if isinstance(dst, int) else os.fspath(dst)
    with (
        conversion_slot(opts.slot_timeout, what=shown),
        open_tar_input(src, name=name) as source,
    ):
        try:
            with output_to(dst, fsync=opts.fsync) as out_fd:
                # An output named by path is synced here or by nobody (a descriptor's owner
                # may sync it).
                unsynced = not opts.fsync and not isinstance(dst, int)
                result = convert_stream(source, out_fd, opts, unsynced=unsynced)
                source.check()  # a failed source discards the output, never commits it
        except OSError as exc:  # the output is gone already: say whose write did not fit
            if exc.errno not in _FULL or (isinstance(exc, NoSpace) and exc.entry is not None):
                raise
            raise NoSpace(
                f"{shown}: no space left on device for the image's metadata",
                subject=shown,
                code=exc.errno,
            ) from exc
        return result
