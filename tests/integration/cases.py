"""Tar-semantics cases written with Python's tarfile, shared by the mount and dissect oracles.

Each case is a list of :class:`~tests.helpers.TarEntry` plus options; the expected tree comes from
:func:`tests.treemodel.expect_from_tar` (moby UnpackLayer semantics, SPEC §6.6-6.7, §5.2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from tests.helpers import TarEntry as E

__all__ = ["CASES", "Case"]

KiB = 1 << 10
MiB = 1 << 20
T0 = 1_650_000_000 * 10**9


@dataclass(frozen=True)
class Case:
    """A tar to convert and the options to convert it with.

    Attributes:
        entries: the tar members in order.
        overlay: convert AUFS whiteouts (``-overlay``).
        inline: ``-inline``.
        convert_slash: ``-convert-slash``.
        dissect: dissect.extfs can read the result (it cannot read inline data).
    """

    entries: list[E] = field(default_factory=list)
    overlay: bool = False
    inline: bool = False
    convert_slash: bool = False
    dissect: bool = True


def _blob(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(n))


CASES: dict[str, Case] = {
    "missing-parents-then-their-entries": Case(
        [
            E("a/b/c/file", data=b"deep\n"),
            E("x/y/z", kind="symlink", target="../../a"),
            E("a/b", kind="dir", mode=0o700, uid=5, gid=6, mtime_ns=T0 + 5),
            E("a", kind="dir", mode=0o711, xattrs={"user.late": b"1"}, mtime_ns=T0 + 7),
        ]
    ),
    "root-entry-and-name-normalisation": Case(
        [
            E("./rel/./x", data=b"x"),
            E("/abs/file", data=b"abs"),
            E("./", kind="dir", mode=0o750, uid=1000, gid=1000, mtime_ns=T0 + 1),
            E("rel//y", data=b"y"),
            E("./rel/x", data=b"x again, same path"),
        ]
    ),
    "duplicates-later-wins": Case(
        [
            E("f", data=_blob(100 * KiB)),
            E("f", data=b"small"),
            E("g", data=b"tiny"),
            E("g", data=_blob(200 * KiB, 1), mode=0o600, uid=7),
            E("s", kind="symlink", target="one"),
            E("s", kind="symlink", target="t" * 100),
            E("p", kind="fifo"),
            E("p", data=b"fifo became a file"),
            E("q", data=_blob(9000, 2)),
            E("q", kind="symlink", target="file became a symlink"),
            E("dev", kind="chr", major=1, minor=3),
            E("dev", kind="dir"),
            E("dev/inside", data=b"device became a directory"),
        ]
    ),
    "directory-merges-into-directory": Case(
        [
            E("d", kind="dir", xattrs={"user.a": b"1", "user.b": b"2"}, mtime_ns=T0),
            E("d/child", data=b"kept"),
            E("d", kind="dir", mode=0o700, uid=3, xattrs={"user.b": b"3", "user.c": b"4"}),
        ]
    ),
    "file-dir-replacement": Case(
        [
            E("t", kind="dir"),
            E("t/sub", kind="dir"),
            E("t/sub/big", data=_blob(MiB, 3)),
            E("t/sub/link", kind="hardlink", target="t/sub/big"),
            E("t", data=b"a file replacing a tree with a 1 MiB file"),
            E("u", data=_blob(300 * KiB, 4)),
            E("u", kind="dir", mode=0o755),
            E("u/v", data=b"inside"),
        ]
    ),
    "hard-links": Case(
        [
            E("target", data=b"original\n"),
            E("sym", kind="symlink", target="target"),
            E("link-to-symlink", kind="hardlink", target="sym"),
            E("keeps-original", kind="hardlink", target="target"),
            E("target", data=b"replaced\n"),
            E("chain-1", data=b"chain"),
            E("chain-2", kind="hardlink", target="chain-1"),
            E("chain-3", kind="hardlink", target="chain-2"),
            E("victim", data=b"overwritten by a link"),
            E("victim", kind="hardlink", target="chain-1"),
            E("fifo", kind="fifo"),
            E("fifo-link", kind="hardlink", target="./fifo"),
            E("dev", kind="blk", major=8, minor=1),
            E("dev-link", kind="hardlink", target="/dev"),
        ]
    ),
    "lost+found-merges": Case(
        [
            E("lost+found", kind="dir", mode=0o700, uid=0, mtime_ns=T0 + 3),
            E("lost+found/stray", data=b"kept in the built-in lost+found"),
            E("other", data=b"x"),
        ]
    ),
    "symlink-lengths": Case(
        [E(f"sym-{n}", kind="symlink", target="x" * n) for n in (1, 58, 59, 60, 61, 1000, 4095)]
    ),
    "xattr-placement": Case(
        [
            E("in-inode", xattrs={"user.a": b"1", "trusted.b": b"22", "security.c": b"333"}),
            E("block", xattrs={"user.big": _blob(2000)}),
            E("both", xattrs={"user.s": b"small", "trusted.l": _blob(1500, 5)}),
            E("many", xattrs={f"user.k{i:03d}": bytes([i]) * 30 for i in range(60)}),
            E("empty-value", xattrs={"user.e": b""}),
            E("dir", kind="dir", xattrs={"user.d": b"on a dir", "trusted.t": _blob(300)}),
            *[E(f"edge-{n}", xattrs={"user.v": b"v" * n}) for n in range(60, 100, 4)],
        ]
    ),
    "devices-and-ids": Case(
        [
            E("c", kind="chr", major=1, minor=3, mode=0o666),
            E("b", kind="blk", major=259, minor=0xFFFFF),
            E("w", kind="chr", major=0xFFF, minor=0xFF),
            E("p", kind="fifo", mode=0o600),
            E("ids", uid=2**31, gid=2**32 - 2),
            E("ids-16", uid=65535, gid=65536),
            E("modes", mode=0o7777),
        ]
    ),
    "times": Case(
        [
            E("negative", mtime_ns=-(2**31) * 10**9),
            E("negative-ns", mtime_ns=-1_500_000_000),
            E("zero", mtime_ns=0),
            E("y2038", mtime_ns=2**31 * 10**9 + 1),
            E("y2106", mtime_ns=2**32 * 10**9 + 2),
            E("just-before-2262", mtime_ns=2**63 - 1),
        ]
    ),
    "times-after-2262": Case(
        [
            E("year-2262", mtime_ns=2**63 + 10**9),
            E("ext4-max", mtime_ns=0x3_7FFF_FFFF * 10**9 + 999_999_999),
        ]
    ),
    "sparse-pax-1.0": Case(
        [
            E(
                "aligned",
                kind="sparse",
                size=64 * MiB,
                sparse=[(0, b"a" * 4096), (MiB, b"b" * 8192)],
            ),
            E(
                "unaligned",
                kind="sparse",
                size=10_000,
                sparse=[(100, b"u" * 512), (9000, b"v" * 10)],
            ),
            E("holes-only", kind="sparse", size=5 * MiB + 3, sparse=[]),
            E("tail-in-data", kind="sparse", size=8192, sparse=[(4096, b"t" * 4096)]),
        ]
    ),
    "whiteouts-overlay": Case(
        [
            E("d/.wh.gone", uid=1000, gid=1001, mtime_ns=T0 + 9),
            E("d", kind="dir", mode=0o751),
            E("d/kept", data=b"kept"),
            E("o/.wh..wh..opq"),
            E("o", kind="dir", xattrs={"user.x": b"1"}),
            E("o/new", data=b"new"),
            E("later", kind="dir"),
            E("later/.wh..wh..opq"),
            E("n/e/s/t/.wh.deep"),
            E(".wh.top-level"),
        ],
        overlay=True,
    ),
    "whiteouts-aufs-hardlink-sources": Case(
        [
            E(".wh..wh.plnk", kind="dir", mode=0o700),
            E(".wh..wh.plnk/1234.5678", data=b"hidden hard-link source", uid=9),
            E("a", kind="dir"),
            E("a/hard", kind="hardlink", target=".wh..wh.plnk/1234.5678"),
            E("b", kind="hardlink", target=".wh..wh.plnk/1234.5678"),
            E(".wh..wh.other", data=b"AUFS metadata is not stored"),
        ],
        overlay=True,
    ),
    "whiteouts-verbatim-without-overlay": Case(
        [
            E("d/.wh.gone"),
            E("o/.wh..wh..opq"),
            E("o", kind="dir"),
        ],
    ),
    "convert-slash": Case(
        [
            E("win\\dir\\file", data=b"backslashes are separators"),
            E("win\\dir", kind="dir", mode=0o700),
        ],
        convert_slash=True,
    ),
    "backslash-kept-without-convert-slash": Case([E("win\\dir\\file", data=b"one name")]),
    "odd-names": Case(
        [
            E(b"\xff\xfe-not-utf8", data=b"1"),
            E("with space ", data=b"2"),
            E("new\nline", data=b"3"),
            E("ünï ✓", kind="dir"),
            E("ünï ✓/" + "n" * 255, data=b"4"),
            E("/".join(["p" * 250] * 8) + "/leaf", data=b"5"),
        ]
    ),
    "inline-data": Case(
        [E(f"f-{n}", data=_blob(n, n)) for n in (0, 1, 59, 60, 61, 100, 135, 136, 137, 4096)]
        + [E("with-xattr", data=b"x" * 100, xattrs={"user.a": b"1"})],
        inline=True,
        dissect=False,
    ),
}

# Keep the sizes honest: names longer than 255 bytes are bad input, not a case here.
for _case in CASES.values():
    for _entry in _case.entries:
        assert all(len(p) <= 255 for p in os.fsencode(_entry.name).split(b"/"))
