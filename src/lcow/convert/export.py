"""ext4 layer image -> tar stream, the Diff of a read-only layer (SPEC §3 Diff, §5.3).

Entries come out depth first with names sorted, directories before their contents, relative
names without ``./``, numeric owners, sub-second mtimes and xattrs in PAX records, a repeated
inode as a hard link to its first name. Overlay whiteouts turn back into AUFS form: a 0/0
character device becomes an empty ``.wh.<name>`` file (mode 0600), an opaque directory is
followed by ``<dir>/.wh..wh..opq``. An empty root ``lost+found`` (every ext4 has one) is left out.

File data goes from the image to the output in the kernel where it can: ``copy_file_range`` to
a regular file, ``splice`` to a pipe; small files are read straight into the output buffer
(``preadv``), which is written with one system call per MiB.

Speed matters here (issue 3 measures Diff against the kernel's loop mount + ``tar -c``), so the
loop works on decoded inodes rather than :class:`~lcow.formats.ext4.read_types.Entry` objects,
and the common tar header — a short name with at most a nanosecond-mtime PAX record — is built
by :func:`_fast_header`, which produces exactly the bytes of
:meth:`~lcow.convert.tarwriter.TarHeader.encode` (the general encoder used for everything else).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import stat
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, cast

from lcow.convert.tarwriter import END_OF_ARCHIVE, TYPEFLAGS, TarHeader, padding
from lcow.errors import CorruptImage
from lcow.formats.ext4.read_inode import Inode
from lcow.formats.ext4.reader import Ext4Reader
from lcow.formats.whiteouts import (
    is_opaque,
    is_overlay_whiteout,
    opaque_marker_path,
    whiteout_path,
    without_opaque,
)

__all__ = ["ExportResult", "export_layer"]

_KERNEL_COPY_MIN = 256 << 10
_BUF_SIZE = 1 << 20
_PIPE_SIZE = 1 << 20  # asked for an output pipe, so the reader drains 1 MiB per wakeup
_ZERO_CHUNK = bytes(1 << 20)
_ZERO_VIEW = memoryview(_ZERO_CHUNK)
_S_IFMT = 0o170000
_S_IFREG = stat.S_IFREG
_S_IFDIR = stat.S_IFDIR
_S_IFLNK = stat.S_IFLNK
_DEVICES = (stat.S_IFCHR, stat.S_IFBLK)
_NS = 1_000_000_000
_MAX_OCTAL_7 = 0o7777777
_MAX_OCTAL_11 = 0o77777777777
_USTAR_MAGIC = b"ustar\x0000"
_CHKSUM_BLANK = b"        "
_HEAD_PAD = bytes(100)
_UGNAME = bytes(64)  # uname and gname: empty
_TAIL = bytes(155 + 12)  # prefix (empty) and the block's padding


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
            if self.kind == "pipe":
                with contextlib.suppress(OSError):  # a bigger pipe is only an optimisation
                    if fcntl.fcntl(self.fd, fcntl.F_GETPIPE_SZ) < _PIPE_SIZE:
                        fcntl.fcntl(self.fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        self._buf = bytearray(_BUF_SIZE)
        self._view = memoryview(self._buf)
        self._pos = 0
        self.total = 0

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data``."""
        pos = self._pos
        end = pos + len(data)
        if end > _BUF_SIZE:
            self.flush()
            if len(data) >= _BUF_SIZE:
                self._emit(data)
                return
            pos, end = 0, len(data)
        self._buf[pos:end] = data
        self._pos = end

    def read_from(self, src_fd: int, offset: int, length: int) -> None:
        """Append ``length`` bytes of ``src_fd`` at ``offset``, read straight into the buffer."""
        while length:
            if self._pos == _BUF_SIZE:
                self.flush()
            pos = self._pos
            n = min(length, _BUF_SIZE - pos)
            got = os.preadv(src_fd, [self._view[pos : pos + n]], offset)
            if got <= 0:
                raise EOFError(f"image ends inside a file's data at byte {offset}")
            self._pos = pos + got
            offset += got
            length -= got

    def flush(self) -> None:
        """Write out the buffer."""
        if self._pos:
            self._emit(self._view[: self._pos])
            self._pos = 0

    def _emit(self, data: bytes | memoryview) -> None:
        self.total += len(data)
        if self._write is not None:
            self._write(bytes(data))
            return
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def copy_from(self, src_fd: int, offset: int, length: int) -> None:
        """Append ``length`` bytes read from ``src_fd`` at ``offset``."""
        if length < _KERNEL_COPY_MIN or self.kind not in ("file", "pipe"):
            self.read_from(src_fd, offset, length)
            return
        self.flush()
        while length:
            try:
                if self.kind == "file":
                    n = os.copy_file_range(src_fd, self.fd, length, offset)
                else:
                    n = os.splice(src_fd, self.fd, length, offset_src=offset)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                self.kind = "fd"  # the kernel cannot copy between these two: use the buffer
                self.read_from(src_fd, offset, length)
                return
            if n == 0:
                raise EOFError(f"image ends inside a file's data at byte {offset}")
            self.total += n
            offset += n
            length -= n

    def zeros(self, length: int) -> None:
        """Append ``length`` zero bytes."""
        while length:
            n = min(length, len(_ZERO_CHUNK))
            self.write(_ZERO_VIEW[:n])
            length -= n


def _checksum(block: bytes) -> int:
    """Sum of a header's bytes with the checksum field blank: two exact adler32 sums (each
    half is at most 256 x 255 < 65521, so no modular wrap)."""
    return (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2


def _ustar(  # noqa: PLR0913, PLR0917 - hot loop: per exported member; ustar fields positional to skip keyword binding
    name: bytes, typeflag: bytes, mode: int, uid: int, gid: int, size: int, mtime: int
) -> bytes:
    """A ustar header with a short name, no link name and no device numbers."""
    head = (
        name
        + _HEAD_PAD[len(name) :]
        + b"%07o\0%07o\0%07o\0%011o\0%011o\0"
        % (
            mode,
            uid,
            gid,
            size,
            mtime,
        )
    )
    tail = typeflag + _HEAD_PAD + _USTAR_MAGIC + _UGNAME + b"0000000\x000000000\x00" + _TAIL
    chk = _checksum(head + _CHKSUM_BLANK + tail)
    return head + b"%06o\0 " % chk + tail


def _pax_record(key: bytes, value: bytes) -> bytes:
    """One PAX record ``"<len> <key>=<value>\\n"``, its length counting itself."""
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return b"%d" % n + body


def _fast_header(  # noqa: PLR0913, PLR0917 - hot loop: the per-member fast path; header fields positional to skip keyword binding
    name: bytes, typeflag: bytes, mode: int, uid: int, gid: int, size: int, mtime_ns: int
) -> bytes | None:
    """:meth:`TarHeader.encode`'s bytes for the common member, or ``None`` when the member
    needs more than a nanosecond mtime in PAX (long names, big ids, old times...)."""
    if len(name) > 100 or uid > _MAX_OCTAL_7 or gid > _MAX_OCTAL_7 or size > _MAX_OCTAL_11:
        return None
    seconds, nanos = divmod(mtime_ns, _NS)
    if seconds < 0 or seconds > _MAX_OCTAL_11:
        return None
    header = _ustar(name, typeflag, mode & 0o7777, uid, gid, size, seconds)
    if not nanos:
        return header
    data = _pax_record(b"mtime", b"%d.%09d" % (seconds, nanos))
    pax = _ustar((b"PaxHeaders/" + name)[:100], b"x", 0o644, 0, 0, len(data), 0)
    return pax + data + padding(len(data)) + header


def _header(  # noqa: PLR0913 - hot loop: per member; one keyword per tar header field, as TarHeader.encode takes them
    name: bytes,
    *,
    typeflag: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime_ns: int,
    linkname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
    xattrs: dict[bytes, bytes] | None = None,
) -> bytes:
    if not (linkname or devmajor or devminor or xattrs):
        fast = _fast_header(name, typeflag, mode, uid, gid, size, mtime_ns)
        if fast is not None:
            return fast
    return TarHeader.encode(
        name,
        typeflag=typeflag,
        mode=mode,
        uid=uid,
        gid=gid,
        size=size,
        mtime_ns=mtime_ns,
        linkname=linkname,
        devmajor=devmajor,
        devminor=devminor,
        xattrs=xattrs,
    )


def export_layer(  # noqa: PLR0915 - hot loop: one pass per inode; whiteout, hard-link and opaque cases inline, no call per entry
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
    walk = reader.walk_inodes(top)
    next(walk)  # the top itself is not a member
    strip = len(top.rstrip(b"/")) + 1
    lost_found = top.strip(b"/") == b""
    write = sink.write
    xattrs_of = reader.xattrs
    for path, inode in walk:
        rel = path[strip:]
        mode = inode.mode
        fmt = mode & _S_IFMT
        if (
            lost_found
            and fmt == _S_IFDIR
            and rel == b"lost+found"
            and inode.nlink == 2
            and _is_empty(reader, inode, path)
        ):
            continue
        xattrs = xattrs_of(inode, path=path)
        if aufs_whiteouts and is_overlay_whiteout(fmt, inode.rdev):
            write(
                _header(
                    whiteout_path(rel),
                    typeflag=b"0",
                    mode=0o600,
                    uid=inode.uid,
                    gid=inode.gid,
                    size=0,
                    mtime_ns=inode.mtime_ns,
                    xattrs=xattrs or None,
                )
            )
            members += 1
            continue
        if fmt != _S_IFDIR and inode.nlink > 1:
            first = first_name.get(inode.ino)
            if first is not None:
                write(
                    _header(
                        rel,
                        typeflag=b"1",
                        mode=mode,
                        uid=inode.uid,
                        gid=inode.gid,
                        size=0,
                        mtime_ns=inode.mtime_ns,
                        linkname=first,
                    )
                )
                members += 1
                continue
            first_name[inode.ino] = rel
        opaque = aufs_whiteouts and fmt == _S_IFDIR and is_opaque(xattrs)
        if opaque:
            xattrs = without_opaque(xattrs)
        typeflag = TYPEFLAGS.get(fmt)
        if typeflag is None:
            continue  # sockets have no tar form
        size = inode.size if fmt == _S_IFREG else 0
        major = minor = 0
        if fmt in _DEVICES:
            major, minor = os.major(inode.rdev), os.minor(inode.rdev)
        write(
            _header(
                rel + b"/" if fmt == _S_IFDIR else rel,
                typeflag=typeflag,
                mode=mode,
                uid=inode.uid,
                gid=inode.gid,
                size=size,
                mtime_ns=inode.mtime_ns,
                linkname=reader.readlink(inode, path=path) if fmt == _S_IFLNK else b"",
                devmajor=major,
                devminor=minor,
                xattrs=xattrs or None,
            )
        )
        members += 1
        if size:
            _copy_contents(reader, inode, path, sink, src_fd)
            write(padding(size))
        if opaque:
            write(
                _header(
                    opaque_marker_path(rel),
                    typeflag=b"0",
                    mode=mode & 0o7777,
                    uid=inode.uid,
                    gid=inode.gid,
                    size=0,
                    mtime_ns=0,
                )
            )
            members += 1
    write(END_OF_ARCHIVE)
    sink.flush()
    return ExportResult(entries=members, bytes_written=sink.total)


def _is_empty(reader: Ext4Reader, inode: Inode, path: bytes) -> bool:
    return next(iter(reader.iterdir(inode, path=path)), None) is None


def _copy_contents(reader: Ext4Reader, inode: Inode, path: bytes, sink: _Sink, src_fd: int) -> None:
    try:
        _copy_spans(reader, inode, path, sink, src_fd)
    except EOFError as exc:  # the image file shrank under us
        subject = os.fsdecode(path)
        raise CorruptImage(f"{reader.name}: {subject}: {exc}", subject=subject) from exc


def _copy_spans(reader: Ext4Reader, inode: Inode, path: bytes, sink: _Sink, src_fd: int) -> None:
    if src_fd < 0:  # no host file (in-memory image): read through the file object
        with reader.open_file(inode, path=path) as fh:
            while chunk := fh.read(1 << 20):
                sink.write(chunk)
        return
    done = 0
    for offset, length, host_offset, data in reader.spans(inode, path=path):
        if offset > done:
            sink.zeros(offset - done)
        if data is not None:
            sink.write(data)
        elif host_offset is not None:
            sink.copy_from(src_fd, host_offset, length)
        else:
            sink.zeros(length)
        done = offset + length
    if done < inode.size:
        sink.zeros(inode.size - done)
