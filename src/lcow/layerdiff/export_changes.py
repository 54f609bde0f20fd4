"""Export a list of changes as a layer tar, like moby's ``archive.ExportChanges`` (SPEC §3 Diff).

Deleted paths become ``.wh.<name>`` markers; added and modified entries are written from the
view that holds them, directories before their contents, hard links kept within the export.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import BinaryIO

from lcow.convert.tarwriter import END_OF_ARCHIVE, TYPEFLAGS, TarHeader, as_writer, padding
from lcow.errors import CorruptImage
from lcow.formats.whiteouts import whiteout_path, without_opaque
from lcow.layerdiff.changes import Change, ChangeKind, LayerContent, MergedView

__all__ = ["export_changes"]


def export_changes(
    view: MergedView,
    contents: list[LayerContent],
    changes: list[Change],
    out: BinaryIO | int | Callable[[bytes], object],
) -> None:
    """Write ``changes`` of ``view`` (built from ``contents``, nearest first) as a tar."""
    write = as_writer(out)
    first_name: dict[tuple[int, int], bytes] = {}
    for change in sorted(changes, key=lambda c: c.path):
        path = os.fsencode(change.path)
        rel = path.lstrip(b"/")
        if change.kind == ChangeKind.DELETE:
            write(
                TarHeader.encode(
                    whiteout_path(rel), typeflag=b"0", mode=0o600, uid=0, gid=0, size=0, mtime_ns=0
                )
            )
            continue
        meta = view.lookup(path)
        if meta is None:
            continue
        reader, top = contents[meta.layer]
        assert reader is not None
        inode = reader.inode(meta.ino)
        source_path = top.rstrip(b"/") + path
        entry = reader.entry(inode, source_path)
        fmt = stat.S_IFMT(entry.mode)
        typeflag = TYPEFLAGS.get(fmt)
        if typeflag is None:
            continue
        xattrs = without_opaque(entry.xattrs) or None
        key = (meta.layer, meta.ino)
        if fmt != stat.S_IFDIR and entry.nlink > 1:
            if key in first_name:
                write(
                    TarHeader.encode(
                        rel,
                        typeflag=b"1",
                        mode=entry.mode,
                        uid=entry.uid,
                        gid=entry.gid,
                        size=0,
                        mtime_ns=entry.mtime_ns,
                        linkname=first_name[key],
                    )
                )
                continue
            first_name[key] = rel
        size = entry.size if fmt == stat.S_IFREG else 0
        write(
            TarHeader.encode(
                rel + b"/" if fmt == stat.S_IFDIR else rel,
                typeflag=typeflag,
                mode=entry.mode,
                uid=entry.uid,
                gid=entry.gid,
                size=size,
                mtime_ns=entry.mtime_ns,
                linkname=entry.link_target or b"",
                devmajor=os.major(entry.rdev) if fmt in (stat.S_IFCHR, stat.S_IFBLK) else 0,
                devminor=os.minor(entry.rdev) if fmt in (stat.S_IFCHR, stat.S_IFBLK) else 0,
                xattrs=xattrs,
            )
        )
        if size:
            with reader.open_file(inode, path=source_path) as fh:
                left = size
                while left:
                    chunk = fh.read(min(left, 1 << 20))
                    if not chunk:
                        raise CorruptImage(
                            f"{reader.name}: {change.path}: image ends inside the file",
                            subject=change.path,
                        )
                    write(chunk)
                    left -= len(chunk)
            write(padding(size))
    write(END_OF_ARCHIVE)
