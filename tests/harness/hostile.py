"""A corpus of hostile layer tars and what each must produce (hardening issue, part 1).

Every :class:`HostileCase` has a name, a description, a builder that streams its tar (headers are
written byte by byte here, so malformed, huge and truncated members cost nothing to make) and an
:class:`Expect`: either an error category from :mod:`lcow.errors` whose message must name the
entry, or success with a property of the resulting image checked through a :class:`Probe` (the
ext4 reader, or a kernel mount). Every sink that turns a tar into a layer — ``tar2ext4``,
``Driver.apply_diff``, ``lcow import``, the plugin's ApplyDiff — must meet the same expectation;
``extract_archive`` (Docker's ``Untar`` into a view) meets :attr:`HostileCase.extract_expect`,
which differs only where Docker's semantics do (:data:`EXTRACT_DIFFERENCES`, each with its
reason). :mod:`tests.harness.hostile_run` runs them and checks that a failure leaves nothing
behind.

The cases assume LCOW's conversion options (AUFS whiteouts converted, VHD footer) and the default
limits of :class:`~lcow.convert.options.ConvertOptions`. ``ALL_CASES`` lists them; large ones
(``slow=True``) are written gzip-compressed and streamed.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, Protocol

from lcow.convert.options import DEFAULT_MAX_DEPTH
from lcow.errors import InvalidArgument, LcowError, LimitExceeded, NotFound

__all__ = [
    "ALL_CASES",
    "BLOCK",
    "CASES",
    "END",
    "EXTRACT_DIFFERENCES",
    "CheckFailed",
    "Expect",
    "HostileCase",
    "MountProbe",
    "Node",
    "Probe",
    "ReaderProbe",
    "case_path",
    "header",
    "member",
    "pax",
    "write_case",
]

BLOCK = 512
END = bytes(2 * BLOCK)
POSIX_MAGIC = b"ustar\x0000"
GNU_MAGIC = b"ustar  \x00"
MTIME = 1_600_000_000
KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

# --------------------------------------------------------------------------------------------
# tar building, header by header


def _number(value: int, width: int) -> bytes:
    """A numeric field: zero-padded octal and a NUL, or GNU base-256 when that cannot hold it."""
    if 0 <= value < 8 ** (width - 1):
        return b"%0*o\x00" % (width - 1, value)
    if value < 0:
        raw = (value + (1 << (8 * width))).to_bytes(width, "big")
        return b"\xff" + raw[1:]
    raw = value.to_bytes(width, "big")
    if raw[0] & 0xC0:
        raise ValueError(f"{value} does not fit a {width}-byte base-256 field")
    return bytes([raw[0] | 0x80]) + raw[1:]


def _put(raw: bytearray, offset: int, value: bytes, width: int) -> None:
    raw[offset : offset + min(len(value), width)] = value[:width]


def header(
    name: bytes,
    *,
    type: bytes = b"0",
    size: int = 0,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = MTIME,
    linkname: bytes = b"",
    major: int = 0,
    minor: int = 0,
    magic: bytes = POSIX_MAGIC,
    prefix: bytes = b"",
    fields: Mapping[int, bytes] | None = None,
    checksum: int | None = None,
) -> bytes:
    """One 512-byte header; ``fields`` overwrite raw bytes at offsets, ``checksum`` forces a
    (wrong) checksum. Names longer than their fields are cut (use :func:`member` for PAX)."""
    raw = bytearray(BLOCK)
    _put(raw, 0, name, 100)
    _put(raw, 100, _number(mode, 8), 8)
    _put(raw, 108, _number(uid, 8), 8)
    _put(raw, 116, _number(gid, 8), 8)
    _put(raw, 124, _number(size, 12), 12)
    _put(raw, 136, _number(mtime, 12), 12)
    raw[156:157] = type
    _put(raw, 157, linkname, 100)
    _put(raw, 257, magic, 8)
    _put(raw, 265, b"root", 32)
    _put(raw, 297, b"root", 32)
    _put(raw, 329, _number(major, 8), 8)
    _put(raw, 337, _number(minor, 8), 8)
    _put(raw, 345, prefix, 155)
    for offset, value in (fields or {}).items():
        raw[offset : offset + len(value)] = value
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\x00 " % (sum(raw) if checksum is None else checksum)
    return bytes(raw)


def padded(data: bytes) -> bytes:
    """``data`` followed by zeros up to a block boundary."""
    return data + bytes(-len(data) % BLOCK)


def pax_record(key: bytes, value: bytes) -> bytes:
    """``"<len> key=value\\n"`` where ``len`` counts the whole record, itself included."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def pax(
    records: Iterable[tuple[bytes, bytes]], *, type: bytes = b"x", name: bytes = b"PaxHeader"
) -> bytes:
    """A PAX extended header (``x``, or ``g`` for a global one) with its records."""
    data = b"".join(pax_record(k, v) for k, v in records)
    return header(name, type=type, size=len(data)) + padded(data)


def gnu_long(value: bytes, type: bytes = b"L") -> bytes:
    """A GNU long name (``L``) or long link (``K``) record."""
    data = value + b"\x00"
    return header(b"././@LongLink", type=type, size=len(data), magic=GNU_MAGIC) + padded(data)


def member(
    name: bytes,
    data: bytes = b"",
    *,
    records: Sequence[tuple[bytes, bytes]] = (),
    xattrs: Mapping[bytes, bytes] | None = None,
    **fields: Any,
) -> bytes:
    """A whole member: PAX records when needed (long names, xattrs), header, padded data.

    ``fields`` go to :func:`header` (``type``, ``mode``, ``linkname``, ``size``...); ``size``
    defaults to ``len(data)``.
    """
    extra = list(records)
    if len(name) > 100:
        extra.append((b"path", name))
    linkname = fields.get("linkname", b"")
    assert isinstance(linkname, bytes)
    if len(linkname) > 100:
        extra.append((b"linkpath", linkname))
    for key, value in (xattrs or {}).items():
        extra.append((b"SCHILY.xattr." + key, value))
    fields.setdefault("size", len(data))
    head = header(name[:100], **fields)
    return (pax(extra) if extra else b"") + head + padded(data)


def file(name: bytes, data: bytes = b"", **fields: Any) -> bytes:
    """A regular file member."""
    return member(name, data, **fields)


def directory(name: bytes, **fields: Any) -> bytes:
    """A directory member."""
    fields.setdefault("mode", 0o755)
    return member(name, type=b"5", **fields)


def symlink(name: bytes, target: bytes, **fields: Any) -> bytes:
    """A symbolic link member."""
    return member(name, type=b"2", linkname=target, mode=0o777, **fields)


def hardlink(name: bytes, target: bytes, **fields: Any) -> bytes:
    """A hard link member."""
    return member(name, type=b"1", linkname=target, **fields)


def sparse_v1(name: bytes, realsize: int, segments: Sequence[tuple[int, bytes]]) -> bytes:
    """A GNU PAX sparse 1.0 member: the map as decimal lines at the start of the data."""
    lines = [str(len(segments)).encode()]
    for offset, data in segments:
        lines += [str(offset).encode(), str(len(data)).encode()]
    payload = padded(b"\n".join(lines) + b"\n") + b"".join(d for _, d in segments)
    return member(
        b"GNUSparseFile.0/" + name,
        payload,
        records=[
            (b"GNU.sparse.major", b"1"),
            (b"GNU.sparse.minor", b"0"),
            (b"GNU.sparse.name", name),
            (b"GNU.sparse.realsize", str(realsize).encode()),
        ],
    )


def gnu_old_sparse(
    name: bytes, realsize: int, segments: Sequence[tuple[int, int]], data: bytes
) -> bytes:
    """An old GNU ``S`` member with up to four map entries in the header."""
    fields: dict[int, bytes] = {}
    for i, (offset, length) in enumerate(segments[:4]):
        fields[386 + 24 * i] = _number(offset, 12)
        fields[398 + 24 * i] = _number(length, 12)
    fields[483] = _number(realsize, 12)
    head = header(name, type=b"S", size=len(data), magic=GNU_MAGIC, fields=fields)
    return head + padded(data)


# --------------------------------------------------------------------------------------------
# probes: what a check sees of a finished layer


class Node(NamedTuple):
    """One path of a finished layer, as ``lstat`` and ``getxattr`` would show it."""

    mode: int
    size: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    ino: int
    mtime_ns: int
    target: bytes | None
    xattrs: dict[bytes, bytes]


class Probe(Protocol):
    """Read access to a finished layer (paths are absolute bytes, symlinks not followed)."""

    def node(self, path: bytes) -> Node | None:
        """The entry at ``path``, ``None`` if it does not exist."""

    def names(self, path: bytes) -> list[bytes]:
        """Sorted names in the directory at ``path``."""

    def read(self, path: bytes, limit: int = MiB) -> bytes:
        """Up to ``limit`` bytes of the regular file at ``path``."""

    def count(self, path: bytes) -> int:
        """Entries in the directory at ``path`` (cheaper than :meth:`names` for huge ones)."""


class ReaderProbe:
    """A :class:`Probe` over lcow's own ext4 reader."""

    def __init__(self, reader: object) -> None:
        from lcow.formats.ext4.reader import Ext4Reader

        assert isinstance(reader, Ext4Reader)
        self.reader = reader

    def node(self, path: bytes) -> Node | None:
        try:
            inode = self.reader.lookup(path)
        except NotFound:
            return None
        entry = self.reader.entry(inode, path)
        return Node(
            mode=entry.mode,
            size=entry.size,
            nlink=entry.nlink,
            uid=entry.uid,
            gid=entry.gid,
            rdev=entry.rdev,
            ino=entry.ino,
            mtime_ns=entry.mtime_ns,
            target=entry.link_target,
            xattrs=entry.xattrs,
        )

    def names(self, path: bytes) -> list[bytes]:
        inode = self.reader.lookup(path)
        return [e.name for e in self.reader.listdir(inode, path=path)]

    def read(self, path: bytes, limit: int = MiB) -> bytes:
        inode = self.reader.lookup(path)
        with self.reader.open_file(inode, path=path) as fh:
            return bytes(fh.read(limit))

    def count(self, path: bytes) -> int:
        inode = self.reader.lookup(path)
        return sum(1 for _ in self.reader.iterdir(inode, path=path))


class MountProbe:
    """A :class:`Probe` over a kernel mount of the layer (the independent oracle)."""

    def __init__(self, mountpoint: Path) -> None:
        self.root = os.fsencode(mountpoint)

    def _host(self, path: bytes) -> bytes:
        return self.root + b"/" + path.lstrip(b"/")

    def node(self, path: bytes) -> Node | None:
        host = self._host(path)
        try:
            st = os.lstat(host)
        except FileNotFoundError:
            return None
        xattrs = {}
        for name in os.listxattr(host, follow_symlinks=False):
            xattrs[os.fsencode(name)] = os.getxattr(host, name, follow_symlinks=False)
        return Node(
            mode=st.st_mode,
            size=st.st_size,
            nlink=st.st_nlink,
            uid=st.st_uid,
            gid=st.st_gid,
            rdev=st.st_rdev,
            ino=st.st_ino,
            mtime_ns=st.st_mtime_ns,
            target=os.readlink(host) if stat.S_ISLNK(st.st_mode) else None,
            xattrs=xattrs,
        )

    def names(self, path: bytes) -> list[bytes]:
        return sorted(os.listdir(self._host(path)))

    def read(self, path: bytes, limit: int = MiB) -> bytes:
        with open(self._host(path), "rb") as fh:
            return fh.read(limit)

    def count(self, path: bytes) -> int:
        with os.scandir(self._host(path)) as it:
            return sum(1 for _ in it)


# --------------------------------------------------------------------------------------------
# expectations


class CheckFailed(AssertionError):
    """A finished layer does not have the property its case promises."""


Check = Callable[[Probe], None]


def _need(probe: Probe, path: bytes) -> Node:
    node = probe.node(path)
    if node is None:
        raise CheckFailed(f"{path!r} is missing")
    return node


def is_file(path: bytes, data: bytes | None = None, *, mode: int | None = None) -> Check:
    """``path`` is a regular file (with these bytes and permission bits, when given)."""

    def check(probe: Probe) -> None:
        node = _need(probe, path)
        if not stat.S_ISREG(node.mode):
            raise CheckFailed(f"{path!r} is not a regular file (mode {node.mode:o})")
        if mode is not None and stat.S_IMODE(node.mode) != mode:
            raise CheckFailed(f"{path!r} has mode {stat.S_IMODE(node.mode):o}, not {mode:o}")
        if data is not None:
            got = probe.read(path, len(data) + 1)
            if got != data:
                raise CheckFailed(f"{path!r} holds {got[:40]!r}..., not {data[:40]!r}...")

    return check


def is_dir(path: bytes, *, mode: int | None = None, uid: int | None = None) -> Check:
    """``path`` is a directory (with this mode and owner, when given)."""

    def check(probe: Probe) -> None:
        node = _need(probe, path)
        if not stat.S_ISDIR(node.mode):
            raise CheckFailed(f"{path!r} is not a directory (mode {node.mode:o})")
        if mode is not None and stat.S_IMODE(node.mode) != mode:
            raise CheckFailed(f"{path!r} has mode {stat.S_IMODE(node.mode):o}, not {mode:o}")
        if uid is not None and node.uid != uid:
            raise CheckFailed(f"{path!r} is owned by {node.uid}, not {uid}")

    return check


def is_symlink(path: bytes, target: bytes) -> Check:
    """``path`` is a symlink to exactly ``target`` (never resolved)."""

    def check(probe: Probe) -> None:
        node = _need(probe, path)
        if not stat.S_ISLNK(node.mode) or node.target != target:
            raise CheckFailed(f"{path!r} is not a symlink to {target!r} ({node.target!r})")

    return check


def is_device(path: bytes, kind: int, major: int, minor: int) -> Check:
    """``path`` is a ``S_IFCHR``/``S_IFBLK`` device with these numbers."""

    def check(probe: Probe) -> None:
        node = _need(probe, path)
        if stat.S_IFMT(node.mode) != kind or node.rdev != os.makedev(major, minor):
            raise CheckFailed(
                f"{path!r}: mode {node.mode:o} rdev {os.major(node.rdev)}:{os.minor(node.rdev)}, "
                f"expected {kind:o} {major}:{minor}"
            )

    return check


def has_mode(path: bytes, mode: int) -> Check:
    """The permission and special bits of ``path`` are ``mode``."""

    def check(probe: Probe) -> None:
        node = _need(probe, path)
        if stat.S_IMODE(node.mode) != mode:
            raise CheckFailed(f"{path!r} has mode {stat.S_IMODE(node.mode):o}, not {mode:o}")

    return check


def absent(path: bytes) -> Check:
    """Nothing exists at ``path``."""

    def check(probe: Probe) -> None:
        if probe.node(path) is not None:
            raise CheckFailed(f"{path!r} exists")

    return check


def only(path: bytes, names: Iterable[bytes]) -> Check:
    """The directory ``path`` holds exactly ``names`` (``lost+found`` ignored at the root)."""
    wanted = sorted(names)

    def check(probe: Probe) -> None:
        got = [n for n in probe.names(path) if not (path == b"/" and n == b"lost+found")]
        if got != wanted:
            raise CheckFailed(f"{path!r} holds {got[:10]!r}, expected {wanted[:10]!r}")

    return check


def entry_count(path: bytes, count: int) -> Check:
    """The directory ``path`` holds ``count`` entries."""

    def check(probe: Probe) -> None:
        got = probe.count(path)
        if got != count:
            raise CheckFailed(f"{path!r} holds {got} entries, expected {count}")

    return check


def same_inode(a: bytes, b: bytes, nlink: int) -> Check:
    """``a`` and ``b`` are hard links of one inode with ``nlink`` names."""

    def check(probe: Probe) -> None:
        na, nb = _need(probe, a), _need(probe, b)
        if na.ino != nb.ino or na.nlink != nlink:
            raise CheckFailed(f"{a!r} and {b!r}: inodes {na.ino}/{nb.ino}, nlink {na.nlink}")

    return check


def size_is(path: bytes, size: int) -> Check:
    """``path`` has ``size`` bytes."""

    def check(probe: Probe) -> None:
        node = _need(probe, path)
        if node.size != size:
            raise CheckFailed(f"{path!r} has {node.size} bytes, not {size}")

    return check


def has_xattr(path: bytes, name: bytes, value: bytes | None) -> Check:
    """``path`` has the attribute ``name`` with ``value`` (``None``: it must not have it)."""

    def check(probe: Probe) -> None:
        got = _need(probe, path).xattrs.get(name)
        if got != value:
            raise CheckFailed(f"{path!r} xattr {name!r} is {got!r}, expected {value!r}")

    return check


def owner_is(path: bytes, uid: int, gid: int) -> Check:
    """``path`` is owned by ``uid:gid``."""

    def check(probe: Probe) -> None:
        node = _need(probe, path)
        if (node.uid, node.gid) != (uid, gid):
            raise CheckFailed(f"{path!r} is owned by {node.uid}:{node.gid}, not {uid}:{gid}")

    return check


@dataclass(frozen=True)
class Expect:
    """What every sink must do with a case.

    Attributes:
        error: the category raised (an import may wrap an ``InvalidArgument`` in an
            ``ImageError``, which is one); ``None`` for success.
        names: strings the error message must contain (the entry, the limit).
        checks: properties of the finished layer, for success.
        summary: one line for reports.
    """

    error: type[LcowError] | None
    names: tuple[str, ...] = ()
    checks: tuple[Check, ...] = ()
    summary: str = ""

    @property
    def outcome(self) -> str:
        """``ok`` or the error class name."""
        return "ok" if self.error is None else self.error.__name__

    def verify(self, probe: Probe) -> None:
        """Run every check (raises :class:`CheckFailed`)."""
        for check in self.checks:
            check(probe)


def ok(summary: str, *checks: Check) -> Expect:
    """Success with ``checks`` holding on the layer."""
    return Expect(None, (), checks, summary)


def fails(error: type[LcowError], *names: str, summary: str = "") -> Expect:
    """Failure with ``error``, the message naming each of ``names``."""
    return Expect(error, names, (), summary or f"{error.__name__} naming {', '.join(names)}")


# --------------------------------------------------------------------------------------------
# cases


Builder = Callable[[BinaryIO], object]


@dataclass(frozen=True)
class HostileCase:
    """One hostile input.

    Attributes:
        name: short id (file name of the corpus entry).
        description: what the input is and why it is hostile.
        build: writes the uncompressed tar stream.
        expect: the outcome every sink must give.
        gzip: store the input gzip-compressed (huge but repetitive streams).
        slow: too heavy for the quick test run (``pytest -m "not slow"`` skips it).
        rss_mib: peak RSS a sink may reach on it, MiB (the process baseline included).
        cut: bytes cut from the end of the stored input (a compressed stream cut short).
        extract: what ``extract_archive`` must do instead of :attr:`expect`, where Docker's
            ``Untar`` legitimately differs from ApplyDiff (``None``: the same).
        extract_why: why it differs (shown in the corpus table of RELIABILITY.md).
    """

    name: str
    description: str
    build: Builder
    expect: Expect
    gzip: bool = False
    slow: bool = False
    rss_mib: int = 200
    cut: int = 0
    extract: Expect | None = None
    extract_why: str = ""

    @property
    def extract_expect(self) -> Expect:
        """What ``extract_archive`` of a view must do with this case."""
        return self.expect if self.extract is None else self.extract


def _bytes(*parts: bytes, end: bool = True) -> Builder:
    data = b"".join(parts) + (END if end else b"")
    return lambda out: out.write(data)


def _lazy(make: Callable[[], bytes]) -> Builder:
    return lambda out: out.write(make())


CASES: list[HostileCase] = []


def case(
    name: str,
    description: str,
    build: Builder,
    expect: Expect,
    **kw: object,
) -> None:
    """Register a case (names are unique)."""
    assert all(c.name != name for c in CASES), name
    CASES.append(HostileCase(name, description, build, expect, **kw))  # type: ignore[arg-type]


IA, LE, NF = InvalidArgument, LimitExceeded, NotFound

# -- names that try to leave the layer ------------------------------------------------------

case(
    "dotdot-leading",
    "a member named ../escape",
    _bytes(file(b"ok", b"x"), file(b"../escape", b"evil")),
    fails(IA, "../escape"),
)
case(
    "dotdot-climb-to-canary",
    "members ../canary/pwned, ../../canary/pwned ... eight levels up",
    _bytes(*(file(b"../" * n + b"canary/pwned", b"evil") for n in range(1, 9))),
    fails(IA, "canary/pwned"),
)
case(
    "dotdot-inside",
    "a/b/../../../etc/passwd: climbs out through a path that starts inside",
    _bytes(directory(b"a/b/"), file(b"a/b/../../../etc/passwd", b"root::0:0")),
    fails(IA, "etc/passwd"),
)
case(
    "dotdot-pax-path",
    "an innocent ustar name overridden by a PAX path ../../escape",
    _bytes(file(b"innocent", b"x", records=[(b"path", b"../../escape")])),
    fails(IA, "../../escape"),
)
case(
    "dotdot-gnu-longname",
    "a GNU long name (L record) of forty ../ then escape",
    _bytes(gnu_long(b"../" * 40 + b"escape"), file(b"short", b"x")),
    fails(IA, "escape"),
)
case(
    "dotdot-ustar-prefix",
    "the ustar prefix field ../.. joined to the name escape",
    _bytes(file(b"escape", b"x", prefix=b"../..")),
    fails(IA, "../../escape"),
)
case(
    "absolute-name",
    "/etc/abs-file: absolute names are relative to the layer root, as in moby",
    _bytes(file(b"/etc/abs-file", b"inside")),
    ok("/etc/abs-file inside the layer", is_dir(b"/etc"), is_file(b"/etc/abs-file", b"inside")),
)
case(
    "absolute-dotdot",
    "/../escape: an absolute name that climbs",
    _bytes(file(b"/../escape", b"x")),
    fails(IA, "/../escape"),
)
case(
    "dot-segments",
    "./a/./b/.//c: dots and doubled slashes collapse",
    _bytes(file(b"./a/./b/.//c", b"c")),
    ok("/a/b/c is a file", is_file(b"/a/b/c", b"c"), only(b"/", [b"a"])),
)
case(
    "nul-in-pax-path",
    "a PAX path with a NUL byte inside (a\\0b)",
    _bytes(file(b"placeholder", b"x", records=[(b"path", b"a\x00b")])),
    fails(IA, "NUL"),
)
case(
    "backslash-name",
    "..\\..\\evil: backslashes are ordinary name bytes without -convert-slash",
    _bytes(file(b"..\\..\\evil", b"x")),
    ok("one file named ..\\..\\evil at the root", is_file(b"/..\\..\\evil", b"x")),
)
case(
    "newline-names",
    "names with newlines and carriage returns (evil\\nname, dir\\r/x)",
    _bytes(file(b"evil\nname", b"1"), file(b"dir\r/x", b"2")),
    ok(
        "names kept byte for byte",
        is_file(b"/evil\nname", b"1"),
        is_file(b"/dir\r/x", b"2"),
    ),
)
case(
    "invalid-utf8-names",
    "names that are not UTF-8 (\\xff\\xfe, \\xc3\\x28/x, a lone surrogate encoding)",
    _bytes(file(b"\xff\xfe", b"1"), file(b"\xc3\x28/x", b"2"), file(b"\xed\xa0\x80", b"3")),
    ok(
        "names kept byte for byte",
        is_file(b"/\xff\xfe", b"1"),
        is_file(b"/\xc3\x28/x", b"2"),
        is_file(b"/\xed\xa0\x80", b"3"),
    ),
)
case(
    "control-char-names",
    "names with terminal escapes and a bell",
    _bytes(file(b"\x1b[31mred\x07", b"r"), file(b"tab\there", b"t")),
    ok("names kept", is_file(b"/\x1b[31mred\x07", b"r"), is_file(b"/tab\there", b"t")),
)
case(
    "name-component-256",
    "a name component of 256 bytes (ext4 allows 255)",
    _bytes(file(b"d/" + b"n" * 256, b"x")),
    fails(LE, "n" * 256, "max_name_len"),
)
case(
    "path-over-4096",
    "a path of twenty 250-byte components (5020 bytes > PATH_MAX)",
    _bytes(file(b"/".join([b"p" * 250] * 20), b"x")),
    fails(LE, "max_path_len"),
)
case(
    "deep-10k-one-entry",
    "one file 10,000 directories deep (d/d/.../d/f, a 20 KB PAX path)",
    _bytes(file(b"d/" * 10_000 + b"f", b"deep")),
    fails(LE, "max_depth"),
)


def _deep_every_level(out: BinaryIO) -> None:
    path = b""
    for _ in range(10_000):
        path += b"d/"
        out.write(directory(path))
    out.write(END)


case(
    "deep-10k-every-level",
    "10,000 directory entries, each one level deeper than the last (100 MB of PAX paths)",
    _deep_every_level,
    fails(LE, "max_depth"),
    gzip=True,
)
case(
    "deep-at-limit",
    f"a file exactly {DEFAULT_MAX_DEPTH} levels deep (the default max_depth)",
    _bytes(file(b"d/" * (DEFAULT_MAX_DEPTH - 1) + b"f", b"deep")),
    ok(
        f"/d/.../f at depth {DEFAULT_MAX_DEPTH}",
        is_file(b"/" + b"d/" * (DEFAULT_MAX_DEPTH - 1) + b"f", b"deep"),
    ),
)
case(
    "root-as-file",
    "a regular file named . (the root)",
    _bytes(file(b".", b"x")),
    fails(IA, "root"),
)
case(
    "empty-name",
    "a regular file with an empty name",
    _bytes(file(b"", b"x")),
    fails(IA, "root"),
)

# -- symlinks --------------------------------------------------------------------------------

case(
    "symlink-abs-write-through",
    "etc -> /etc, then a file etc/passwd written through the link",
    _bytes(symlink(b"etc", b"/etc"), file(b"etc/passwd", b"root::0:0")),
    fails(IA, "etc/passwd", "not a directory"),
)
case(
    "symlink-rel-write-through",
    "up -> ../../../../.., then up/canary/pwned",
    _bytes(symlink(b"up", b"../../../../.."), file(b"up/canary/pwned", b"evil")),
    fails(IA, "up/canary/pwned"),
)
case(
    "symlink-chain-write-through",
    "a -> b -> c -> /, then a/tmp/x through the chain",
    _bytes(symlink(b"a", b"b"), symlink(b"b", b"c"), symlink(b"c", b"/"), file(b"a/tmp/x")),
    fails(IA, "a/tmp/x"),
)
case(
    "symlink-replaces-dir-then-write",
    "dir d, then d -> /etc replacing it, then d/shadow",
    _bytes(directory(b"d/"), symlink(b"d", b"/etc"), file(b"d/shadow", b"x")),
    fails(IA, "d/shadow"),
)
case(
    "symlinks-pointing-outside",
    "symlinks to /etc/passwd, ../../../../etc/shadow and ../../canary, stored only",
    _bytes(
        symlink(b"abs", b"/etc/passwd"),
        symlink(b"rel", b"../../../../etc/shadow"),
        symlink(b"sub/canary", b"../../canary"),
    ),
    ok(
        "stored verbatim, never followed",
        is_symlink(b"/abs", b"/etc/passwd"),
        is_symlink(b"/rel", b"../../../../etc/shadow"),
        is_symlink(b"/sub/canary", b"../../canary"),
    ),
)
case(
    "symlink-loops",
    "a -> b, b -> a, self -> self",
    _bytes(symlink(b"a", b"b"), symlink(b"b", b"a"), symlink(b"self", b"self")),
    ok("loops stored", is_symlink(b"/a", b"b"), is_symlink(b"/self", b"self")),
)
case(
    "symlink-target-4096",
    "a symlink target of 4096 bytes (PATH_MAX with its NUL)",
    _bytes(symlink(b"long", b"t" * 4096)),
    fails(IA, "long", "4095"),
)
case(
    "symlink-empty-target",
    "a symlink with an empty target",
    _bytes(symlink(b"empty", b"")),
    fails(IA, "empty", "empty target"),
)
case(
    "hardlink-through-symlink",
    "lnk -> /etc, then a hard link h to lnk/passwd",
    _bytes(symlink(b"lnk", b"/etc"), hardlink(b"h", b"lnk/passwd")),
    fails(NF, "h", "lnk/passwd"),
)

# -- hard links ------------------------------------------------------------------------------

case(
    "hardlink-missing-target",
    "a hard link to a name the layer never had",
    _bytes(file(b"present"), hardlink(b"link", b"missing")),
    fails(NF, "link", "missing"),
)
case(
    "hardlink-dotdot-target",
    "a hard link to ../../etc/passwd",
    _bytes(hardlink(b"pw", b"../../etc/passwd")),
    fails(IA, "pw", ".."),
)
case(
    "hardlink-absolute-missing",
    "a hard link to /etc/shadow, absent from the layer",
    _bytes(hardlink(b"sh", b"/etc/shadow")),
    fails(NF, "sh", "/etc/shadow"),
)
case(
    "hardlink-absolute-inside",
    "etc/shadow, then x linked to /etc/shadow (absolute targets are layer-relative)",
    _bytes(file(b"etc/shadow", b"s"), hardlink(b"x", b"/etc/shadow")),
    ok("x and /etc/shadow share an inode", same_inode(b"/x", b"/etc/shadow", 2)),
)
case(
    "hardlink-to-directory",
    "a hard link to a directory",
    _bytes(directory(b"d/"), hardlink(b"dl", b"d")),
    fails(IA, "dl", "directory"),
)
case(
    "hardlink-to-itself",
    "h linked to h before h exists",
    _bytes(hardlink(b"h", b"h")),
    fails(NF, "h"),
)
case(
    "hardlink-to-symlink",
    "s -> /etc/passwd, then h hard-linked to the symlink itself",
    _bytes(symlink(b"s", b"/etc/passwd"), hardlink(b"h", b"s")),
    ok(
        "h is the same symlink inode",
        is_symlink(b"/h", b"/etc/passwd"),
        same_inode(b"/h", b"/s", 2),
    ),
)
case(
    "hardlink-before-target",
    "a hard link whose target comes later in the archive",
    _bytes(hardlink(b"h", b"later"), file(b"later", b"x")),
    fails(NF, "h", "later"),
)

# -- a name that changes type ----------------------------------------------------------------

case(
    "file-dir-file",
    "x as a file, then a directory with a child, then a file again",
    _bytes(file(b"x", b"one"), directory(b"x/"), file(b"x/y", b"child"), file(b"x", b"three")),
    ok("x is the last file", is_file(b"/x", b"three"), only(b"/", [b"x"])),
)
case(
    "dir-file-dir",
    "d as a directory with a child, then a file, then a directory again",
    _bytes(directory(b"d/"), file(b"d/a", b"a"), file(b"d", b"f"), directory(b"d/", mode=0o700)),
    ok("d is an empty 0700 directory", is_dir(b"/d", mode=0o700), only(b"/d", [])),
)
case(
    "file-then-child",
    "f as a file, then f/child as if f were a directory",
    _bytes(file(b"f", b"x"), file(b"f/child", b"y")),
    fails(IA, "f/child", "not a directory"),
)
case(
    "duplicate-1000",
    "one name written 1000 times with different contents",
    _lazy(lambda: b"".join(file(b"dup", b"%d" % i * 100) for i in range(1000)) + END),
    ok("the last copy wins", is_file(b"/dup", b"999" * 100), only(b"/", [b"dup"])),
)
case(
    "root-entry-metadata",
    "./ with mode 0777 and owner 12345: the root takes it",
    _bytes(directory(b"./", mode=0o777, uid=12345, gid=54321), file(b"a")),
    ok("root is 0777, owned by 12345", is_dir(b"/", mode=0o777, uid=12345)),
)
case(
    "lost-found-replaced",
    "lost+found replaced by a regular file",
    _bytes(file(b"lost+found", b"not a directory")),
    ok("lost+found is the file", is_file(b"/lost+found", b"not a directory")),
)

# -- sizes -----------------------------------------------------------------------------------

case(
    "declared-1tib-truncated",
    "a file header declaring 1 TiB followed by 4 KiB and the end of input",
    _bytes(file(b"huge", size=TiB) + b"h" * 4096, end=False),
    fails(LE, "huge", "maximum size"),
)
case(
    "declared-100gib-truncated",
    "a file header declaring 100 GiB (under max-size) followed by 4 KiB",
    _bytes(file(b"big", size=100 * GiB) + b"b" * 4096, end=False),
    fails(IA, "big", "unexpected end"),
)
case(
    "size-base256-2p80",
    "a GNU base-256 size field of 2^80 bytes",
    _bytes(file(b"enormous", size=1 << 80)),
    fails(LE, "enormous"),
)
case(
    "size-negative",
    "a base-256 size field holding -1",
    _bytes(file(b"negative", size=-1)),
    fails(IA, "negative"),
)
case(
    "size-field-garbage",
    "a size field of letters (checksum fixed)",
    _bytes(header(b"garbage-size", fields={124: b"zzzzzzzzzzz\x00"})),
    fails(IA, "garbage-size", "size"),
)
case(
    "pax-size-huge",
    "a PAX size record of 10^20 bytes",
    _bytes(file(b"paxhuge", records=[(b"size", b"100000000000000000000")]), end=False),
    fails(LE, "paxhuge"),
)
case(
    "pax-size-not-a-number",
    "a PAX size record that is not a number",
    _bytes(file(b"paxnan", b"x", records=[(b"size", b"12abc")])),
    fails(IA, "paxnan", "size"),
)
case(
    "pax-size-negative",
    "a PAX size record of -1024 (would move the reader backwards)",
    _bytes(file(b"paxneg", b"x", records=[(b"size", b"-1024")])),
    fails(IA, "paxneg", "size"),
)
case(
    "pax-uid-huge",
    "a PAX uid of 2^40 (ext4 owners are 32-bit)",
    _bytes(file(b"bigowner", b"x", records=[(b"uid", b"1099511627776")])),
    fails(IA, "bigowner", "uid"),
)
case(
    "owner-max",
    "uid and gid 4294967294, the largest 32-bit ids short of -1",
    _bytes(file(b"maxowner", b"x", records=[(b"uid", b"4294967294"), (b"gid", b"4294967294")])),
    ok("owner kept", owner_is(b"/maxowner", 4294967294, 4294967294)),
)
case(
    "pax-times-extreme",
    "PAX mtime -10^15.5 and atime 10^15 seconds: clamped to what ext4 stores",
    _bytes(
        file(b"old", b"o", records=[(b"mtime", b"-1000000000000000.5")]),
        file(b"new", b"n", records=[(b"atime", b"1000000000000000")]),
    ),
    ok("both files kept", is_file(b"/old", b"o"), is_file(b"/new", b"n")),
)
case(
    "pax-time-garbage",
    "a PAX mtime written in exponent notation (9e9)",
    _bytes(file(b"when", b"n", records=[(b"mtime", b"9e9")])),
    fails(IA, "when", "mtime"),
)
case(
    "sparse-1tib-realsize",
    "a GNU sparse 1.0 file of 1 TiB logical size holding 4 KiB at its end",
    _bytes(sparse_v1(b"holey", TiB, [(TiB - 4096, b"z" * 4096)])),
    ok("1 TiB sparse file", size_is(b"/holey", TiB)),
)
case(
    "sparse-map-beyond-file",
    "a sparse map with a segment past the file's logical size",
    _bytes(sparse_v1(b"beyond", 8192, [(0, b"a" * 512), (16384, b"b" * 512)])),
    fails(IA, "beyond", "sparse map"),
)
case(
    "sparse-map-more-than-stored",
    "an old GNU sparse member whose map describes more bytes than it stores",
    _bytes(gnu_old_sparse(b"short", 65536, [(0, 8192), (32768, 8192)], b"s" * 4096)),
    fails(IA, "short", "sparse map"),
)
case(
    "sparse-count-bomb",
    "a GNU sparse 1.0 map announcing 10^12 segments",
    _bytes(
        member(
            b"GNUSparseFile.0/bomb",
            padded(b"1000000000000\n0\n1\n") + b"x",
            records=[
                (b"GNU.sparse.major", b"1"),
                (b"GNU.sparse.minor", b"0"),
                (b"GNU.sparse.name", b"bomb"),
                (b"GNU.sparse.realsize", b"1"),
            ],
        )
    ),
    fails(LE, "bomb", "sparse map"),
)
case(
    "sparse-overlapping",
    "an old GNU sparse member with overlapping segments",
    _bytes(gnu_old_sparse(b"overlap", 16384, [(4096, 4096), (0, 8192)], b"o" * 12288)),
    fails(IA, "overlap", "sparse map"),
)

# -- metadata bombs --------------------------------------------------------------------------

case(
    "pax-record-bomb",
    "one PAX header of 2 MiB (a 2 MiB comment record)",
    _lazy(lambda: pax([(b"comment", b"c" * (2 * MiB))]) + file(b"after", b"x") + END),
    fails(LE, "limit"),
)
case(
    "pax-chain-bomb",
    "2500 PAX headers of 512 bytes each (1.2 MiB) before one member",
    _lazy(
        lambda: (
            b"".join(pax([(b"comment", b"c" * 480)]) for _ in range(2500))
            + file(b"after", b"x")
            + END
        )
    ),
    fails(LE, "limit"),
)
case(
    "pax-declared-1tib",
    "a PAX header declaring 1 TiB of records, then the end of input",
    _bytes(header(b"PaxHeader", type=b"x", size=TiB), b"9 a=bcd\n", end=False),
    fails(LE, "limit"),
)
case(
    "gnu-longname-bomb",
    "a GNU long name record of 2 MiB",
    _lazy(lambda: gnu_long(b"n" * (2 * MiB)) + file(b"after", b"x") + END),
    fails(LE, "limit"),
)
case(
    "gnu-longlink-bomb",
    "a GNU long link record of 2 MiB",
    _lazy(lambda: gnu_long(b"l" * (2 * MiB), b"K") + symlink(b"after", b"x") + END),
    fails(LE, "limit"),
)
case(
    "pax-global-bomb",
    "a PAX global header of 2 MiB",
    _lazy(lambda: pax([(b"comment", b"g" * (2 * MiB))], type=b"g") + file(b"after") + END),
    fails(LE, "limit"),
)
case(
    "pax-many-small-records",
    "one PAX header of 30,000 unknown records (900 KB, under the limit)",
    _lazy(
        lambda: (
            file(b"manyrec", b"ok", records=[(b"LCOW.x%d" % i, b"v" * 16) for i in range(30_000)])
            + END
        )
    ),
    ok("the member arrives", is_file(b"/manyrec", b"ok")),
)
case(
    "pax-bad-record-length",
    "a PAX record whose length runs past the header",
    _lazy(
        lambda: (
            header(b"PaxHeader", type=b"x", size=16)
            + padded(b"99999 path=abc\n\n")
            + file(b"after")
            + END
        )
    ),
    fails(IA, "PAX record"),
)

# -- extended attributes ---------------------------------------------------------------------

case(
    "xattr-value-over-block",
    "a 5000-byte user xattr (more than one ext4 block)",
    _bytes(file(b"fat", b"x", xattrs={b"user.big": b"v" * 5000})),
    fails(LE, "fat"),
)
case(
    "xattr-value-over-64k",
    "a 70,000-byte xattr value (more than XATTR_SIZE_MAX)",
    _bytes(file(b"fatter", b"x", xattrs={b"user.huge": b"v" * 70_000})),
    fails(LE, "fatter", "max_xattr_value_len"),
)
case(
    "xattr-name-over-255",
    "an xattr name of 305 bytes (ext4 stores at most 255)",
    _bytes(file(b"longattr", b"x", xattrs={b"user." + b"n" * 300: b"1"})),
    fails(LE, "longattr", "max_xattr_name_len"),
)
case(
    "xattr-many-small",
    "300 xattrs of 20 bytes on one file (more than the inode and a block hold)",
    _bytes(file(b"many", b"x", xattrs={b"user.a%03d" % i: b"v" * 20 for i in range(300)})),
    fails(LE, "many"),
)
case(
    "xattr-unknown-namespace",
    "an xattr in a namespace ext4 has no prefix for (foo.bar), beside a user one",
    _bytes(file(b"odd", b"x", xattrs={b"foo.bar": b"1", b"user.ok": b"2"})),
    ok(
        "unknown namespace skipped",
        has_xattr(b"/odd", b"user.ok", b"2"),
        has_xattr(b"/odd", b"foo.bar", None),
    ),
)
case(
    "xattr-malformed-acl",
    "a system.posix_acl_access value that is not an ACL",
    _bytes(file(b"badacl", b"x", xattrs={b"system.posix_acl_access": b"\x02\x00\x00\x00zz"})),
    fails(IA, "badacl", "ACL"),
)
case(
    "xattr-capability",
    "a file carrying security.capability (file capabilities are layer content)",
    _bytes(
        file(
            b"ping",
            b"x",
            mode=0o755,
            xattrs={b"security.capability": b"\x01\x00\x00\x02" + bytes(16)},
        )
    ),
    ok(
        "capability kept",
        has_xattr(b"/ping", b"security.capability", b"\x01\x00\x00\x02" + bytes(16)),
    ),
)

# -- special files and modes -----------------------------------------------------------------

case(
    "device-nodes",
    "character device 1:3, block device 8:0 and device 259:65536 (large minor)",
    _bytes(
        member(b"null", type=b"3", major=1, minor=3),
        member(b"sda", type=b"4", major=8, minor=0),
        member(b"nvme", type=b"4", major=259, minor=65536),
    ),
    ok(
        "devices kept with their numbers",
        is_device(b"/null", stat.S_IFCHR, 1, 3),
        is_device(b"/sda", stat.S_IFBLK, 8, 0),
        is_device(b"/nvme", stat.S_IFBLK, 259, 65536),
    ),
)
case(
    "device-major-too-big",
    "a device with major 2^20 (ext4 and Linux keep 12 bits)",
    _bytes(member(b"bigdev", type=b"3", major=1 << 20, minor=0)),
    fails(IA, "bigdev", "device"),
)
case(
    "fifo",
    "a named pipe",
    _bytes(member(b"pipe", type=b"6", mode=0o600)),
    ok("fifo kept", has_mode(b"/pipe", 0o600)),
)
case(
    "setuid-setgid-sticky",
    "a setuid root file, a setgid file, a sticky world-writable directory and mode 7777",
    _bytes(
        file(b"suid", b"#!", mode=0o4755),
        file(b"sgid", b"#!", mode=0o2755),
        directory(b"tmp/", mode=0o1777),
        file(b"all", b"", mode=0o7777),
    ),
    ok(
        "special bits kept",
        is_file(b"/suid", mode=0o4755),
        is_file(b"/sgid", mode=0o2755),
        is_dir(b"/tmp", mode=0o1777),
        is_file(b"/all", mode=0o7777),
    ),
)
case(
    "mode-garbage-high-bits",
    "a mode field with bits above 07777 set (0o177777)",
    _bytes(file(b"modebits", b"m", mode=0o177777)),
    ok("only the permission bits are kept", is_file(b"/modebits", mode=0o7777)),
)
case(
    "contiguous-file",
    "type 7 (contiguous file), a regular file everywhere that matters",
    _bytes(member(b"contig", b"c", type=b"7")),
    ok("a regular file", is_file(b"/contig", b"c")),
)
case(
    "dir-and-symlink-with-data",
    "a directory and a symlink header that carry data blocks",
    _bytes(
        member(b"dd/", b"d" * 1000, type=b"5", mode=0o755),
        member(b"sl", b"s" * 600, type=b"2", linkname=b"target"),
        file(b"after", b"a"),
    ),
    ok(
        "data skipped",
        is_dir(b"/dd"),
        is_symlink(b"/sl", b"target"),
        is_file(b"/after", b"a"),
    ),
)
for _flag, _what in ((b"V", "volume label"), (b"N", "old GNU long name"), (b"X", "type X")):
    case(
        f"unknown-type-{_flag.decode()}",
        f"a member of type {_flag.decode()} ({_what})",
        _bytes(file(b"ok"), member(b"weird", b"w", type=_flag)),
        fails(IA, "weird", "type"),
    )

# -- archive structure -----------------------------------------------------------------------

case(
    "corrupt-checksum",
    "a header whose stored checksum is wrong: no header, so its name is not quoted",
    _bytes(file(b"first"), header(b"victim", size=0, checksum=1234)),
    fails(IA, "invalid tar header at offset 512", "checksum", "after entry first"),
)
case(
    "truncated-in-header",
    "the input ends 300 bytes into a header",
    _bytes(file(b"ok", b"x"), header(b"second")[:300], end=False),
    fails(IA, "end of input"),
)
case(
    "truncated-in-data",
    "the input ends in the middle of a member's data",
    _bytes(file(b"ok", b"x"), file(b"cut", b"t" * 10_000)[: BLOCK + 5000], end=False),
    fails(IA, "cut", "unexpected end"),
)
case(
    "truncated-in-pax",
    "the input ends inside a PAX header's records",
    _bytes(file(b"ok", b"x"), pax([(b"path", b"p" * 300)])[: BLOCK + 100], end=False),
    fails(IA, "unexpected end"),
)
case(
    "not-a-tar",
    "10 KiB of pseudo-random bytes",
    _lazy(lambda: bytes((i * 7919 + (i >> 5)) % 256 for i in range(10_240))),
    fails(IA, "not a tar archive"),
)
case(
    "not-a-tar-text",
    "a text file (its first 100 bytes are no entry name to quote)",
    _lazy(lambda: b"# Network services, Internet style\n#\n" + b"ftp 21/tcp\n" * 900),
    fails(IA, "not a tar archive"),
)
case(
    "empty-input",
    "zero bytes: a tar cut at offset 0",
    _bytes(end=False),
    fails(IA, "empty input"),
)
case(
    "no-end-marker",
    "two members, then the input ends at a header boundary (a tar cut at a block boundary)",
    _bytes(file(b"a", b"x"), file(b"b", b"y"), end=False),
    fails(IA, "no end-of-archive marker", "after entry b"),
)
case(
    "one-zero-block",
    "a member and a single zero block: half an end-of-archive marker",
    _bytes(file(b"a", b"x"), bytes(BLOCK), end=False),
    fails(IA, "one zero block"),
)
case(
    "zero-block-then-member",
    "a member, one zero block, then another member (Go's reader: ErrHeader)",
    _bytes(file(b"a", b"x"), bytes(BLOCK), file(b"b", b"y")),
    fails(IA, "invalid tar header at offset 1536", "zero block followed by data"),
)
case(
    "gzip-cut-trailer",
    "a whole tar, gzip-compressed, without the 8-byte trailer (CRC-32 and length)",
    _bytes(file(b"a", b"x" * 5000)),
    fails(IA, "truncated gzip stream"),
    gzip=True,
    cut=8,
)
case(
    "gzip-cut-mid-stream",
    "a gzip-compressed tar cut in the middle of its deflate data",
    _lazy(lambda: file(b"a", bytes(range(256)) * 4000) + END),
    fails(IA, "truncated gzip stream"),
    gzip=True,
    cut=600,
)
case(
    "entries-after-end-marker",
    "a member, the end-of-archive marker, then another member",
    _bytes(file(b"before", b"b"), END, file(b"after", b"a")),
    ok("what follows the marker is ignored", is_file(b"/before"), absent(b"/after")),
)


def _zeros(total: int) -> Builder:
    def build(out: BinaryIO) -> None:
        chunk = bytes(MiB)
        for _ in range(total // MiB):
            out.write(chunk)

    return build


case(
    "zeros-bomb",
    "256 MiB of zero bytes (gzip: about 250 KB): an end marker, then padding to drain",
    _zeros(256 * MiB),
    ok("an empty layer, memory flat", only(b"/", [])),
    gzip=True,
    slow=True,
)


case(
    "many-long-names",
    "20,000 files with 255-byte names in one directory",
    lambda out: _many_long_names(out, 20_000),
    ok("all 20,000 names", entry_count(b"/long", 20_000)),
    gzip=True,
    slow=True,
)


def _many_long_names(out: BinaryIO, count: int) -> None:
    out.write(directory(b"long/"))
    for i in range(count):
        name = b"long/" + (b"%08d" % i).ljust(255, b"n")
        out.write(file(name))
    out.write(END)


def _million(out: BinaryIO) -> None:
    out.write(directory(b"big/"))
    batch = []
    for i in range(1_000_000):
        batch.append(header(b"big/f%07d" % i))
        if len(batch) == 4096:
            out.write(b"".join(batch))
            batch.clear()
    out.write(b"".join(batch) + END)


case(
    "million-entries-one-dir",
    "1,000,000 empty files in one directory (512 MB of headers, 9 MB gzip)",
    _million,
    ok("all 1,000,000 entries", entry_count(b"/big", 1_000_000)),
    gzip=True,
    slow=True,
    rss_mib=450,
)

# -- AUFS whiteouts (converted, as ApplyDiff does) --------------------------------------------

case(
    "whiteout-dotdot",
    "a/.wh... : a whiteout of '..' (would create a '..' device entry)",
    _bytes(directory(b"a/"), file(b"a/.wh...")),
    fails(IA, "a/.wh...", "whiteout"),
)
case(
    "whiteout-dot",
    "a/.wh.. : a whiteout of '.'",
    _bytes(directory(b"a/"), file(b"a/.wh..")),
    fails(IA, "a/.wh..", "whiteout"),
)
case(
    "whiteout-empty",
    "a/.wh. : a whiteout of an empty name",
    _bytes(directory(b"a/"), file(b"a/.wh.")),
    fails(IA, "a/.wh.", "whiteout"),
)
case(
    "whiteout-escape",
    "../.wh.x : a whiteout outside the layer",
    _bytes(file(b"../.wh.x")),
    fails(IA, "../.wh.x"),
)
case(
    "opaque-under-file",
    "f as a file, then f/.wh..wh..opq",
    _bytes(file(b"f", b"x"), file(b"f/.wh..wh..opq")),
    fails(IA, "f/.wh..wh..opq", "not a directory"),
)
case(
    "whiteout-ok",
    "a/.wh.gone and a/.wh..wh..opq: the regular whiteouts",
    _bytes(directory(b"a/"), file(b"a/.wh.gone"), file(b"a/.wh..wh..opq")),
    ok(
        "overlay whiteout and opaque xattr",
        is_device(b"/a/gone", stat.S_IFCHR, 0, 0),
        has_xattr(b"/a", b"trusted.overlay.opaque", b"y"),
    ),
)
case(
    "plnk-missing-source",
    "a hard link to .wh..wh.plnk/missing (an AUFS link source that is not there)",
    _bytes(hardlink(b"h", b".wh..wh.plnk/missing")),
    fails(NF, "h"),
)

# -- where extract_archive legitimately differs ------------------------------------------------
#
# extract_archive is Docker's Untar (docker cp, the plugin's view): a tree written file by file
# in a chroot at the destination, not a layer image. So it applies no converter limits (names,
# paths, depth, image size, xattr sizes: the kernel's own limits answer, as they answer Docker),
# keeps AUFS whiteouts as the files they are (no WhiteoutFormat given), lets a symlink inside
# the tree lead a later entry elsewhere inside it (the chroot keeps it in), and reads headers as
# Go's reader does where that differs from lcow's converter. Each difference, and why:

_FNTL = "file name too long"
_NO_CONVERTER_LIMITS = "no converter limits in extract_archive: the kernel refuses the name"
_NO_SIZE_LIMIT = "no image size limit: the member's data runs past the end of the input"
_AUFS_KEPT = "whiteouts are not converted by extract (no WhiteoutFormat): a plain file"
_CHROOT = "a symlink is followed inside the destination, as in Docker's chroot: stays inside"
EXTRACT_DIFFERENCES: dict[str, tuple[Expect, str]] = {
    "absolute-dotdot": (
        ok("lands at /escape", is_file(b"/escape")),
        "Docker cleans /../escape to /escape, inside the destination (the converter refuses)",
    ),
    "name-component-256": (fails(LE, "n" * 256, _FNTL), _NO_CONVERTER_LIMITS),
    "path-over-4096": (fails(LE, _FNTL), _NO_CONVERTER_LIMITS),
    "deep-10k-one-entry": (fails(LE, "d/d/d/d", _FNTL), _NO_CONVERTER_LIMITS),
    "deep-10k-every-level": (fails(LE, "d/d/d/d", _FNTL), _NO_CONVERTER_LIMITS),
    "symlink-abs-write-through": (
        fails(IA, "etc/passwd", "symbolic links"),
        "etc -> /etc is etc itself in the chroot: the kernel reports a symlink loop",
    ),
    "symlink-rel-write-through": (
        ok("written inside the view", is_file(b"/canary/pwned", b"evil")),
        _CHROOT,
    ),
    "symlink-chain-write-through": (ok("written inside the view", is_file(b"/tmp/x")), _CHROOT),
    "symlink-replaces-dir-then-write": (
        fails(NF, "d/shadow"),
        "d -> /etc leads to the view's /etc, which does not exist (Docker: ENOENT too)",
    ),
    "symlink-target-4096": (
        fails(LE, "long", _FNTL),
        "the kernel refuses a 4096-byte symlink target (ENAMETOOLONG), as it does for Docker",
    ),
    "symlink-empty-target": (
        fails(NF, "empty"),
        "the kernel refuses an empty symlink target (ENOENT), as it does for Docker",
    ),
    "declared-1tib-truncated": (fails(IA, "huge", "unexpected end"), _NO_SIZE_LIMIT),
    "size-base256-2p80": (fails(IA, "enormous", "unexpected end"), _NO_SIZE_LIMIT),
    "pax-size-huge": (fails(IA, "paxhuge", "unexpected end"), _NO_SIZE_LIMIT),
    "size-field-garbage": (
        fails(IA, "not a tar archive"),
        "tarfile cannot parse the only header: nothing precedes it to name (Go: ErrHeader)",
    ),
    "sparse-count-bomb": (
        fails(IA, "malformed header data"),
        "tarfile reads the announced map line by line and fails when the data ends: it never "
        "allocates for the count, so no limit is passed (Go: ErrHeader)",
    ),
    "xattr-value-over-64k": (
        fails(LE, "fatter", "user.huge"),
        "no converter xattr limits: the kernel refuses the value (E2BIG)",
    ),
    "xattr-name-over-255": (
        fails(LE, "longattr", "user.nnn"),
        "no converter xattr limits: the kernel refuses the name (ERANGE)",
    ),
    "xattr-malformed-acl": (
        fails(IA, "badacl", "posix_acl_access"),
        "the kernel judges the ACL (EINVAL); the converter's message says 'ACL' itself",
    ),
    "device-major-too-big": (
        fails(IA, "bigdev", "invalid argument"),
        "mknod refuses the device number (EINVAL); the converter checks it itself",
    ),
    "dir-and-symlink-with-data": (
        fails(IA, "invalid tar header", "after entry dd"),
        "Go's reader and tarfile read no data for a directory: its data block is read as the "
        "next header (Docker fails too); the converter skips it",
    ),
    "unknown-type-X": (
        fails(IA, "malformed PAX record", "after entry ok"),
        "type X is a Solaris extended header to tarfile (and GNU tar), not an entry",
    ),
    "whiteout-dotdot": (ok("kept as a file", is_file(b"/a/.wh...")), _AUFS_KEPT),
    "whiteout-dot": (ok("kept as a file", is_file(b"/a/.wh..")), _AUFS_KEPT),
    "whiteout-empty": (ok("kept as a file", is_file(b"/a/.wh.")), _AUFS_KEPT),
    "whiteout-ok": (
        ok("kept as files", is_file(b"/a/.wh.gone"), is_file(b"/a/.wh..wh..opq")),
        _AUFS_KEPT,
    ),
}
for _i, _case in enumerate(CASES):
    if _case.name in EXTRACT_DIFFERENCES:
        _expect, _why = EXTRACT_DIFFERENCES[_case.name]
        CASES[_i] = replace(_case, extract=_expect, extract_why=_why)

ALL_CASES: dict[str, HostileCase] = {c.name: c for c in CASES}

# --------------------------------------------------------------------------------------------
# writing the corpus


def case_path(directory: Path, hostile: HostileCase) -> Path:
    """Where :func:`write_case` puts a case: ``<name>.tar`` or ``<name>.tar.gz``."""
    return directory / (hostile.name + (".tar.gz" if hostile.gzip else ".tar"))


class _Counter(io.RawIOBase):
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.out.write(data)
        self.count += len(data)
        return len(data)


def write_case(directory: Path, hostile: HostileCase) -> Path:
    """Write one case's input (streamed; gzip level 1 when ``hostile.gzip``); return its path."""
    path = case_path(directory, hostile)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as raw:
        if hostile.gzip:
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
                hostile.build(gz)  # type: ignore[arg-type]
        else:
            hostile.build(raw)
        if hostile.cut:
            raw.truncate(raw.tell() - hostile.cut)
    os.replace(tmp, path)
    return path


def uncompressed_stream(path: Path) -> Iterator[bytes]:
    """The tar bytes of a corpus file, decompressed, in chunks (for digests)."""
    with open(path, "rb") as fh:
        if path.name.endswith(".gz"):
            dec = zlib.decompressobj(zlib.MAX_WBITS | 16)
            while chunk := fh.read(MiB):
                while chunk:
                    yield dec.decompress(chunk)
                    if dec.eof:
                        chunk = dec.unused_data
                        dec = zlib.decompressobj(zlib.MAX_WBITS | 16)
                    else:
                        chunk = b""
        else:
            while chunk := fh.read(MiB):
                yield chunk


@dataclass
class CorpusInfo:
    """The corpus written to a directory: each case's file."""

    directory: Path
    files: dict[str, Path] = field(default_factory=dict)


def write_corpus(directory: Path, names: Iterable[str] | None = None) -> CorpusInfo:
    """Write the cases named (default: all) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    info = CorpusInfo(directory)
    for name in names if names is not None else ALL_CASES:
        info.files[name] = write_case(directory, ALL_CASES[name])
    return info
