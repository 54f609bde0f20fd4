"""Helpers of the layer export round-trip tests (issue 3, SPEC §5.3).

Reading a tar back as comparable members (name, type, permission bits, owner, nanosecond
mtime, xattrs, link target, device numbers, content digest, hard-link target), comparing
member lists, converting a tar with lcow's writer and exporting the image again, and the
hand-written layers (every type; whiteouts) the tests share.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from lcow import ConvertOptions, tar2ext4
from lcow.convert.export import ExportResult, export_layer
from lcow.formats.ext4.reader import Ext4Reader
from tests.helpers import TarEntry

__all__ = [
    "T0",
    "KiB",
    "Member",
    "MiB",
    "assert_order",
    "assert_same_members",
    "convert",
    "every_type",
    "export",
    "link_groups",
    "member_name",
    "read_members",
    "resolve",
    "whiteout_entries",
]

_NS = 1_000_000_000
T0 = 1_650_000_000 * _NS + 123_456_789
KiB = 1 << 10
MiB = 1 << 20


# --------------------------------------------------------------------------------------------
# reading tars back


@dataclass(frozen=True)
class Member:
    """One tar member as the comparison sees it (``link``: hard-link target name)."""

    kind: str
    perm: int
    uid: int
    gid: int
    mtime_ns: int
    size: int
    digest: str | None
    target: bytes | None
    rdev: tuple[int, int] | None
    xattrs: dict[str, bytes]
    link: bytes | None


_KIND = {
    tarfile.REGTYPE: "reg",
    tarfile.AREGTYPE: "reg",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "lnk",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "chr",
    tarfile.BLKTYPE: "blk",
    tarfile.FIFOTYPE: "fifo",
}


def member_name(raw: str) -> bytes:
    parts = [p for p in os.fsencode(raw).split(b"/") if p not in (b"", b".")]
    return b"/".join(parts)


def _mtime(info: tarfile.TarInfo) -> int:
    text = info.pax_headers.get("mtime")
    return int(Decimal(text) * _NS) if text is not None else int(info.mtime) * _NS


def _pax_xattrs(info: tarfile.TarInfo) -> dict[str, bytes]:
    prefix = "SCHILY.xattr."
    return {
        k[len(prefix) :]: v.encode("utf-8", "surrogateescape")
        for k, v in info.pax_headers.items()
        if k.startswith(prefix)
    }


def read_members(tar: Path | bytes) -> list[tuple[bytes, Member]]:
    """Members in archive order, names normalised (no ``./``, no trailing ``/``)."""
    out: list[tuple[bytes, Member]] = []
    fileobj = io.BytesIO(tar) if isinstance(tar, bytes) else None
    with tarfile.open(
        name=None if fileobj else tar,
        fileobj=fileobj,
        mode="r:",
        encoding="utf-8",
        errors="surrogateescape",
    ) as tf:
        for info in tf:
            kind = _KIND[info.type]
            digest = None
            if kind == "reg":
                f = tf.extractfile(info)
                assert f is not None
                h = hashlib.sha256()
                while chunk := f.read(MiB):
                    h.update(chunk)
                digest = h.hexdigest()
            out.append(
                (
                    member_name(info.name),
                    Member(
                        kind=kind,
                        perm=info.mode & 0o7777,
                        uid=info.uid,
                        gid=info.gid,
                        mtime_ns=_mtime(info),
                        size=info.size if kind == "reg" else 0,
                        digest=digest,
                        target=os.fsencode(info.linkname) if kind == "lnk" else None,
                        rdev=(info.devmajor, info.devminor) if kind in ("chr", "blk") else None,
                        xattrs=_pax_xattrs(info),
                        link=member_name(info.linkname) if kind == "hardlink" else None,
                    ),
                )
            )
    return out


def link_groups(members: Sequence[tuple[bytes, Member]]) -> set[frozenset[bytes]]:
    """Hard-link groups (two names or more) as a set of name sets."""
    groups: dict[bytes, set[bytes]] = {}
    for name, m in members:
        if m.link is not None:
            groups.setdefault(m.link, {m.link}).add(name)
    return {frozenset(g) for g in groups.values()}


def resolve(members: Sequence[tuple[bytes, Member]]) -> dict[bytes, Member]:
    """Name -> member, a hard link replaced by the member it links to (with the link's name)."""
    by_name = dict(members)
    out = {}
    for name, m in members:
        while m.link is not None:
            m = by_name[m.link]
        out[name] = m
    return out


def assert_same_members(
    got: Sequence[tuple[bytes, Member]],
    want: Sequence[tuple[bytes, Member]],
    *,
    skip: Sequence[bytes] = (),
) -> None:
    """Same names, same resolved members, same hard-link partition."""
    g = {n: m for n, m in resolve(got).items() if n and n not in skip}
    w = {n: m for n, m in resolve(want).items() if n and n not in skip}
    assert sorted(g) == sorted(w), f"only exported: {sorted(set(g) - set(w))[:10]}, " + (
        f"only expected: {sorted(set(w) - set(g))[:10]}"
    )
    problems = [f"{n!r}: exported {g[n]}\n   expected {w[n]}" for n in sorted(w) if g[n] != w[n]]
    assert not problems, "\n".join(problems[:20])
    assert link_groups([x for x in got if x[0] not in skip]) == link_groups(
        [x for x in want if x[0] not in skip]
    )


# --------------------------------------------------------------------------------------------
# converting and exporting


def convert(tar: Path, out: Path, *, overlay: bool = True, inline: bool = False) -> Path:
    image = out / (tar.stem + ".vhd")
    tar2ext4(
        tar, image, ConvertOptions(convert_whiteouts=overlay, vhd_footer=True, inline_data=inline)
    )
    return image


def export(
    image: Path, out: Path, *, aufs: bool = True, top: bytes = b"/"
) -> tuple[Path, ExportResult]:
    tar = out / (image.stem + (".aufs" if aufs else ".raw") + ".tar")
    with Ext4Reader.open(image) as reader, open(tar, "wb") as f:
        result = export_layer(reader, f, aufs_whiteouts=aufs, top=top)
    assert result.bytes_written == tar.stat().st_size
    return tar, result


def assert_order(members: Sequence[tuple[bytes, Member]], *, aufs: bool = False) -> None:
    """Directories before their contents, names sorted depth first, no root, no ``./``.

    With ``aufs``, markers sort where the names they stand for do: ``.wh.X`` as ``X`` (the
    image holds ``X``), ``D/.wh..wh..opq`` right after ``D``.
    """
    names = [n for n, _ in members]
    assert b"" not in names
    seen_dirs = {b""}
    for name, m in members:
        parent = name.rpartition(b"/")[0]
        assert parent in seen_dirs, f"{name!r} before its directory"
        if m.kind == "dir":
            seen_dirs.add(name)

    def key(name: bytes) -> list[bytes]:
        parts = name.split(b"/")
        if aufs and parts[-1] == b".wh..wh..opq":
            return [*parts[:-1], b""]
        if aufs and parts[-1].startswith(b".wh."):
            return [*parts[:-1], parts[-1][4:]]
        return parts

    keys = [key(n) for n in names]
    assert keys == sorted(keys), "not depth first with names sorted"


def _blob(n: int, seed: int) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "little")).digest(n)


def every_type() -> list[TarEntry]:
    parts = [f"{i:02d}" + "q" * 60 for i in range(5)]
    ancestors = ["/".join(parts[: i + 1]) for i in range(len(parts) - 1)]
    deep = "/".join(parts)
    return [
        *(
            TarEntry(a, kind="dir", mode=0o711, mtime_ns=T0 + 20 + i)
            for i, a in enumerate(ancestors)
        ),
        TarEntry("d", kind="dir", mode=0o755, mtime_ns=T0),
        TarEntry("d/sub", kind="dir", mode=0o700, uid=5, gid=6, mtime_ns=T0 + 1),
        TarEntry("d/sub/nested", data=b"nested\n", mtime_ns=T0 + 2),
        TarEntry("sticky", kind="dir", mode=0o1777, mtime_ns=-5 * _NS - 1),
        TarEntry("setgid-dir", kind="dir", mode=0o2775, mtime_ns=0),
        TarEntry("empty", mtime_ns=T0),
        TarEntry("small", data=b"hello\n", mode=0o4755, mtime_ns=T0 + 3),
        TarEntry("block", data=_blob(4096, 1), mode=0o600, mtime_ns=1_234_567_890 * _NS),
        TarEntry("big", data=_blob(300 * KiB + 7, 2), mtime_ns=(2**31 + 5) * _NS + 5),
        TarEntry("bigger", data=_blob(3 * MiB + 1, 3), mtime_ns=(2**32 + 7) * _NS + 7),
        TarEntry("mode-000", data=b"locked", mode=0),
        TarEntry("sym-short", kind="symlink", target="small", mode=0o777, mtime_ns=T0 + 4),
        TarEntry("sym-60", kind="symlink", target="t" * 60, mode=0o777, uid=1234, gid=5678),
        TarEntry("sym-300", kind="symlink", target="/" + "u/" * 150, mode=0o777, mtime_ns=T0 + 5),
        TarEntry("multi", data=b"three names\n", mtime_ns=T0 + 6),
        TarEntry("d/multi-2", kind="hardlink", target="multi"),
        TarEntry("d/sub/multi-3", kind="hardlink", target="multi"),
        TarEntry("hl-to-symlink", kind="hardlink", target="sym-60"),
        TarEntry("fifo", kind="fifo", mode=0o640, mtime_ns=T0 + 7),
        TarEntry("hl-to-fifo", kind="hardlink", target="fifo"),
        TarEntry("chr", kind="chr", major=1, minor=3, mode=0o666),
        TarEntry("blk", kind="blk", major=8, minor=1, mode=0o660),
        TarEntry("chr-wide", kind="chr", major=4095, minor=0xFFFFF),
        TarEntry("hl-to-dev", kind="hardlink", target="chr"),
        TarEntry("owned-big", data=b"ids", uid=3_000_000_000, gid=4_000_000_000),
        TarEntry("owned-65536", data=b"ids", uid=65536, gid=70000),
        TarEntry(
            "x",
            data=b"xattrs",
            xattrs={
                "user.a": b"1",
                "user.empty": b"",
                "user.bin": bytes(range(256)),
                "trusted.t": b"t" * 2000,
                "security.s": b"s",
            },
        ),
        TarEntry("x-dir", kind="dir", xattrs={"user.d": b"dir"}, mtime_ns=T0 + 8),
        TarEntry("n" * 255, data=b"255-byte name"),
        TarEntry(deep, kind="dir", mtime_ns=T0 + 9),
        TarEntry(deep + "/" + "e" * 200, data=b"deep", mtime_ns=T0 + 10),
        TarEntry(b"\xff\xfe-not-utf8", data=b"latin", mtime_ns=T0 + 11),
        TarEntry("new\nline and space", data=b"odd"),
        TarEntry(
            "sparse",
            kind="sparse",
            size=8 * MiB + 5,
            sparse=[(MiB, b"M" * 8192), (5 * MiB, b"N" * 100)],
            mtime_ns=T0 + 12,
        ),
        TarEntry("hole-only", kind="sparse", size=64 * MiB, sparse=[], mtime_ns=T0 + 13),
    ]


def whiteout_entries() -> list[TarEntry]:
    return [
        TarEntry("keep", kind="dir", mode=0o751, uid=7, gid=8, mtime_ns=T0),
        TarEntry("keep/.wh.gone", mode=0o644, uid=11, gid=12, mtime_ns=T0 + 1),
        TarEntry(".wh.top-gone", uid=13, gid=14, mtime_ns=T0 + 2),
        TarEntry(
            "opq",
            kind="dir",
            mode=0o2750,
            uid=21,
            gid=22,
            mtime_ns=T0 + 3,
            xattrs={"user.kept": b"yes"},
        ),
        TarEntry("opq/.wh..wh..opq", mode=0o644, uid=99, gid=99, mtime_ns=T0 + 4),
        TarEntry("opq/child", data=b"new", mtime_ns=T0 + 5),
        TarEntry("opq/sub", kind="dir", mtime_ns=T0 + 6),
        TarEntry("opq/sub/.wh..wh..opq"),
        TarEntry("plain", data=b"plain", mtime_ns=T0 + 7),
    ]
