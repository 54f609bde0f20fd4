"""``extractarchive`` for the vm backend: the tar is parsed here, the guest writes (SPEC §4.8).

Same semantics as the host backend's :mod:`lcow.backends.untar` (Docker's ``Untar`` in a
chroot at the destination), with the same tar reader and name checks; each entry becomes a few
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

from lcow.backends.taroptions import OVERLAY_WHITEOUTS, TarOptions
from lcow.backends.untar import (  # the host backend's reader and checks: one set of rules
    _REGULAR,
    _SPECIAL,
    _XATTR_PREFIX,
    _clean,
    _escapes,
    _open_stream,
    _Peeked,
    _shown,
    _time_ns,
    members,
    stream_name,
)
from lcow.backends.vm.channel import Channel, GuestError
from lcow.errors import InvalidArgument
from lcow.formats.whiteouts import (
    OPAQUE_VALUE,
    OPAQUE_XATTR_STR,
    WHITEOUT_MODE,
    WHITEOUT_RDEV,
    hidden_name,
    is_opaque_marker,
    is_whiteout_name,
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
    head = stream.read(tarfile.BLOCKSIZE)
    batch = _Batch(ch)
    ch.send("batch", view_root, dest)
    try:  # an empty input is no archive: the reader says so
        _run(batch, _Peeked(head, stream), options, stream_name(stream))
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
        raise GuestError(exc.cls, exc.errno, text).exception(_shown(name) or "/") from None
    while stream.read(1 << 20):
        pass  # consume what follows the end marker, so a writer on a pipe can finish


def _run(batch: _Batch, stream: _Peeked, options: TarOptions, source: str) -> None:
    dirs: list[tuple[str, int, int]] = []
    with _open_stream(stream, source) as archive:
        for member in members(archive, source):
            try:
                _entry(batch, archive, member, options, dirs)
            except tarfile.TarError as exc:
                shown = _shown(member.name)
                raise InvalidArgument(f"{shown}: {exc}", subject=shown) from exc
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
    name = _clean(member.name)
    if any(name.startswith(p) for p in options.exclude_patterns):
        return
    shown = _shown(member.name)
    if _escapes(name):
        raise InvalidArgument(f"{shown}: path escapes the destination directory", subject=shown)
    if name in (".", "/"):
        if member.isdir():
            return  # the destination itself: merged, metadata untouched (Docker)
        raise InvalidArgument(f"{shown}: cannot replace the destination directory", subject=shown)
    path = "/" + name.lstrip("/")
    batch.current = path
    batch.op("prepdirs", path)
    batch.op("prep", path, 1 if member.isdir() else 0, 1 if options.no_overwrite_dir_non_dir else 0)
    base = posixpath.basename(path)
    if options.whiteout_format == OVERLAY_WHITEOUTS:
        parent = posixpath.dirname(path)
        if is_opaque_marker(base):
            batch.op("setxattr", parent, OPAQUE_XATTR_STR, OPAQUE_VALUE.hex())
            return
        if is_whiteout_name(base):
            hidden = posixpath.join(parent, hidden_name(base))
            major, minor = os.major(WHITEOUT_RDEV), os.minor(WHITEOUT_RDEV)
            batch.op("mknod", hidden, WHITEOUT_MODE, major, minor)
            batch.op("lchown", hidden, member.uid, member.gid)
            return
    mode = member.mode & 0o7777
    if member.type == tarfile.DIRTYPE:
        batch.op("mkdirm", path, mode)
    elif member.type in _REGULAR:
        batch.op("writefile", path, member.mode & 0o777, _WRITE_FLAGS)
        data = archive.extractfile(member)
        if data is not None:
            while chunk := data.read(_CHUNK):
                batch.data(chunk)
        batch.ch.send_end()
    elif member.type == tarfile.SYMTYPE:
        batch.op("symlink", os.fsencode(member.linkname), path)
    elif member.type == tarfile.LNKTYPE:
        target = _clean(member.linkname)
        if _escapes(target):
            raise InvalidArgument(
                f"{shown}: hard link to {_shown(member.linkname)!r} escapes the destination",
                subject=shown,
            )
        batch.op("link", "/" + target.lstrip("/"), path)
    elif member.type in _SPECIAL:
        batch.op("mknod", path, _SPECIAL[member.type] | mode, member.devmajor, member.devminor)
    else:
        raise InvalidArgument(f"{shown}: unhandled tar header type {member.type!r}", subject=shown)
    if not options.no_lchown:
        uid, gid = options.chown or (member.uid, member.gid)
        batch.op("lchown", path, uid, gid)
    for key, value in member.pax_headers.items():
        if key.startswith(_XATTR_PREFIX):
            raw = value.encode("utf-8", "surrogateescape")
            batch.op("setxattr", path, key[len(_XATTR_PREFIX) :], raw.hex())
    batch.op("lchmod", path, mode)
    mtime = _time_ns(member, "mtime")
    assert mtime is not None
    atime = max(_time_ns(member, "atime") or mtime, mtime)
    if member.type == tarfile.DIRTYPE:
        dirs.append((path, atime, mtime))
    else:
        batch.op("utimens", path, atime, mtime)
