"""ext4 layer image -> tar stream, the Diff of a read-only layer (SPEC §3 Diff, §5.3).

Entries come out depth first with names sorted, directories before their contents, relative
names without ``./``, numeric owners, sub-second mtimes and xattrs in PAX records, a repeated
inode as a hard link to its first name. Overlay whiteouts turn back into AUFS form: a 0/0
character device becomes an empty ``.wh.<name>`` file (mode 0600), an opaque directory is
followed by ``<dir>/.wh..wh..opq``. An empty root ``lost+found`` (every ext4 has one) is left out.

File data goes from the image to the output in the kernel where it can: ``copy_file_range`` to
a regular file, ``splice`` to a pipe; small files and anything else through one buffer.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, cast

from lcow.convert.tarwriter import END_OF_ARCHIVE, TarHeader, padding
from lcow.formats.ext4.read_types import Entry
from lcow.formats.ext4.reader import Ext4Reader

__all__ = ["ExportResult", "export_layer"]

OPAQUE_XATTR = b"trusted.overlay.opaque"
_KERNEL_COPY_MIN = 256 << 10
_FLUSH_AT = 1 << 20
_ZERO_CHUNK = bytes(1 << 20)
_TYPEFLAG = {
    stat.S_IFREG: b"0",
    stat.S_IFDIR: b"5",
    stat.S_IFLNK: b"2",
    stat.S_IFCHR: b"3",
    stat.S_IFBLK: b"4",
    stat.S_IFIFO: b"6",
}


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    entries: int  # tar members written
    bytes_written: int


class _Sink:
    """Buffered output with kernel-side copies into a descriptor when one is available."""

    def __init__(self, out: int | BinaryIO | Callable[[bytes], object]) -> None:
        self.fd = -1
        self.kind = "write"
        self._write: Callable[[bytes], object] | None = None
        if isinstance(out, int):
            self.fd = out
        elif callable(out) and not hasattr(out, "write"):
            self._write = out
        else:
            f = cast(BinaryIO, out)
            try:
                f.flush()
                self.fd = f.fileno()
            except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
                self._write = f.write
        if self.fd >= 0:
            mode = os.fstat(self.fd).st_mode
            self.kind = "file" if stat.S_ISREG(mode) else "pipe" if stat.S_ISFIFO(mode) else "fd"
        self._buf = bytearray()
        self.total = 0

    def write(self, data: bytes | memoryview) -> None:
        self._buf += data
        if len(self._buf) >= _FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        self.total += len(self._buf)
        if self._write is not None:
            self._write(bytes(self._buf))
        else:
            view = memoryview(self._buf)
            while view:
                view = view[os.write(self.fd, view) :]
            view.release()
        self._buf.clear()

    def copy_from(self, src_fd: int, offset: int, length: int) -> None:
        """Append ``length`` bytes read from ``src_fd`` at ``offset``."""
        if length < _KERNEL_COPY_MIN or self.kind not in ("file", "pipe"):
            while length:
                chunk = os.pread(src_fd, min(length, 1 << 20), offset)
                if not chunk:
                    raise EOFError(f"image ends inside a file's data at byte {offset}")
                self.write(chunk)
                offset += len(chunk)
                length -= len(chunk)
            return
        self.flush()
        self.total += length
        while length:
            if self.kind == "file":
                n = os.copy_file_range(src_fd, self.fd, length, offset)
            else:
                n = os.splice(src_fd, self.fd, length, offset_src=offset)
            if n == 0:
                raise EOFError(f"image ends inside a file's data at byte {offset}")
            offset += n
            length -= n

    def zeros(self, length: int) -> None:
        while length:
            n = min(length, len(_ZERO_CHUNK))
            self.write(_ZERO_CHUNK[:n])
            length -= n


def _is_whiteout(entry: Entry) -> bool:
    return stat.S_ISCHR(entry.mode) and entry.rdev == 0


def export_layer(
    reader: Ext4Reader,
    out: int | BinaryIO | Callable[[bytes], object],
    *,
    aufs_whiteouts: bool = True,
    top: bytes = b"/",
) -> ExportResult:
    """Write the whole filesystem in ``reader`` as an uncompressed tar to ``out``.

    Args:
        reader: the layer image.
        out: a descriptor, a binary file object, or a ``write(bytes)`` callable.
        aufs_whiteouts: turn overlay whiteouts and opaque directories into AUFS markers.
        top: the directory whose contents are the layer (``/upper`` in a sandbox).

    Returns:
        Counts of what was written.
    """
    sink = _Sink(out)
    try:
        src_fd = reader.source.fileno()
    except (OSError, ValueError, NotImplementedError):
        src_fd = -1  # in-memory image: data goes through Python
    first_name: dict[int, bytes] = {}  # inode -> first exported name (hard links)
    members = 0
    walk = reader.walk(top)
    next(walk)  # the top itself is not a member
    strip = len(top.rstrip(b"/")) + 1
    lost_found = top == b"/"
    for entry in walk:
        rel = entry.path[strip:]
        mode = entry.mode
        fmt = stat.S_IFMT(mode)
        if (
            lost_found
            and fmt == stat.S_IFDIR
            and rel == b"lost+found"
            and entry.nlink == 2
            and _is_empty(reader, entry)
        ):
            continue
        xattrs = entry.xattrs
        if aufs_whiteouts and _is_whiteout(entry):
            parent, _, base = rel.rpartition(b"/")
            name = (parent + b"/" if parent else b"") + b".wh." + base
            sink.write(
                TarHeader.encode(
                    name,
                    typeflag=b"0",
                    mode=0o600,
                    uid=entry.uid,
                    gid=entry.gid,
                    size=0,
                    mtime_ns=entry.mtime_ns,
                    xattrs=xattrs or None,
                )
            )
            members += 1
            continue
        if fmt != stat.S_IFDIR and entry.nlink > 1:
            first = first_name.get(entry.ino)
            if first is not None:
                sink.write(
                    TarHeader.encode(
                        rel,
                        typeflag=b"1",
                        mode=mode,
                        uid=entry.uid,
                        gid=entry.gid,
                        size=0,
                        mtime_ns=entry.mtime_ns,
                        linkname=first,
                    )
                )
                members += 1
                continue
            first_name[entry.ino] = rel
        opaque = aufs_whiteouts and fmt == stat.S_IFDIR and xattrs.get(OPAQUE_XATTR) == b"y"
        if opaque:
            xattrs = {k: v for k, v in xattrs.items() if k != OPAQUE_XATTR}
        typeflag = _TYPEFLAG.get(fmt)
        if typeflag is None:
            continue  # sockets have no tar form
        size = entry.size if fmt == stat.S_IFREG else 0
        major = minor = 0
        if fmt in (stat.S_IFCHR, stat.S_IFBLK):
            major, minor = os.major(entry.rdev), os.minor(entry.rdev)
        sink.write(
            TarHeader.encode(
                rel + b"/" if fmt == stat.S_IFDIR else rel,
                typeflag=typeflag,
                mode=mode,
                uid=entry.uid,
                gid=entry.gid,
                size=size,
                mtime_ns=entry.mtime_ns,
                linkname=entry.link_target or b"",
                devmajor=major,
                devminor=minor,
                xattrs=xattrs or None,
            )
        )
        members += 1
        if size:
            _copy_contents(reader, entry, sink, src_fd)
            sink.write(padding(size))
        if opaque:
            sink.write(
                TarHeader.encode(
                    rel + b"/.wh..wh..opq",
                    typeflag=b"0",
                    mode=mode & 0o7777,
                    uid=entry.uid,
                    gid=entry.gid,
                    size=0,
                    mtime_ns=0,
                )
            )
            members += 1
    sink.write(END_OF_ARCHIVE)
    sink.flush()
    return ExportResult(entries=members, bytes_written=sink.total)


def _is_empty(reader: Ext4Reader, entry: Entry) -> bool:
    return next(iter(reader.iterdir(entry.inode, path=entry.path)), None) is None


def _copy_contents(reader: Ext4Reader, entry: Entry, sink: _Sink, src_fd: int) -> None:
    if src_fd < 0:  # no host file (in-memory image): read through the file object
        with reader.open_file(entry.inode, path=entry.path) as fh:
            while chunk := fh.read(1 << 20):
                sink.write(chunk)
        return
    done = 0
    for span in reader.spans(entry.inode, path=entry.path):
        if span.offset > done:
            sink.zeros(span.offset - done)
        if span.data is not None:
            sink.write(span.data)
        elif span.host_offset is not None:
            sink.copy_from(src_fd, span.host_offset, span.length)
        else:
            sink.zeros(span.length)
        done = span.offset + span.length
    if done < entry.size:
        sink.zeros(entry.size - done)
