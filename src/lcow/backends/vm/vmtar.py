"""``extractarchive`` for the vm backend: the tar is parsed here, the guest writes (SPEC §4.8).

Same semantics as the host backend's :mod:`lcow.backends.untar` (Docker's ``Untar`` in a
chroot at the destination), with the same reader and per-entry rules
(:mod:`lcow.backends.extract_rules`); each entry becomes a few
simple operations the agent runs in one pipelined *batch* relative to the destination
(``prepdirs``, ``prep``, ``mkdirm``/``writefile``/``symlink``/``link``/``mknod``, ``lchown``,
``setxattr``, ``lchmod``, ``utimens``), so a small file costs no round trip. Why not parse tar
in the guest: Docker's rules (PAX, GNU long names, whiteouts, excludes, breakout checks) then
have one implementation, tested against the host backend's, instead of a second one in C.

The first failing operation stops the batch; the agent reports its index, which names the
entry in the error.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from typing import BinaryIO

from lcow.backends.extract_rules import (
    REGULAR_TYPES,
    SPECIAL_TYPES,
    Marker,
    Peeked,
    cannot_replace_root,
    defers_times,
    drain,
    entry_name,
    is_root,
    link_target,
    members,
    mode_bits,
    open_archive,
    overlay_marker,
    owner,
    peek,
    shown,
    stream_name,
    tar_error,
    times_ns,
    unhandled_type,
    xattrs,
)
from lcow.backends.taroptions import TarOptions
from lcow.backends.vm.channel import Channel, GuestError
from lcow.formats.whiteouts import (
    OPAQUE_VALUE,
    OPAQUE_XATTR_STR,
    WHITEOUT_MODE,
    WHITEOUT_RDEV,
    hidden_name,
)

__all__ = ["extract"]

_CHUNK = 256 * 1024
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


class _Batch:
    """Operations queued to the agent, each remembered by the entry it belongs to."""

    def __init__(self, ch: Channel) -> None:
        self.ch = ch
        self.names: list[str] = []
        self.current = ""

    def op(self, *argv: str | bytes | int) -> None:
        self.ch.send(*argv)
        self.names.append(self.current)

    def data(self, chunk: bytes) -> None:
        self.ch.send_data(chunk)


def extract(ch: Channel, view_root: str, dest: str, stream: BinaryIO, options: TarOptions) -> None:
    """Unpack the tar read from ``stream`` below ``dest`` of the view at ``view_root``.

    Raises:
        InvalidArgument: a malformed archive, a name or hard link climbing out with ``..``.
        AlreadyExists: ``NoOverwriteDirNonDir`` and a directory/non-directory clash.
        OSError: a file-system failure in the guest, naming the entry.
    """
    ahead = peek(stream)
    batch = _Batch(ch)
    ch.send("batch", view_root, dest)
    try:  # an empty input is no archive: the reader says so
        _run(batch, ahead, options, stream_name(stream))
    except BaseException:
        ch.close()  # the batch is half-sent: the agent forgets it when the connection drops
        raise
    ch.send_end()
    try:
        ch.reply()
    except GuestError as exc:
        index_text, _, text = exc.text.partition(":")
        try:
            name = batch.names[int(index_text)]
        except (ValueError, IndexError):
            name = dest
        raise GuestError(exc.cls, exc.errno, text).exception(shown(name) or "/") from None
    drain(stream)


def _run(batch: _Batch, stream: Peeked, options: TarOptions, source: str) -> None:
    dirs: list[tuple[str, int, int]] = []
    with open_archive(stream, source) as archive:
        for member in members(archive, source):
            try:
                _entry(batch, archive, member, options, dirs)
            except tarfile.TarError as exc:
                raise tar_error(member.name, exc) from exc
    for name, atime, mtime in dirs:
        batch.current = name
        batch.op("utimens", name, atime, mtime)


def _entry(
    batch: _Batch,
    archive: tarfile.TarFile,
    member: tarfile.TarInfo,
    options: TarOptions,
    dirs: list[tuple[str, int, int]],
) -> None:
    name = entry_name(member, options)
    if name is None:
        return
    if is_root(name):
        if not member.isdir():
            raise cannot_replace_root(member)
        batch.current = "/"  # the destination itself: merged, its metadata applied (Docker)
        _metadata(batch, "/", member, options, dirs)
        return
    path = "/" + name.lstrip("/")
    batch.current = path
    batch.op("prepdirs", path)
    batch.op("prep", path, 1 if member.isdir() else 0, 1 if options.no_overwrite_dir_non_dir else 0)
    base = posixpath.basename(path)
    marker = overlay_marker(base, options)
    if marker is not None:
        _marker(batch, member, path, marker)
        return
    _create(batch, archive, member, path, mode_bits(member))
    _metadata(batch, path, member, options, dirs)


def _marker(batch: _Batch, member: tarfile.TarInfo, path: str, marker: Marker) -> None:
    """An AUFS marker becomes its overlay form: an opaque xattr on the directory, or a
    whiteout device in place of the hidden name."""
    parent = posixpath.dirname(path)
    if marker is Marker.OPAQUE:
        batch.op("setxattr", parent, OPAQUE_XATTR_STR, OPAQUE_VALUE.hex())
        return
    hidden = posixpath.join(parent, hidden_name(posixpath.basename(path)))
    major, minor = os.major(WHITEOUT_RDEV), os.minor(WHITEOUT_RDEV)
    batch.op("mknod", hidden, WHITEOUT_MODE, major, minor)
    batch.op("lchown", hidden, member.uid, member.gid)


def _create(
    batch: _Batch, archive: tarfile.TarFile, member: tarfile.TarInfo, path: str, mode: int
) -> None:
    """Create the entry itself, by its tar type, its data streamed for a regular file."""
    if member.type == tarfile.DIRTYPE:
        batch.op("mkdirm", path, mode)
    elif member.type in REGULAR_TYPES:
        batch.op("writefile", path, mode & 0o777, _WRITE_FLAGS)
        data = archive.extractfile(member)
        if data is not None:
            while chunk := data.read(_CHUNK):
                batch.data(chunk)
        batch.ch.send_end()
    elif member.type == tarfile.SYMTYPE:
        batch.op("symlink", os.fsencode(member.linkname), path)
    elif member.type == tarfile.LNKTYPE:
        target = link_target(member)
        batch.op("link", "/" + target.lstrip("/"), path)
    elif member.type in SPECIAL_TYPES:
        kind = SPECIAL_TYPES[member.type]
        batch.op("mknod", path, kind | mode, member.devmajor, member.devminor)
    else:
        raise unhandled_type(member)


def _metadata(
    batch: _Batch,
    path: str,
    member: tarfile.TarInfo,
    options: TarOptions,
    dirs: list[tuple[str, int, int]],
) -> None:
    """Owners, xattrs, mode and times of an entry that is in place (a directory's times later)."""
    ids = owner(member, options)
    if ids is not None:
        batch.op("lchown", path, *ids)
    for key, value in xattrs(member):
        batch.op("setxattr", path, key, value.hex())
    batch.op("lchmod", path, mode_bits(member))
    atime, mtime = times_ns(member)
    if defers_times(member):
        dirs.append((path, atime, mtime))
    else:
        batch.op("utimens", path, atime, mtime)
