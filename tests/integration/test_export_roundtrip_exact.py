"""Layer export (Diff) round trips of hand-written tars: every type exactly, whiteouts,
lost+found (issue 3, SPEC §5.3).

Every exported member must equal its source: name, type, permission bits, owner, nanosecond
mtime, xattrs, link target, device numbers, content, and hard-link grouping (the partition of
names into inodes, not which name comes first).

AUFS whiteouts: with conversion on, ``.wh.NAME`` comes back as an empty ``.wh.NAME`` of mode
0600 with the whiteout's owner and mtime, and ``DIR/.wh..wh..opq`` right after its directory
(the directory's permission bits and owner, mtime 0); with conversion off on both sides the
markers are ordinary files; with ingest on and export off the overlay forms (0/0 character
device, ``trusted.overlay.opaque``) come out as they are stored. The writer's empty
``lost+found`` is never exported.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pytest

from lcow.formats.ext4.reader import Ext4Reader
from tests.helpers import TarEntry, write_tar
from tests.integration.export_roundtrip import (
    T0,
    Member,
    MiB,
    assert_order,
    assert_same_members,
    convert,
    every_type,
    export,
    link_groups,
    member_name,
    read_members,
    resolve,
    whiteout_entries,
)

# --------------------------------------------------------------------------------------------
# a hand-written tar: every type, exact round trip


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
        data = {member_name(m.name): tf.extractfile(m).read() for m in tf if m.isreg()}  # type: ignore[union-attr]
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


def test_whiteouts_come_back_in_aufs_form(tmp_path: Path) -> None:
    src = write_tar(tmp_path / "wh.tar", whiteout_entries())
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
    src = write_tar(tmp_path / "wh.tar", whiteout_entries())
    out, _ = export(convert(src, tmp_path, overlay=False), tmp_path, aufs=False)
    assert_same_members(read_members(out), _expected_members(src))


def test_overlay_forms_without_export_conversion(tmp_path: Path) -> None:
    src = write_tar(tmp_path / "wh.tar", whiteout_entries())
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
