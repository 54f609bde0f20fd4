"""Layer export (Diff) round trips: tar -> layer.vhd (lcow's writer) -> tar (issue 3, SPEC §5.3).

Every exported member must equal its source: name, type, permission bits, owner, nanosecond
mtime, xattrs, link target, device numbers, content, and hard-link grouping (the partition of
names into inodes, not which name comes first). Sources:

* tars written with Python's tarfile (PAX: long names, big ids, binary xattrs, GNU sparse 1.0),
  a hand-written one covering every type and a Hypothesis-drawn family checked against the
  moby UnpackLayer model of :mod:`tests.treemodel`;
* trees made with system calls (:mod:`tests.integration.trees`) archived by GNU tar;
* images made by ``mke2fs -d`` and by the kernel (loop mount read-write + copy), exported and
  compared with ``tar -C MNT --numeric-owner --xattrs -c`` of the same image mounted read-only.

AUFS whiteouts: with conversion on, ``.wh.NAME`` comes back as an empty ``.wh.NAME`` of mode
0600 with the whiteout's owner and mtime, and ``DIR/.wh..wh..opq`` right after its directory
(the directory's permission bits and owner, mtime 0); with conversion off on both sides the
markers are ordinary files; with ingest on and export off the overlay forms (0/0 character
device, ``trusted.overlay.opaque``) come out as they are stored. The writer's empty
``lost+found`` is never exported. The ``lcow vhd2tar`` command is covered at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from lcow import ConvertOptions, tar2ext4
from lcow.convert.export import ExportResult, export_layer
from lcow.formats.ext4.reader import Ext4Reader
from tests.helpers import TarEntry, loop_mount, requires, run, write_tar
from tests.integration.cases import CASES
from tests.integration.trees import TreeBuilder, build_tree, gnu_tar
from tests.property.strategies import layer_entries
from tests.treemodel import Expected, expect_from_tar

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


def _name(raw: str) -> bytes:
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
                    _name(info.name),
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
                        link=_name(info.linkname) if kind == "hardlink" else None,
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


# --------------------------------------------------------------------------------------------
# a hand-written tar: every type, exact round trip


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


def _expected_members(tar: Path) -> list[tuple[bytes, Member]]:
    return [(n, m) for n, m in read_members(tar) if n]


@pytest.mark.parametrize("inline", [False, True], ids=["blocks", "inline"])
def test_every_type_round_trips_exactly(tmp_path: Path, inline: bool) -> None:
    src = write_tar(tmp_path / "every.tar", every_type())
    image = convert(src, tmp_path, inline=inline)
    out, result = export(image, tmp_path)
    got = read_members(out)
    assert_order(got, aufs=True)
    assert b"lost+found" not in [n for n, _ in got]
    want = _expected_members(src)
    assert_same_members(got, want)
    assert result.entries == len(got)
    assert link_groups(got) == {
        frozenset({b"multi", b"d/multi-2", b"d/sub/multi-3"}),
        frozenset({b"sym-60", b"hl-to-symlink"}),
        frozenset({b"fifo", b"hl-to-fifo"}),
        frozenset({b"chr", b"hl-to-dev"}),
    }


def test_sparse_files_read_back_correct(tmp_path: Path) -> None:
    size = 3 * 4096 + 100
    entries = [
        TarEntry(
            "lead-hole", kind="sparse", size=16 * MiB, sparse=[(16 * MiB - 4096, b"E" * 4096)]
        ),
        TarEntry("trail-hole", kind="sparse", size=16 * MiB, sparse=[(0, b"S" * 4096)]),
        TarEntry("partial-tail", kind="sparse", size=size, sparse=[(0, b"P" * 4096)]),
        TarEntry(
            "many-extents",
            kind="sparse",
            size=2 * 400 * 4096,
            sparse=[(2 * i * 4096, bytes([i % 251 + 1]) * 4096) for i in range(400)],
        ),
    ]
    src = write_tar(tmp_path / "sparse.tar", entries)
    out, _ = export(convert(src, tmp_path), tmp_path)
    got = resolve(read_members(out))
    with tarfile.open(out) as tf:
        data = {_name(m.name): tf.extractfile(m).read() for m in tf if m.isreg()}  # type: ignore[union-attr]
    assert data[b"lead-hole"] == bytes(16 * MiB - 4096) + b"E" * 4096
    assert data[b"trail-hole"] == b"S" * 4096 + bytes(16 * MiB - 4096)
    assert data[b"partial-tail"] == b"P" * 4096 + bytes(size - 4096)
    many = bytearray(2 * 400 * 4096)
    for i in range(400):
        many[2 * i * 4096 : (2 * i + 1) * 4096] = bytes([i % 251 + 1]) * 4096
    assert data[b"many-extents"] == many
    assert_same_members(list(got.items()), _expected_members(src))


# --------------------------------------------------------------------------------------------
# whiteouts


def _whiteout_entries() -> list[TarEntry]:
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


def test_whiteouts_come_back_in_aufs_form(tmp_path: Path) -> None:
    src = write_tar(tmp_path / "wh.tar", _whiteout_entries())
    out, _ = export(convert(src, tmp_path, overlay=True), tmp_path, aufs=True)
    got = read_members(out)
    assert_order(got, aufs=True)
    names = [n for n, _ in got]
    assert names == [
        b"keep",
        b"keep/.wh.gone",
        b"opq",
        b"opq/.wh..wh..opq",
        b"opq/child",
        b"opq/sub",
        b"opq/sub/.wh..wh..opq",
        b"plain",
        b".wh.top-gone",
    ]
    g = dict(got)
    want = {n: m for n, m in _expected_members(src)}
    for name in (b"keep/.wh.gone", b".wh.top-gone"):
        w = want[name]
        assert g[name] == Member("reg", 0o600, w.uid, w.gid, w.mtime_ns, 0, g[name].digest,
                                 None, None, {}, None)  # fmt: skip
        assert g[name].digest == hashlib.sha256(b"").hexdigest()
    for d in (b"opq", b"opq/sub"):
        w = want[d]
        assert g[d] == w, "the directory itself, without the opaque xattr"
        marker = g[d + b"/.wh..wh..opq"]
        assert (marker.kind, marker.perm, marker.uid, marker.gid, marker.mtime_ns, marker.size) == (
            "reg",
            w.perm,
            w.uid,
            w.gid,
            0,
            0,
        )
    for name in (b"keep", b"opq/child", b"plain"):
        assert g[name] == want[name]


def test_whiteout_conversion_off_on_both_sides_is_verbatim(tmp_path: Path) -> None:
    src = write_tar(tmp_path / "wh.tar", _whiteout_entries())
    out, _ = export(convert(src, tmp_path, overlay=False), tmp_path, aufs=False)
    assert_same_members(read_members(out), _expected_members(src))


def test_overlay_forms_without_export_conversion(tmp_path: Path) -> None:
    src = write_tar(tmp_path / "wh.tar", _whiteout_entries())
    out, _ = export(convert(src, tmp_path, overlay=True), tmp_path, aufs=False)
    g = dict(read_members(out))
    assert not [n for n in g if b".wh." in n]
    gone = g[b"keep/gone"]
    assert (gone.kind, gone.rdev, gone.uid, gone.gid, gone.mtime_ns) == (
        "chr",
        (0, 0),
        11,
        12,
        T0 + 1,
    )
    assert g[b"opq"].xattrs == {"user.kept": b"yes", "trusted.overlay.opaque": b"y"}
    assert g[b"opq/sub"].xattrs == {"trusted.overlay.opaque": b"y"}


# --------------------------------------------------------------------------------------------
# lost+found


def test_lost_found_of_the_writer_is_not_exported(tmp_path: Path) -> None:
    src = write_tar(tmp_path / "a.tar", [TarEntry("a", data=b"a")])
    image = convert(src, tmp_path)
    with Ext4Reader.open(image) as reader:
        assert reader.lookup(b"/lost+found").is_dir
    out, result = export(image, tmp_path)
    assert [n for n, _ in read_members(out)] == [b"a"]
    assert result.entries == 1


def test_lost_found_with_content_is_exported(tmp_path: Path) -> None:
    src = write_tar(
        tmp_path / "a.tar",
        [TarEntry("lost+found", kind="dir", mode=0o700), TarEntry("lost+found/f", data=b"f")],
    )
    out, _ = export(convert(src, tmp_path), tmp_path)
    assert [n for n, _ in read_members(out)] == [b"lost+found", b"lost+found/f"]


# --------------------------------------------------------------------------------------------
# tarfile-built tars against the UnpackLayer model


def _member_matches(name: bytes, m: Member, e: Expected) -> list[str]:
    kind = {"reg": "reg", "dir": "dir", "lnk": "lnk", "chr": "chr", "blk": "blk", "fifo": "fifo"}
    out = []
    checks = {
        "kind": (kind[m.kind], e.kind),
        "perm": (m.perm, e.perm),
        "uid": (m.uid, e.uid),
        "gid": (m.gid, e.gid),
        "mtime_ns": (m.mtime_ns, e.mtime_ns),
        "target": (m.target, e.target),
        "rdev": (m.rdev, e.rdev),
        "xattrs": (m.xattrs, e.xattrs),
    }
    if e.kind == "reg":
        checks["size"] = (m.size, e.size)
    for key, (got, want) in checks.items():
        if want is not None and got != want:
            out.append(f"{name!r} {key}: exported {got!r}, expected {want!r}")
    return out


def _content_of(tar: Path) -> dict[bytes, bytes]:
    with tarfile.open(tar, encoding="utf-8", errors="surrogateescape") as tf:
        return {
            _name(m.name): tf.extractfile(m).read()  # type: ignore[union-attr]
            for m in tf
            if m.isreg()
        }


def check_against_model(src: Path, out: Path, *, overlay: bool) -> None:
    """Exported members (overlay forms, no AUFS conversion) equal the model of ``src``."""
    from tests.treemodel import digest_bytes

    expected = {p: e for p, e in expect_from_tar(src, convert_whiteouts=overlay).items() if p}
    members = read_members(out)
    got = resolve(members)
    lost = expected.get(b"lost+found")
    if lost is not None and not [p for p in expected if p.startswith(b"lost+found/")]:
        del expected[b"lost+found"]  # an empty lost+found is never exported
    assert sorted(got) == sorted(expected)
    content = _content_of(out)
    problems: list[str] = []
    for name, e in expected.items():
        problems += _member_matches(name, got[name], e)
        if e.digest is not None and got[name].kind == "reg":
            data = content[name] if name in content else content[_first_name(members, name)]
            if digest_bytes(data) != e.digest:
                problems.append(f"{name!r}: content differs")
    assert not problems, "\n".join(problems[:20])
    groups: dict[int, set[bytes]] = {}
    for name, e in expected.items():
        if e.group is not None:
            groups.setdefault(e.group, set()).add(name)
    assert link_groups(members) == {frozenset(g) for g in groups.values() if len(g) > 1}


def _first_name(members: Sequence[tuple[bytes, Member]], name: bytes) -> bytes:
    m = dict(members)[name]
    while m.link is not None:
        name = m.link
        m = dict(members)[name]
    return name


@pytest.mark.parametrize("case", sorted(n for n, c in CASES.items() if not c.convert_slash))
def test_tar_cases_against_the_model(case: str, tmp_path: Path) -> None:
    spec = CASES[case]
    src = write_tar(tmp_path / "case.tar", spec.entries)
    image = tmp_path / "case.vhd"
    tar2ext4(src, image, ConvertOptions(convert_whiteouts=spec.overlay, inline_data=spec.inline))
    out, _ = export(image, tmp_path, aufs=False)
    assert_order(read_members(out))
    check_against_model(src, out, overlay=spec.overlay)


_HYPOTHESIS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}


@settings(max_examples=int(os.environ.get("LCOW_PROPERTY_EXAMPLES", "0")) or 40, **_HYPOTHESIS)  # type: ignore[arg-type]
@given(entries=layer_entries(whiteouts=True))
def test_random_layers_against_the_model(entries: list[TarEntry]) -> None:
    with tempfile.TemporaryDirectory(prefix="lcow-export-") as tmp:
        work = Path(tmp)
        src = write_tar(work / "layer.tar", entries)
        image = work / "layer.vhd"
        tar2ext4(src, image, ConvertOptions(convert_whiteouts=True, vhd_footer=True))
        out, _ = export(image, work, aufs=False)
        assert_order(read_members(out))
        check_against_model(src, out, overlay=True)
        # The AUFS export converts back into the same content — but a 0/0 character device
        # *is* a whiteout: it comes back with mode 0000, and each name of a hard-linked one
        # becomes its own marker.
        aufs, _ = export(image, work, aufs=True)
        again = work / "again.vhd"
        tar2ext4(aufs, again, ConvertOptions(convert_whiteouts=True))
        out2, _ = export(again, work, aufs=False)
        first, second = read_members(out), read_members(out2)
        assert _whiteout_perms_dropped(second) == _whiteout_perms_dropped(first)
        assert _groups_without_whiteouts(second) == _groups_without_whiteouts(first)


def _whiteout_perms_dropped(members: Sequence[tuple[bytes, Member]]) -> dict[bytes, Member]:
    return {
        n: dataclasses.replace(m, perm=0) if m.kind == "chr" and m.rdev == (0, 0) else m
        for n, m in resolve(members).items()
    }


def _groups_without_whiteouts(members: Sequence[tuple[bytes, Member]]) -> set[frozenset[bytes]]:
    resolved = resolve(members)
    return {
        g
        for g in link_groups(members)
        if not any(resolved[n].kind == "chr" and resolved[n].rdev == (0, 0) for n in g)
    }


# --------------------------------------------------------------------------------------------
# GNU tar of real trees


def _gnu_members(tar: Path) -> list[tuple[bytes, Member]]:
    return [(n, m) for n, m in read_members(tar) if n]


def _small_sparse(b: TreeBuilder) -> None:
    b.sparse("hole-only", 32 * MiB, [])
    b.sparse("lead-hole", 8 * MiB, [(8 * MiB - 4096, b"E" * 4096)])
    b.sparse("middle", 8 * MiB, [(MiB, b"M" * 3 * 4096)])
    b.sparse("partial-tail", 3 * 4096 + 100, [(0, b"P" * 4096)])
    b.sparse(
        "extents-341",
        2 * 341 * 4096,
        [(2 * i * 4096, bytes([i % 251 + 1]) * 4096) for i in range(341)],
    )


@requires("root", "xattrs", "tar")
@pytest.mark.parametrize("kind", ["basic", "xattrs", "longnames", "times", "sparse"])
def test_gnu_tar_trees_round_trip(kind: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    if kind == "sparse":
        builder = TreeBuilder(src)
        _small_sparse(builder)
        builder.finish()
    else:
        build_tree(kind, src)
    tar = tmp_path / f"{kind}.tar"
    proc = run(gnu_tar(src, tar, fmt="posix", sparse_version="1.0", xattrs=True))
    assert proc.returncode == 0, proc.stderr
    # Whiteout conversion off on both sides: the trees hold a ".wh." name and an opaque xattr
    # that must come back verbatim.
    out, _ = export(convert(tar, tmp_path, overlay=False), tmp_path, aufs=False)
    got = read_members(out)
    assert_order(got)
    assert_same_members(got, _gnu_members(tar))


# --------------------------------------------------------------------------------------------
# images made by mke2fs -d and by the kernel, against tar -c of the read-only mount


def _oracle_tree(root: Path) -> None:
    b = TreeBuilder(root)
    b.dir("d/e", 0o750)
    b.file("d/e/f", b"in e\n")
    b.dir("big")
    for i in range(3000):  # enough for an htree in the kernel's image
        b.file(f"big/entry-with-a-longish-name-{i:05d}", b"x" * (i % 5))
    b.file("small", b"small\n", 0o4755)
    b.random_file("random", 3 * MiB + 123)
    b.sparse("sparse", 40 * MiB, [(20 * MiB, b"middle")])
    b.symlink("sym", "small")
    b.symlink("slow-sym", "/" + "v/" * 100 + "end")
    b.file("multi", b"linked")
    b.link("d/multi-2", "multi")
    b.fifo("fifo")
    b.device("null", stat.S_IFCHR, 1, 3)
    b.device("whiteout", stat.S_IFCHR, 0, 0)
    b.chown("small", 1000, 1000)
    b.xattr("small", "user.a", b"1")
    b.xattr("small", "trusted.t", b"trusted")
    b.xattr("d", "trusted.overlay.opaque", b"y")
    b.xattr("random", "user.big", b"B" * 900)  # fits a 1 KiB block
    b.mtime("small", T0)
    b.finish()


def _kernel_tar(mnt: Path, out: Path) -> Path:
    proc = run(
        ["tar", "-C", mnt, "--numeric-owner", "--xattrs", "--xattrs-include=*", "-cf", out, "."]
    )
    assert proc.returncode == 0, proc.stderr
    return out


@contextlib.contextmanager
def _rw_mount(image: Path, mnt: Path) -> Iterator[Path]:
    mnt.mkdir()
    proc = run(["mount", "-t", "ext4", "-o", "loop", image, mnt])
    assert proc.returncode == 0, proc.stderr
    try:
        yield mnt
    finally:
        if run(["umount", mnt]).returncode != 0:
            run(["umount", "--lazy", mnt])


def _mke2fs_image(tmp: Path, args: list[str]) -> Path:
    src = tmp / "tree"
    src.mkdir()
    _oracle_tree(src)
    image = tmp / "mke2fs.img"
    proc = run(["mke2fs", "-q", "-F", *args, "-d", src, image, "200M"])
    assert proc.returncode == 0, proc.stderr
    return image


def _kernel_image(tmp: Path, args: list[str]) -> Path:
    image = tmp / "kernel.img"
    with open(image, "wb") as f:
        f.truncate(200 * MiB)
    proc = run(["mke2fs", "-q", "-F", *args, image])
    assert proc.returncode == 0, proc.stderr
    with _rw_mount(image, tmp / "rw") as mnt:
        _oracle_tree(mnt)
    return image


_ORACLE_IMAGES = {
    "mke2fs-d": (_mke2fs_image, ["-t", "ext4"]),
    "mke2fs-d-64bit-csum-inline": (
        _mke2fs_image,
        ["-t", "ext4", "-O", "64bit,metadata_csum,inline_data"],
    ),
    "kernel-ext4": (_kernel_image, ["-t", "ext4", "-b", "4096"]),
    "kernel-ext4-1k-inline": (
        _kernel_image,
        ["-t", "ext4", "-b", "1024", "-O", "inline_data,^has_journal"],
    ),
}


@requires("root", "loop", "xattrs", "mke2fs", "tar")
@pytest.mark.parametrize("name", sorted(_ORACLE_IMAGES))
def test_export_of_foreign_images_equals_kernel_tar(name: str, tmp_path: Path) -> None:
    builder, args = _ORACLE_IMAGES[name]
    image = builder(tmp_path, args)
    with loop_mount(image, tmp_path / "ro"):
        ref = _kernel_tar(tmp_path / "ro", tmp_path / "kernel.tar")
    want = [(n, m) for n, m in read_members(ref) if n and n != b"lost+found"]
    for aufs in (False, True):
        with (
            Ext4Reader.open(image, verify_checksums=True) as reader,
            open(tmp_path / "ours.tar", "wb") as f,
        ):
            export_layer(reader, f, aufs_whiteouts=aufs)
        got = read_members(tmp_path / "ours.tar")
        assert_order(got, aufs=aufs)
        if not aufs:
            assert_same_members(got, want)
            continue
        g = dict(got)
        assert b"whiteout" not in g and g[b".wh.whiteout"].perm == 0o600
        assert g[b"d/.wh..wh..opq"].perm == dict(want)[b"d"].perm
        assert "trusted.overlay.opaque" not in g[b"d"].xattrs


# --------------------------------------------------------------------------------------------
# the lcow vhd2tar command


def _lcow(
    *args: str | os.PathLike[str], stdout: int | None = subprocess.PIPE
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "lcow", "vhd2tar", *map(os.fspath, args)],
        stdout=stdout,
        stderr=subprocess.PIPE,
        check=False,
    )


@pytest.fixture
def layer(tmp_path: Path) -> tuple[Path, Path]:
    src = write_tar(tmp_path / "layer.tar", [*every_type()[:14], *_whiteout_entries()])
    return src, convert(src, tmp_path)


def test_cli_to_stdout_pipe(layer: tuple[Path, Path], tmp_path: Path) -> None:
    _, image = layer
    proc = _lcow("-i", image)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    out, _ = export(image, tmp_path)
    assert proc.stdout == out.read_bytes()


def test_cli_to_file_and_json(layer: tuple[Path, Path], tmp_path: Path) -> None:
    _, image = layer
    target = tmp_path / "out" / "layer.tar"
    target.parent.mkdir()
    proc = _lcow("-i", image, "-o", target, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["bytes"] == target.stat().st_size
    assert summary["entries"] == len(read_members(target))
    assert [p.name for p in target.parent.iterdir()] == ["layer.tar"]  # no temporaries left
    proc = _lcow("-i", image, "-o", target)
    assert proc.returncode == 0
    assert b"entries" in proc.stdout


def test_cli_json_goes_to_stderr_with_the_tar_on_stdout(layer: tuple[Path, Path]) -> None:
    _, image = layer
    proc = _lcow("-i", image, "--json")
    assert proc.returncode == 0
    summary = json.loads(proc.stderr)
    assert summary["bytes"] == len(proc.stdout)
    assert summary["output"] is None


def test_cli_to_a_regular_file_on_stdout(layer: tuple[Path, Path], tmp_path: Path) -> None:
    _, image = layer
    with open(tmp_path / "redirected.tar", "wb") as f:
        proc = _lcow("-i", image, stdout=f.fileno())
    assert proc.returncode == 0
    out, _ = export(image, tmp_path)
    assert (tmp_path / "redirected.tar").read_bytes() == out.read_bytes()


def test_cli_no_whiteout_conversion(layer: tuple[Path, Path]) -> None:
    _, image = layer
    proc = _lcow("-i", image, "--no-whiteout-conversion")
    assert proc.returncode == 0
    names = [n for n, _ in read_members(proc.stdout)]
    assert b"keep/gone" in names and not [n for n in names if b".wh." in n]


def test_cli_top(tmp_path: Path) -> None:
    src = write_tar(
        tmp_path / "sandbox.tar",
        [
            TarEntry("upper", kind="dir"),
            TarEntry("upper/f", data=b"f"),
            TarEntry("work", kind="dir"),
        ],
    )
    image = convert(src, tmp_path)
    proc = _lcow("-i", image, "--top", "/upper")
    assert proc.returncode == 0, proc.stderr
    assert [n for n, _ in read_members(proc.stdout)] == [b"f"]
    assert _lcow("-i", image, "--top", "/nope").returncode == 4
    assert _lcow("-i", image, "--top", "upper").returncode == 2


def test_cli_errors(tmp_path: Path) -> None:
    proc = _lcow("-i", tmp_path / "missing.vhd")
    assert proc.returncode == 4
    assert proc.stderr.startswith(b"lcow: ")
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(64 * KiB))
    proc = _lcow("-i", junk)
    assert proc.returncode == 3
    assert b"lcow: " in proc.stderr
    assert _lcow().returncode == 2  # -i is required


def test_cli_refuses_a_terminal(layer: tuple[Path, Path]) -> None:
    _, image = layer
    master, slave = os.openpty()
    try:
        proc = _lcow("-i", image, stdout=slave)
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 2
    assert b"terminal" in proc.stderr


@pytest.mark.skipif(shutil.which("cat") is None, reason="needs cat")
def test_cli_stops_quietly_when_the_reader_goes_away(layer: tuple[Path, Path]) -> None:
    """``lcow vhd2tar | head`` ends as other tools do: no message, status 141 (SIGPIPE's) when
    the reader left before the end, 0 if everything was written first."""
    _, image = layer
    cmd = f"{sys.executable} -m lcow vhd2tar -i {image} | head -c 100 > /dev/null"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, check=False)
    assert proc.returncode in (0, 141), proc.stderr
    assert proc.stderr == b""
