"""Tree snapshots and the expected-tree model: the comparison side of the round-trip tests.

* :func:`snapshot_dir` walks a directory (a loop mount, or a source tree) with ``lstat``;
  :func:`snapshot_image` reads an image with dissect.extfs (no root needed, a second oracle).
* :func:`expect_from_tar` replays a tar the way moby's ``UnpackLayer`` leaves a tree (SPEC §6.6,
  §6.7): the later entry wins, a directory merges into a directory (xattrs merged, new wins), a
  non-directory replaces a whole subtree, missing parents appear as placeholders, hard links share
  the node; optionally AUFS whiteouts become 0/0 character devices and opaque xattrs (SPEC §5.2).
* :func:`expect_from_snapshot` turns a source-tree snapshot into expectations (GNU tar tests).
* :func:`compare` lists every difference, including hard-link structure and directory link counts.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import struct
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "ContentDigest",
    "Expected",
    "FileRecord",
    "compare",
    "digest_bytes",
    "digest_path",
    "digest_stream",
    "expect_from_snapshot",
    "expect_from_tar",
    "snapshot_dir",
    "snapshot_image",
]

_NS = 1_000_000_000
_HIDDEN_XATTRS = {"system.data"}  # inline-data storage, not a user-visible attribute


@dataclass(frozen=True)
class FileRecord:
    """What one path looks like in a tree.

    Attributes:
        kind: ``reg``, ``dir``, ``lnk``, ``chr``, ``blk``, ``fifo`` or ``sock``.
        perm: ``mode & 0o7777``.
        uid, gid: numeric owner.
        mtime_ns: modification time.
        size: bytes (regular files and symlinks).
        digest: :class:`ContentDigest` of a regular file's content.
        target: symlink target.
        rdev: ``(major, minor)`` of devices.
        xattrs: extended attributes.
        ino: inode number (hard-link identity).
        nlink: link count.
        allocated: bytes of blocks allocated (``st_blocks * 512``).
    """

    kind: str
    perm: int
    uid: int
    gid: int
    mtime_ns: int
    size: int
    digest: str | None
    target: bytes | None
    rdev: tuple[int, int] | None
    xattrs: Mapping[str, bytes]
    ino: int
    nlink: int
    allocated: int


@dataclass
class Expected:
    """What one path should look like; ``None`` fields are not checked.

    Attributes:
        kind: as :attr:`FileRecord.kind`.
        perm, uid, gid, mtime_ns, size, digest, target, rdev, xattrs: as in :class:`FileRecord`.
        group: paths with the same group are hard links of one inode (non-directories).
        max_allocated: upper bound for :attr:`FileRecord.allocated` (sparse files).
    """

    kind: str
    perm: int | None = None
    uid: int | None = None
    gid: int | None = None
    mtime_ns: int | None = None
    size: int | None = None
    digest: str | None = None
    target: bytes | None = None
    rdev: tuple[int, int] | None = None
    xattrs: dict[str, bytes] | None = None
    group: int | None = None
    max_allocated: int | None = None


_KINDS = {
    stat.S_IFREG: "reg",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "lnk",
    stat.S_IFCHR: "chr",
    stat.S_IFBLK: "blk",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "sock",
}


_BLOCK = 4096
_ZERO = bytes(_BLOCK)
_CHUNK = 256 * _BLOCK


class ContentDigest:
    """SHA-256 of a file's non-zero 4 KiB blocks with their offsets, plus its size.

    Equal for equal content however the zeros are stored (holes or written zeros), and cheap for
    sparse files: :func:`digest_path` reads only the data regions (``SEEK_DATA``/``SEEK_HOLE``).
    """

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, offset: int, data: bytes) -> None:
        """Feed ``data`` found at ``offset`` (a multiple of 4096)."""
        view = memoryview(data)
        for i in range(0, len(view), _BLOCK):
            block = view[i : i + _BLOCK]
            if block != _ZERO[: len(block)]:
                self._h.update(struct.pack("<QI", offset + i, len(block)))
                self._h.update(block)

    def finish(self, size: int) -> str:
        """The digest of a file of ``size`` bytes."""
        self._h.update(struct.pack("<Q", size))
        return self._h.hexdigest()


def digest_bytes(data: bytes) -> str:
    """:class:`ContentDigest` of an in-memory file."""
    d = ContentDigest()
    d.update(0, data)
    return d.finish(len(data))


def digest_stream(read: Callable[[int], bytes], size: int) -> str:
    """:class:`ContentDigest` of a file read sequentially from offset 0."""
    d = ContentDigest()
    offset = 0
    while chunk := read(_CHUNK):
        d.update(offset, chunk)
        offset += len(chunk)
    return d.finish(size)


def digest_path(path: bytes) -> str:
    """:class:`ContentDigest` of a file, reading only its data regions."""
    d = ContentDigest()
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break
                raise
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            offset = data - data % _BLOCK
            while offset < hole:
                chunk = os.pread(fd, min(_CHUNK, hole - offset), offset)
                if not chunk:
                    break
                d.update(offset, chunk)
                offset += len(chunk)
            pos = max(hole, offset)
        return d.finish(size)
    finally:
        os.close(fd)


def _xattrs_of(path: bytes) -> dict[str, bytes]:
    out = {}
    for name in os.listxattr(path, follow_symlinks=False):
        if name in _HIDDEN_XATTRS:
            continue
        out[name] = os.getxattr(path, name, follow_symlinks=False)
    return out


def snapshot_dir(root: Path | bytes, *, xattrs: bool = True) -> dict[bytes, FileRecord]:
    """Walk ``root`` (not following symlinks) and record every path below it, and ``b""`` itself.

    Args:
        root: the directory.
        xattrs: read extended attributes too.

    Returns:
        Records keyed by path relative to ``root`` as bytes (``b"a/b"``).
    """
    base = os.fsencode(root)
    out: dict[bytes, FileRecord] = {}
    stack = [b""]
    while stack:
        rel = stack.pop()
        full = os.path.join(base, rel) if rel else base
        st = os.lstat(full)
        kind = _KINDS[stat.S_IFMT(st.st_mode)]
        out[rel] = FileRecord(
            kind=kind,
            perm=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            mtime_ns=st.st_mtime_ns,
            size=st.st_size,
            digest=digest_path(full) if kind == "reg" else None,
            target=os.readlink(full) if kind == "lnk" else None,
            rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in ("chr", "blk") else None,
            xattrs=_xattrs_of(full) if xattrs and kind != "sock" else {},
            ino=st.st_ino,
            nlink=st.st_nlink,
            allocated=st.st_blocks * 512,
        )
        if kind == "dir":
            stack.extend(os.path.join(rel, n) if rel else n for n in os.listdir(full))
    return out


# --------------------------------------------------------------------------------------------
# dissect.extfs reader (no root)


def _ext4_time(seconds: int, extra: int) -> int:
    signed = seconds - (1 << 32) if seconds & 0x8000_0000 else seconds
    return (signed + ((extra & 3) << 32)) * _NS + (extra >> 2)


_XATTR_MAGIC = 0xEA020000
_XATTR_PREFIXES = {
    1: "user.",
    2: "system.posix_acl_access",
    3: "system.posix_acl_default",
    4: "trusted.",
    6: "security.",
    7: "system.",
    8: "system.richacl",
}


def _parse_xattr_entries(buf: bytes, start: int, values_base: int) -> dict[str, bytes]:
    out = {}
    pos = start
    while pos + 16 <= len(buf) and buf[pos : pos + 4] != b"\0\0\0\0":
        name_len, index, value_offs, _inum, value_size = struct.unpack_from("<BBHII", buf, pos)
        name = buf[pos + 16 : pos + 16 + name_len].decode("utf-8", "surrogateescape")
        full = _XATTR_PREFIXES.get(index, f"unknown{index}.") + name
        offset = values_base + value_offs
        out[full] = buf[offset : offset + value_size]
        pos += (16 + name_len + 3) & ~3
    return out


def _image_xattrs(fh: BinaryIO, fs: Any, inum: int) -> dict[str, bytes]:
    """Xattrs of inode ``inum``, parsed here: dissect assumes ``i_extra_isize`` 32, lcow uses 24."""
    sb = fs.sb
    block_size = fs.block_size
    group, index = divmod(inum - 1, sb.s_inodes_per_group)
    fh.seek((sb.s_first_data_block + 1) * block_size + group * 32 + 8)
    (table,) = struct.unpack("<I", fh.read(4))
    fh.seek(table * block_size + index * sb.s_inode_size)
    raw = fh.read(sb.s_inode_size)
    out: dict[str, bytes] = {}
    (extra_isize,) = struct.unpack_from("<H", raw, 128)
    ibody = 128 + extra_isize
    if len(raw) >= ibody + 4 and struct.unpack_from("<I", raw, ibody)[0] == _XATTR_MAGIC:
        out.update(_parse_xattr_entries(raw, ibody + 4, ibody + 4))
    acl = struct.unpack_from("<I", raw, 104)[0] | (struct.unpack_from("<H", raw, 118)[0] << 32)
    if acl:
        fh.seek(acl * block_size)
        block = fh.read(block_size)
        if struct.unpack_from("<I", block, 0)[0] != _XATTR_MAGIC:
            raise ValueError(f"inode {inum}: xattr block {acl} has a bad magic")
        out.update(_parse_xattr_entries(block, 32, 0))
    return {k: v for k, v in out.items() if k not in _HIDDEN_XATTRS}


def snapshot_image(image: Path) -> dict[bytes, FileRecord]:
    """Read every path of an ext4 image with dissect.extfs (extent-mapped data only, no inline).

    dissect.extfs 3.x reads in-inode xattrs at a fixed offset (``i_extra_isize`` 32) and skips a
    directory entry for the highest inode number, so xattrs and directory entries are parsed here.

    Args:
        image: the image file (a VHD footer or verity area after the filesystem is fine).

    Returns:
        Records like :func:`snapshot_dir`'s.
    """
    from dissect.extfs import ExtFS

    out: dict[bytes, FileRecord] = {}
    with open(image, "rb") as fh:
        fs = ExtFS(fh)
        stack: list[tuple[bytes, Any]] = [(b"", fs.root)]
        while stack:
            rel, node = stack.pop()
            raw = node.inode
            mode = raw.i_mode
            kind = _KINDS[stat.S_IFMT(mode)]
            digest = target = rdev = None
            if kind == "reg":
                digest = digest_stream(node.open().read, node.size)
            elif kind == "lnk":
                target = os.fsencode(node.link)
            elif kind in ("chr", "blk"):
                block = bytes(raw.i_block)
                old = int.from_bytes(block[0:4], "little")
                dev = int.from_bytes(block[4:8], "little") if old == 0 else old
                if old == 0:
                    rdev = ((dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00))
                else:
                    rdev = ((dev >> 8) & 0xFF, dev & 0xFF)
            xattrs = _image_xattrs(fh, fs, node.inum)
            blocks = raw.i_blocks_lo | (raw.i_blocks_high << 32)
            huge = raw.i_flags & 0x40000
            out[rel] = FileRecord(
                kind=kind,
                perm=stat.S_IMODE(mode),
                uid=raw.i_uid | (raw.i_uid_high << 16),
                gid=raw.i_gid | (raw.i_gid_high << 16),
                mtime_ns=_ext4_time(raw.i_mtime, raw.i_mtime_extra),
                size=node.size,
                digest=digest,
                target=target,
                rdev=rdev,
                xattrs=xattrs,
                ino=node.inum,
                nlink=raw.i_links_count,
                allocated=blocks * (fs.block_size if huge else 512),
            )
            if kind == "dir":
                for name, inum in _dirents(node.open().read()):
                    if name not in (b".", b".."):
                        child = fs.get_inode(inum)
                        stack.append((os.path.join(rel, name) if rel else name, child))
    return out


def _dirents(data: bytes) -> Iterator[tuple[bytes, int]]:
    """Linear directory entries; dissect's own iterdir skips the highest inode number."""
    pos = 0
    while pos + 8 <= len(data):
        inum, rec_len, name_len = struct.unpack_from("<IHB", data, pos)
        if rec_len < 8:
            raise ValueError(f"directory entry at {pos}: rec_len {rec_len}")
        if inum:
            yield data[pos + 8 : pos + 8 + name_len], inum
        pos += rec_len


# --------------------------------------------------------------------------------------------
# expectations from a source tree


def expect_from_snapshot(
    records: Mapping[bytes, FileRecord],
    *,
    mtime_resolution_ns: int = 1,
    xattrs: bool = True,
    sparse_slack: int = 64 << 10,
) -> dict[bytes, Expected]:
    """Expectations for an image made from a tar of a source tree that was snapshotted.

    Args:
        records: :func:`snapshot_dir` of the source tree.
        mtime_resolution_ns: ``10**9`` when the tar format keeps whole seconds only (gnu).
        xattrs: compare extended attributes (posix tars carry them).
        sparse_slack: extra allocation allowed over the source's for sparse files (extent
            tree blocks, block rounding).

    Returns:
        Expectations keyed like ``records``.
    """
    groups: dict[object, int] = {}
    out = {}
    for path, rec in records.items():
        sparse = rec.kind == "reg" and rec.allocated < rec.size
        out[path] = Expected(
            kind=rec.kind,
            perm=rec.perm,
            uid=rec.uid,
            gid=rec.gid,
            mtime_ns=rec.mtime_ns - rec.mtime_ns % mtime_resolution_ns,
            size=rec.size if rec.kind in ("reg", "lnk") else None,
            digest=rec.digest,
            target=rec.target,
            rdev=rec.rdev,
            xattrs=dict(rec.xattrs) if xattrs else None,
            group=_source_group(groups, rec, path),
            max_allocated=rec.allocated + sparse_slack if sparse else None,
        )
    return out


def _source_group(groups: dict[object, int], rec: FileRecord, path: bytes) -> int | None:
    """Hard-link identity as GNU tar records it: only regular files and symlinks become links;
    fifos and devices with several names are archived as separate entries."""
    if rec.kind == "dir":
        return None
    key: object = rec.ino if rec.kind in ("reg", "lnk") else ("own", path)
    return groups.setdefault(key, len(groups))


# --------------------------------------------------------------------------------------------
# expectations from a tar (moby UnpackLayer semantics)


@dataclass(eq=False)
class _Node:
    kind: str
    perm: int | None = None
    uid: int | None = None
    gid: int | None = None
    mtime_ns: int | None = None
    size: int | None = None
    digest: str | None = None
    target: bytes | None = None
    rdev: tuple[int, int] | None = None
    xattrs: dict[str, bytes] = field(default_factory=dict)
    children: dict[bytes, _Node] = field(default_factory=dict)
    known: bool = True  # False: a placeholder parent whose own entry has not arrived


def _placeholder() -> _Node:
    return _Node("dir", known=False)


def _split(name: str, convert_slash: bool) -> list[bytes]:
    raw = os.fsencode(name)
    if convert_slash:
        raw = raw.replace(b"\\", b"/")
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise ValueError(f"model: {name!r} has a '..' component")
    return parts


def _mtime_ns(info: tarfile.TarInfo) -> int:
    text = info.pax_headers.get("mtime")
    if text is not None:
        return int(Decimal(text) * _NS)
    return int(info.mtime) * _NS


def _xattrs(info: tarfile.TarInfo) -> dict[str, bytes]:
    prefix = "SCHILY.xattr."
    return {
        key[len(prefix) :]: value.encode("utf-8", "surrogateescape")
        for key, value in info.pax_headers.items()
        if key.startswith(prefix)
    }


class _Model:
    def __init__(self, *, convert_whiteouts: bool, convert_slash: bool) -> None:
        self.root = _placeholder()
        self.root.children[b"lost+found"] = _placeholder()
        self.convert_whiteouts = convert_whiteouts
        self.convert_slash = convert_slash
        self.hidden: dict[tuple[bytes, ...], _Node] = {}  # /.wh..wh.plnk hard-link sources

    def _dir(self, parts: list[bytes]) -> _Node:
        node = self.root
        for part in parts:
            child = node.children.get(part)
            if child is None:
                child = node.children[part] = _placeholder()
            if child.kind != "dir":
                raise ValueError(f"model: {b'/'.join(parts)!r}: a parent is not a directory")
            node = child
        return node

    def _lookup(self, parts: list[bytes]) -> _Node | None:
        node: _Node | None = self.root
        for part in parts:
            if node is None or node.kind != "dir":
                return None
            node = node.children.get(part)
        return node

    def _put(self, parts: list[bytes], node: _Node) -> None:
        if not parts:  # the root entry: update the root directory
            self._merge(self.root, node)
            return
        parent = self._dir(parts[:-1])
        old = parent.children.get(parts[-1])
        if old is not None and old.kind == "dir" and node.kind == "dir":
            self._merge(old, node)
        else:
            parent.children[parts[-1]] = node

    @staticmethod
    def _merge(old: _Node, new: _Node) -> None:
        old.perm, old.uid, old.gid, old.mtime_ns = new.perm, new.uid, new.gid, new.mtime_ns
        old.xattrs = {**old.xattrs, **new.xattrs}
        old.known = True

    def apply(self, info: tarfile.TarInfo, content: bytes | None) -> None:
        # GNU.sparse.name names a sparse member even when a PAX path is also present (tarfile
        # applies whichever record comes last).
        parts = _split(info.pax_headers.get("GNU.sparse.name", info.name), self.convert_slash)
        if self.convert_whiteouts and parts and parts[0].startswith(b".wh..wh."):
            # moby skips /.wh..wh.* but keeps regular files in /.wh..wh.plnk as link sources
            if parts[0] == b".wh..wh.plnk" and len(parts) == 2 and info.isreg():
                assert content is not None
                self.hidden[tuple(parts)] = _Node(
                    "reg", size=len(content), digest=digest_bytes(content), perm=info.mode & 0o7777,
                    uid=info.uid, gid=info.gid, mtime_ns=_mtime_ns(info), xattrs=_xattrs(info),
                )  # fmt: skip
            return
        if self.convert_whiteouts and parts and parts[-1].startswith(b".wh."):
            self._whiteout(info, parts)
            return
        meta: dict[str, Any] = {
            "perm": info.mode & 0o7777,
            "uid": info.uid,
            "gid": info.gid,
            "mtime_ns": _mtime_ns(info),
            "xattrs": _xattrs(info),
        }
        if info.islnk():
            target_parts = _split(info.linkname, self.convert_slash)
            target = self.hidden.get(tuple(target_parts)) or self._lookup(target_parts)
            if target is None or target.kind == "dir":
                raise ValueError(f"model: hard link {info.name!r} to a missing or dir target")
            if target_parts != parts:
                self._put(parts, target)
            return
        if info.isdir():
            node = _Node("dir", **meta)
        elif info.issym():
            target_bytes = os.fsencode(info.linkname)
            node = _Node("lnk", size=len(target_bytes), target=target_bytes, **meta)
            node.perm = 0o777
        elif info.ischr() or info.isblk():
            kind = "chr" if info.ischr() else "blk"
            node = _Node(kind, rdev=(info.devmajor, info.devminor), **meta)
        elif info.isfifo():
            node = _Node("fifo", **meta)
        elif info.isreg():
            assert content is not None
            node = _Node("reg", size=len(content), digest=digest_bytes(content), **meta)
        else:
            raise ValueError(f"model: unsupported type {info.type!r} for {info.name!r}")
        self._put(parts, node)

    def _whiteout(self, info: tarfile.TarInfo, parts: list[bytes]) -> None:
        name = parts[-1]
        if name == b".wh..wh..opq":
            self._dir(parts[:-1]).xattrs["trusted.overlay.opaque"] = b"y"
        elif name.startswith(b".wh..wh."):
            return  # AUFS metadata (.wh..wh.plnk...): not stored
        else:
            hidden = name[len(b".wh.") :]
            device = _Node(
                "chr", perm=0, uid=info.uid, gid=info.gid, mtime_ns=_mtime_ns(info), rdev=(0, 0)
            )
            self._put([*parts[:-1], hidden], device)

    def expected(self) -> dict[bytes, Expected]:
        out: dict[bytes, Expected] = {}
        groups: dict[int, int] = {}
        stack: list[tuple[bytes, _Node]] = [(b"", self.root)]
        while stack:
            path, node = stack.pop()
            known = node.known
            out[path] = Expected(
                kind=node.kind,
                perm=node.perm if known else None,
                uid=node.uid if known else None,
                gid=node.gid if known else None,
                mtime_ns=node.mtime_ns if known else None,
                size=node.size,
                digest=node.digest,
                target=node.target,
                rdev=node.rdev,
                xattrs=dict(node.xattrs),
                group=groups.setdefault(id(node), len(groups)) if node.kind != "dir" else None,
            )
            for name, child in node.children.items():
                stack.append((os.path.join(path, name) if path else name, child))
        return out


def expect_from_tar(
    tar: Path | str, *, convert_whiteouts: bool = False, convert_slash: bool = False
) -> dict[bytes, Expected]:
    """Expected tree of the image made from ``tar`` (see the module docstring).

    Args:
        tar: a tar readable by ``tarfile`` (GNU sparse members are expanded).
        convert_whiteouts: model ``-overlay``.
        convert_slash: model ``-convert-slash``.

    Returns:
        Expectations keyed by relative path bytes, ``b""`` being the root.
    """
    model = _Model(convert_whiteouts=convert_whiteouts, convert_slash=convert_slash)
    with tarfile.open(tar, encoding="utf-8", errors="surrogateescape") as tf:
        for info in tf:
            content = None
            if info.isreg():
                f = tf.extractfile(info)
                assert f is not None
                content = f.read()
            model.apply(info, content)
    return model.expected()


# --------------------------------------------------------------------------------------------
# comparison


def _show(path: bytes) -> str:
    return repr(path.decode("utf-8", "backslashreplace")) if path else "'/'"


def compare(  # noqa: PLR0912 - one branch per attribute compared, read top to bottom
    expected: Mapping[bytes, Expected],
    actual: Mapping[bytes, FileRecord],
    *,
    ignore_extra: Iterable[bytes] = (b"lost+found",),
    check_dir_nlink: bool = True,
) -> list[str]:
    """List every difference between expectations and a snapshot (empty when they agree).

    Args:
        expected: from :func:`expect_from_tar` or :func:`expect_from_snapshot`.
        actual: from :func:`snapshot_dir` or :func:`snapshot_image`.
        ignore_extra: paths that may exist without being expected (the built-in lost+found).
        check_dir_nlink: directories must have ``2 + subdirectories`` links.

    Returns:
        Human-readable differences, one per line.
    """
    problems: list[str] = []
    ignore = set(ignore_extra)
    for path in sorted(set(actual) - set(expected)):
        if path not in ignore:
            problems.append(f"{_show(path)}: unexpected {actual[path].kind} in the image")
    subdirs: dict[bytes, int] = {}
    for path, exp in expected.items():
        if path and exp.kind == "dir":
            parent = os.path.dirname(path)
            subdirs[parent] = subdirs.get(parent, 0) + 1
    for path in sorted(expected):
        exp = expected[path]
        got = actual.get(path)
        if got is None:
            problems.append(f"{_show(path)}: missing (expected {exp.kind})")
            continue
        if got.kind != exp.kind:
            problems.append(f"{_show(path)}: is {got.kind}, expected {exp.kind}")
            continue
        for name in ("perm", "uid", "gid", "mtime_ns", "size", "digest", "target", "rdev"):
            want = getattr(exp, name)
            have = getattr(got, name)
            if want is not None and want != have:
                if name == "perm":
                    want, have = oct(want), oct(have)
                problems.append(f"{_show(path)}: {name} is {have!r}, expected {want!r}")
        if exp.xattrs is not None:
            have_x = dict(got.xattrs)
            if have_x != exp.xattrs:
                problems.append(f"{_show(path)}: xattrs are {have_x!r}, expected {exp.xattrs!r}")
        if exp.max_allocated is not None and got.allocated > exp.max_allocated:
            problems.append(
                f"{_show(path)}: {got.allocated} bytes allocated, at most {exp.max_allocated}"
                " expected (holes must stay unallocated)"
            )
        if check_dir_nlink and exp.kind == "dir":
            want_links = 2 + subdirs.get(path, 0)
            if path == b"" and b"lost+found" not in expected and b"lost+found" in actual:
                want_links += 1
            if got.nlink != want_links:
                problems.append(f"{_show(path)}: {got.nlink} links, expected {want_links}")
    problems.extend(_link_problems(expected, actual))
    return problems


def _link_problems(
    expected: Mapping[bytes, Expected], actual: Mapping[bytes, FileRecord]
) -> list[str]:
    problems = []
    by_group: dict[int, list[bytes]] = {}
    for path, exp in expected.items():
        if exp.group is not None and path in actual and actual[path].kind == exp.kind:
            by_group.setdefault(exp.group, []).append(path)
    owner: dict[int, int] = {}
    for group, paths in by_group.items():
        inodes = {actual[p].ino for p in paths}
        if len(inodes) != 1:
            shown = ", ".join(_show(p) for p in sorted(paths))
            problems.append(f"hard links {shown} are {len(inodes)} different inodes")
        for ino in inodes:
            if owner.setdefault(ino, group) != group:
                problems.append(f"inode {ino} is shared by paths that should be separate files")
        for p in paths:
            if actual[p].nlink != len(paths):
                problems.append(f"{_show(p)}: {actual[p].nlink} links, expected {len(paths)}")
    return problems
