"""Real directory trees for the GNU tar matrix: every file type, made with system calls as root.

Each builder fills an empty directory. :class:`TreeBuilder` records explicit mtimes and, in
:meth:`TreeBuilder.finish`, sets every path's mtime bottom-up (children first, so directory mtimes
stick), using a deterministic nanosecond time per path when none was given.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

__all__ = ["TREES", "TreeBuilder", "build_tree", "gnu_tar"]

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
BLOCK = 4096


class TreeBuilder:
    """Creates paths below ``root``; names may be ``bytes`` (non-UTF-8)."""

    def __init__(self, root: Path) -> None:
        self.root = os.fsencode(root)
        self.times: dict[bytes, int] = {}

    def path(self, name: str | bytes) -> bytes:
        return os.path.join(self.root, os.fsencode(name))

    def dir(self, name: str | bytes, mode: int = 0o755) -> None:
        os.makedirs(self.path(name), exist_ok=True)
        os.chmod(self.path(name), mode)

    def file(self, name: str | bytes, data: bytes = b"", mode: int = 0o644) -> None:
        with open(self.path(name), "wb") as f:
            f.write(data)
        os.chmod(self.path(name), mode)

    def random_file(self, name: str | bytes, size: int) -> None:
        with open(self.path(name), "wb") as f:
            left = size
            while left:
                n = min(left, 4 * MiB)
                f.write(os.urandom(n))
                left -= n

    def sparse(self, name: str | bytes, size: int, segments: list[tuple[int, bytes]]) -> None:
        fd = os.open(self.path(name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for offset, data in segments:
                os.pwrite(fd, data, offset)
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def symlink(self, name: str | bytes, target: str | bytes) -> None:
        os.symlink(os.fsencode(target), self.path(name))

    def link(self, name: str | bytes, existing: str | bytes) -> None:
        os.link(self.path(existing), self.path(name), follow_symlinks=False)

    def fifo(self, name: str | bytes, mode: int = 0o644) -> None:
        os.mkfifo(self.path(name), mode)

    def device(self, name: str | bytes, kind: int, major: int, minor: int) -> None:
        os.mknod(self.path(name), kind | 0o640, os.makedev(major, minor))

    def chown(self, name: str | bytes, uid: int, gid: int) -> None:
        os.chown(self.path(name), uid, gid, follow_symlinks=False)

    def xattr(self, name: str | bytes, key: str, value: bytes) -> None:
        os.setxattr(self.path(name), key, value, follow_symlinks=False)

    def mtime(self, name: str | bytes, ns: int) -> None:
        self.times[os.fsencode(name)] = ns

    def finish(self) -> None:
        paths: list[bytes] = []
        for top, dirs, files in os.walk(self.root, topdown=True):
            rel = os.path.relpath(top, self.root)
            for n in dirs + files:
                paths.append(os.path.normpath(os.path.join(rel, n)))
        paths.sort(key=lambda p: -p.count(b"/"))
        for rel in [*paths, b"."]:
            ns = self.times.get(rel)
            if ns is None:
                h = int.from_bytes(hashlib.sha256(rel).digest()[:8], "little")
                ns = 1_500_000_000 * 10**9 + h % (10**17)
            os.utime(os.path.join(self.root, rel), ns=(ns, ns), follow_symlinks=False)


def _basic(b: TreeBuilder) -> None:
    b.dir("d1")
    b.dir("d1/d2", 0o700)
    b.dir("sticky", 0o1777)
    b.dir("setgid-dir", 0o2775)
    b.file("empty")
    b.file("small", b"hello\n")
    b.file("block-exact", b"x" * BLOCK)
    b.file("block-plus-one", b"y" * (BLOCK + 1))
    b.random_file("random-3m", 3 * MiB + 17)
    b.file("setuid", b"#!/bin/sh\n", 0o4755)
    b.file("setgid", b"#!/bin/sh\n", 0o2755)
    b.file("mode-000", b"locked\n", 0o000)
    b.file("mode-777", b"open\n", 0o777)
    b.file("d1/d2/nested", b"nested\n")
    for n in (1, 59, 60, 61, 200, 4095):
        b.symlink(f"sym-{n}", "t" * n)
    b.symlink("sym-dangling", "does/not/exist")
    b.symlink("sym-dir", "d1")
    b.symlink("sym-abs", "/etc/passwd")
    b.file("multi", b"three names\n")
    b.link("d1/multi-2", "multi")
    b.link("d1/d2/multi-3", "multi")
    b.link("hl-to-symlink", "sym-60")
    b.fifo("fifo")
    b.link("hl-to-fifo", "fifo")
    b.device("chr-null", stat.S_IFCHR, 1, 3)
    b.device("blk-sda1", stat.S_IFBLK, 8, 1)
    b.device("chr-wide", stat.S_IFCHR, 4095, 0xFFFFF)
    b.link("hl-to-dev", "chr-null")
    for name, uid, gid in (
        ("owned-1000", 1000, 1000),
        ("owned-65534", 65534, 65534),
        ("owned-65536", 65536, 70000),
        ("owned-big", 3_000_000_000, 4_000_000_000),
    ):
        b.file(name, name.encode())
        b.chown(name, uid, gid)
    b.symlink("sym-owned", "small")
    b.chown("sym-owned", 1234, 5678)
    b.dir("d-owned", 0o750)
    b.chown("d-owned", 1000, 1000)


def _xattrs(b: TreeBuilder) -> None:
    b.file("x-small", b"1")
    for key in ("user.a", "trusted.t", "security.s"):
        b.xattr("x-small", key, key.encode())
    b.file("x-empty-value")
    b.xattr("x-empty-value", "user.empty", b"")
    b.file("x-binary")
    b.xattr("x-binary", "user.bin", bytes(range(256)))
    b.file("x-big", b"big")
    b.xattr("x-big", "user.big", os.urandom(3000))
    b.file("x-many")
    for i in range(30):
        b.xattr("x-many", f"user.k{i:02d}", bytes([i]) * 20)
    for n in (20, 40, 60, 70, 80, 90):
        b.file(f"x-edge-{n}")
        b.xattr(f"x-edge-{n}", "user.v", b"v" * n)
    b.dir("x-dir")
    b.xattr("x-dir", "user.d", b"dir")
    b.xattr("x-dir", "trusted.overlay.opaque", b"y")
    b.symlink("x-symlink", "x-small")
    b.xattr("x-symlink", "trusted.sym", b"on a symlink")
    b.file("x-split", b"both places")
    b.xattr("x-split", "user.first", b"f" * 40)
    b.xattr("x-split", "trusted.second", b"s" * 2000)
    b.xattr("x-split", "security.third", b"t" * 30)


def _longnames(b: TreeBuilder) -> None:
    b.file("n" * 255, b"255-byte name\n")
    b.dir("d" * 255)
    b.file(("d" * 255) + "/" + ("f" * 255), b"in a 255-byte directory\n")
    b.symlink("s" * 255, "n" * 255)
    deep = "/".join(f"{i:02d}" + "p" * 198 for i in range(10))
    b.dir(deep)
    b.file(deep + "/" + "e" * 255, b"deep\n")
    for name in (
        "with space",
        "trailing space ",
        "tab\there",
        "new\nline",
        "back\\slash",
        "ünïcödé ✓",
        b"\xff\xfe-not-utf8",
        b"latin1-\xe9t\xe9",
        "-leading-dash",
        "...",
        ".hidden",
        ".wh.not-converted",
        "#%&*?[]{}=:;'\"",
    ):
        b.file(name, os.fsencode(name) + b"\n")


def _sparse(b: TreeBuilder) -> None:
    b.sparse("hole-only", 256 * MiB, [])
    b.sparse("lead-hole", 64 * MiB, [(64 * MiB - BLOCK, b"E" * BLOCK)])
    b.sparse("trail-hole", 64 * MiB, [(0, b"S" * BLOCK)])
    b.sparse("middle", 8 * MiB, [(MiB, b"M" * 3 * BLOCK)])
    b.sparse("partial-tail", 3 * BLOCK + 100, [(0, b"P" * BLOCK)])
    b.sparse("past-4gib", 4 * GiB + 2 * BLOCK, [(0, b"0" * BLOCK), (4 * GiB, b"F" * BLOCK)])
    for n in (4, 5, 340, 341, 1360, 1361, 3000):
        segments = [(2 * i * BLOCK, bytes([i % 251 + 1]) * BLOCK) for i in range(n)]
        b.sparse(f"extents-{n}", 2 * n * BLOCK, segments)


def _times(b: TreeBuilder) -> None:
    cases = {
        "t-negative": -1_000_000_000 * 10**9 + 123_456_789,
        "t-minus-one-ns": -1,
        "t-zero": 0,
        "t-ns": 1_600_000_000 * 10**9 + 1,
        "t-2038-edge": (2**31 - 1) * 10**9 + 999_999_999,
        "t-2038-after": (2**31 + 5) * 10**9 + 5,
        "t-2106-after": (2**32 + 7) * 10**9 + 7,
        "t-2262-before": (2**63 - 1) // 10**9 * 10**9 - 1,
    }
    for name, ns in cases.items():
        b.file(name, name.encode())
        b.mtime(name, ns)
    b.dir("t-dir")
    b.mtime("t-dir", -5 * 10**9 - 1)
    b.symlink("t-symlink", "t-zero")
    b.mtime("t-symlink", 1_234_567_890_987_654_321)


def _bigdir(b: TreeBuilder) -> None:
    b.dir("big")
    base = b.path("big")
    for i in range(100_000):
        os.close(os.open(os.path.join(base, b"entry-%06d-padding-name" % i), os.O_CREAT, 0o644))


def _large(b: TreeBuilder) -> None:
    b.random_file("large-300m", 300 * MiB + 1)


TREES: dict[str, Callable[[TreeBuilder], None]] = {
    "basic": _basic,
    "xattrs": _xattrs,
    "longnames": _longnames,
    "sparse": _sparse,
    "times": _times,
    "bigdir": _bigdir,
    "large": _large,
}


def build_tree(kind: str, root: Path) -> None:
    """Fill the empty directory ``root`` with the tree ``kind`` (a key of :data:`TREES`)."""
    builder = TreeBuilder(root)
    TREES[kind](builder)
    builder.finish()


def gnu_tar(
    src: Path, out: Path, *, fmt: str, sparse_version: str | None = None, xattrs: bool = False
) -> list[str]:
    """The GNU tar command that archives ``src`` (as ``./``) into ``out``."""
    argv = ["tar", "--create", f"--file={out}", f"--directory={src}", f"--format={fmt}"]
    argv += ["--numeric-owner", "--sort=name"]
    if sparse_version is not None:
        argv.append("--sparse")
        if sparse_version != "gnu":
            argv.append(f"--sparse-version={sparse_version}")
    if xattrs:
        argv += ["--xattrs", "--xattrs-include=*"]
    argv.append(".")
    return argv
