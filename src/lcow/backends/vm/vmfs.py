"""The vm backend's view: the 20 remotefs operations executed by the guest agent (SPEC §4.8).

The same API as the host backend's :class:`~lcow.backends.host.hostfs.HostFS`, with the same
error classes; paths are normalised here and resolved in the guest with
``openat2(RESOLVE_IN_ROOT)`` below the view's guest directory. The first operation does the
lazy start (VM, disks, union mount) once per Get (:meth:`ViewState.session`).

Archives: packing runs :func:`~lcow.backends.archive.tar_with_options` here over listings that
carry each entry's link target and xattrs (one round trip per directory, one stream per
file); unpacking parses the tar here (:mod:`.vmtar`) and sends the guest a pipelined batch of
simple file operations. Docker's archive semantics (patterns, whiteouts, breakout checks)
thus have one implementation, shared with the host backend, instead of a second one in C.
"""

from __future__ import annotations

import io
import os
import posixpath
import struct
from collections.abc import Callable, Hashable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import BinaryIO, Protocol, cast

from lcow.backends.archive import tar_with_options
from lcow.backends.base import FileInfo
from lcow.backends.resolve import resolve_in_view
from lcow.backends.scoped import normalize
from lcow.backends.taroptions import TarOptions
from lcow.backends.vm.channel import Channel, GuestError

__all__ = ["STAT", "VmFS", "parse_stat"]

#: mode, uid, gid, nlink (u32), size, mtime ns (u64), rdev major, minor (u32), ino, dev (u64)
STAT = struct.Struct(">IIIIQqIIQQ")
_MAX_SYMLINKS = 40
_READ_CHUNK = 1 << 20


class Session(Protocol):
    """What a view gives its file system object: a channel, after the lazy start."""

    layer_id: str
    path: str

    def session(self) -> AbstractContextManager[Channel]:
        """A context manager yielding a connected channel."""
        ...


def parse_stat(name: str, raw: bytes, offset: int = 0) -> FileInfo:
    """A :class:`FileInfo` from the agent's stat record."""
    mode, uid, gid, nlink, size, mtime, major, minor, ino, _ = STAT.unpack_from(raw, offset)
    return FileInfo(
        name=name, size=size, mode=mode, mtime_ns=mtime, uid=uid, gid=gid, nlink=nlink,
        rdev=os.makedev(major, minor), ino=ino,
    )  # fmt: skip


def _norm(path: str) -> str:
    return os.fsdecode(normalize(path))


def _base(path: str) -> str:
    return posixpath.basename(_norm(path)) or "/"


@contextmanager
def _named(path: str, other: str | None = None) -> Iterator[None]:
    try:
        yield
    except GuestError as exc:
        raise exc.exception(path, other) from None


class _Listing:
    """Parsed ``readdir``/``readdirx`` replies."""

    def __init__(self, raw: bytes, extended: bool) -> None:
        self.entries: list[FileInfo] = []
        self.links: dict[str, str] = {}
        self.xattrs: dict[str, dict[bytes, bytes]] = {}
        self.devs: dict[str, int] = {}
        at = 0
        while at < len(raw):
            length = int.from_bytes(raw[at : at + 2], "big")
            name = os.fsdecode(raw[at + 2 : at + 2 + length])
            at += 2 + length
            info = parse_stat(name, raw, at)
            self.devs[name] = STAT.unpack_from(raw, at)[-1]
            at += STAT.size
            self.entries.append(info)
            if extended:
                n = int.from_bytes(raw[at : at + 4], "big")
                self.links[name] = os.fsdecode(raw[at + 4 : at + 4 + n])
                at += 4 + n
                xattrs, at = parse_xattrs(raw, at)
                self.xattrs[name] = xattrs


def parse_xattrs(raw: bytes, at: int) -> tuple[dict[bytes, bytes], int]:
    """An xattr list of the agent (count, then name/value pairs) starting at ``at``."""
    count = int.from_bytes(raw[at : at + 4], "big")
    at += 4
    found: dict[bytes, bytes] = {}
    for _ in range(count):
        klen = int.from_bytes(raw[at : at + 2], "big")
        key = raw[at + 2 : at + 2 + klen]
        at += 2 + klen
        vlen = int.from_bytes(raw[at : at + 4], "big")
        found[key] = raw[at + 4 : at + 4 + vlen]
        at += 4 + vlen
    return found, at


class RemoteFile(io.RawIOBase):
    """An ``openfile`` session: the channel stays with the file until it is closed."""

    def __init__(self, view: Session, path: str, flags: int, perm: int) -> None:
        super().__init__()
        self._context = view.session()
        self._ch = self._context.__enter__()
        self._path = path
        self._flags = flags
        try:
            with _named(path):
                self._ch.call("open", view.path, path, flags, perm)
        except BaseException:
            self._context.__exit__(None, None, None)
            raise

    def readable(self) -> bool:
        return (self._flags & os.O_ACCMODE) != os.O_WRONLY

    def writable(self) -> bool:
        return (self._flags & os.O_ACCMODE) != os.O_RDONLY

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        with _named(self._path):
            data = self._ch.call("fread", min(len(buffer), _READ_CHUNK))
        buffer[: len(data)] = data
        return len(data)

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        with _named(self._path):
            self._ch.call_with_data(["fwrite"], [bytes(data)])
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        with _named(self._path):
            return int.from_bytes(self._ch.call("fseek", offset, whence), "big")

    def tell(self) -> int:
        return self.seek(0, os.SEEK_CUR)

    def truncate(self, size: int | None = None) -> int:
        at = self.tell() if size is None else size
        with _named(self._path):
            self._ch.call("ftruncate", at)
        return at

    def close(self) -> None:
        if self.closed:
            return
        try:
            with _named(self._path):
                self._ch.call("fclose")
        finally:
            self._context.__exit__(None, None, None)
            super().close()


class StreamReader(io.RawIOBase):
    """A ``readfile`` stream as a readable file; closing it early drops the connection (the
    agent's remaining output is discarded)."""

    def __init__(self, view: Session, path: str) -> None:
        super().__init__()
        self._context = view.session()
        self._ch = self._context.__enter__()
        self._path = path
        self._pending = b""
        self._done = False
        try:
            self._ch.send("readfile", view.path, path)
            self._frames = self._ch.stream()
            self._next()  # a failure to open surfaces here
        except GuestError as exc:
            self._context.__exit__(None, None, None)
            raise exc.exception(path) from None
        except BaseException:
            self._context.__exit__(None, None, None)
            raise

    def _next(self) -> None:
        try:
            self._pending = next(self._frames)
        except StopIteration:
            self._done = True
            self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        with _named(self._path):
            while not self._pending and not self._done:
                self._next()
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        if self.closed:
            return
        try:
            if not self._done:
                self._ch.close()  # out of step: reconnect next time
        finally:
            self._context.__exit__(None, None, None)
            super().close()


class VmFS:
    """ContainerFS over a view inside the utility VM.

    Args:
        view: the Get's state (lazy start, the guest path, channels).
    """

    backend_name = "vm"

    def __init__(self, view: Session) -> None:
        self._view = view
        self.layer_id = view.layer_id

    @property
    def path(self) -> str:
        """The view's directory inside the VM (``/tmp/<id>-mount`` for a union)."""
        return self._view.path

    def _call(self, path: str, *argv: str | int | bytes, other: str | None = None) -> bytes:
        with self._view.session() as ch, _named(path, other):
            return ch.call(argv[0], self._view.path, *argv[1:])

    # -- reading -----------------------------------------------------------------------------

    def stat(self, path: str) -> FileInfo:
        """Information about ``path``, symlinks followed inside the view."""
        return parse_stat(_base(path), self._call(path, "stat", _norm(path)))

    def lstat(self, path: str) -> FileInfo:
        """Information about ``path`` itself."""
        return parse_stat(_base(path), self._call(path, "lstat", _norm(path)))

    def readlink(self, path: str) -> str:
        """A symlink's target, verbatim."""
        return os.fsdecode(self._call(path, "readlink", _norm(path)))

    def readdir(self, path: str) -> list[FileInfo]:
        """Entries of a directory, sorted by name."""
        return _Listing(self._call(path, "readdir", _norm(path), 0), False).entries

    def _listing(self, path: str) -> _Listing:
        return _Listing(self._call(path, "readdirx", _norm(path), 0), True)

    def xattrs(self, path: str) -> dict[bytes, bytes]:
        """Extended attributes of ``path`` itself."""
        return parse_xattrs(self._call(path, "xattrs", _norm(path)), 0)[0]

    def open(self, path: str) -> BinaryIO:
        """A readable binary file object over a regular file (symlinks followed)."""
        return cast(BinaryIO, StreamReader(self._view, _norm(path)))

    def readfile(self, path: str) -> bytes:
        """A whole regular file."""
        with self._view.session() as ch, _named(path):
            ch.send("readfile", self._view.path, _norm(path))
            return b"".join(ch.stream())

    def resolve_path(self, path: str) -> str:
        """``path`` with every symlink resolved inside the view; a missing tail is kept.

        Raises:
            OSError: ``ELOOP`` after 40 symlinks.
        """
        return resolve_in_view(_norm(path), self.lstat, self.readlink)

    def archive_path(
        self, path: str, out: Callable[[bytes], object], options: TarOptions | None = None
    ) -> None:
        """Write a tar of ``path`` to ``out`` as Docker's ``TarWithOptions`` (xattrs included)."""
        _ArchiveReader(self).archive(_norm(path), out, options)

    # -- writing -----------------------------------------------------------------------------

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        """Create one directory (its parent must exist)."""
        self._call(path, "mkdir", _norm(path), mode)

    def mkdir_all(self, path: str, mode: int = 0o755) -> None:
        """Create a directory and any missing parents; an existing directory is fine."""
        self._call(path, "mkdirall", _norm(path), mode)

    def remove(self, path: str) -> None:
        """Remove a file, symlink, special file or empty directory."""
        self._call(path, "remove", _norm(path))

    def remove_all(self, path: str) -> None:
        """Remove ``path`` and everything below it; missing is fine."""
        with suppress(FileNotFoundError):  # a missing parent: nothing to remove
            self._call(path, "removeall", _norm(path))

    def link(self, old: str, new: str) -> None:
        """Hard-link ``new`` to ``old`` (a symlink ``old`` is linked itself)."""
        self._call(old, "link", _norm(old), _norm(new), other=new)

    def symlink(self, target: str, new: str) -> None:
        """Create symlink ``new`` → ``target`` (target stored verbatim)."""
        self._call(new, "symlink", os.fsencode(target), _norm(new))

    def lchmod(self, path: str, mode: int) -> None:
        """Set permission bits without following a symlink (symlinks are left alone)."""
        self._call(path, "lchmod", _norm(path), mode & 0o7777)

    def lchown(self, path: str, uid: int, gid: int) -> None:
        """Set owners without following a symlink (-1 keeps one)."""
        self._call(path, "lchown", _norm(path), uid, gid)

    def mknod(self, path: str, mode: int, major: int, minor: int) -> None:
        """Create a device node or other special file (``mode`` includes the type)."""
        self._call(path, "mknod", _norm(path), mode, major, minor)

    def mkfifo(self, path: str, mode: int) -> None:
        """Create a named pipe."""
        self._call(path, "mkfifo", _norm(path), mode)

    def open_file(self, path: str, flags: int, perm: int = 0o644) -> BinaryIO:
        """Open a regular file with ``os.open`` flags; returns a binary file object holding
        one agent channel until closed."""
        return cast(BinaryIO, RemoteFile(self._view, _norm(path), flags, perm))

    def write_file(self, path: str, data: bytes, perm: int = 0o644) -> None:
        """Create or truncate a regular file with ``data``."""
        with self._view.session() as ch, _named(path):
            ch.call_with_data(["writefile", self._view.path, _norm(path), perm, ""], [data])

    def extract_archive(
        self, dest: str, stream: BinaryIO, options: TarOptions | None = None
    ) -> None:
        """Unpack a tar below ``dest`` (created if missing) as Docker's ``Untar`` would in a
        chroot at ``dest`` (see :mod:`.vmtar`)."""
        from lcow.backends.vm.vmtar import extract

        self.mkdir_all(dest)
        with self._view.session() as ch:
            extract(ch, self._view.path, _norm(dest), stream, options or TarOptions())

    def close(self) -> None:
        """Nothing to release (the view is Put's)."""


class _ArchiveReader:
    """The tree reader :func:`tar_with_options` walks: listings with link targets and xattrs
    cached per path, so an entry costs no round trip of its own."""

    def __init__(self, fs: VmFS) -> None:
        self.fs = fs
        self.links: dict[str, str] = {}
        self.xattr_cache: dict[str, dict[bytes, bytes]] = {}
        self.devs: dict[str, int] = {}

    def archive(
        self, path: str, out: Callable[[bytes], object], options: TarOptions | None
    ) -> None:
        tar_with_options(self, path, out, options, xattrs=self._xattrs, link_key=self._link_key)

    def lstat(self, path: str) -> FileInfo:
        return self.fs.lstat(path)

    def readdir(self, path: str) -> list[FileInfo]:
        listing = self.fs._listing(path)
        for info in listing.entries:
            child = posixpath.join(path, info.name)
            if info.name in listing.links:
                self.links[child] = listing.links[info.name]
            self.xattr_cache[child] = listing.xattrs.get(info.name, {})
            self.devs[child] = listing.devs.get(info.name, 0)
        return listing.entries

    def readlink(self, path: str) -> str:
        cached = self.links.get(path)
        return cached if cached else self.fs.readlink(path)

    def open(self, path: str) -> BinaryIO:
        return self.fs.open(path)

    def _xattrs(self, path: str, info: FileInfo) -> dict[bytes, bytes]:
        cached = self.xattr_cache.get(path)
        return cached if cached is not None else self.fs.xattrs(path)

    def _link_key(self, path: str, info: FileInfo) -> Hashable:
        return self.devs.get(path, 0), info.ino
