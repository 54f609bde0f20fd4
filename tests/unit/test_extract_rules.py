"""lcow.backends.extract_rules: Docker's Untar rules shared by the host and vm extractors."""

from __future__ import annotations

import io
import tarfile
from typing import AnyStr

import pytest

from lcow.backends import extract_rules as rules
from lcow.backends.taroptions import AUFS_WHITEOUTS, OVERLAY_WHITEOUTS, TarOptions
from lcow.errors import InvalidArgument, LimitExceeded


def _member(name: str, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    for key, value in fields.items():
        setattr(info, key, value)
    return info


@pytest.mark.parametrize(
    ("name", "cleaned"),
    [
        ("a/b", "a/b"),
        ("./a//b/", "a/b"),
        ("/a/../b", "/b"),
        ("a/../../x", None),  # climbs out
        ("../x", None),
        ("..", None),
        ("/..", "/"),  # absolute: the destination acts as "/"
        ("", "."),
        ("./", "."),
    ],
)
def test_entry_names_are_cleaned_and_breakouts_refused(name: str, cleaned: str | None) -> None:
    member = _member(name)
    if cleaned is None:
        with pytest.raises(InvalidArgument, match="path escapes the destination directory"):
            rules.entry_name(member, TarOptions())
    else:
        assert rules.entry_name(member, TarOptions()) == cleaned


def test_excluded_names_are_skipped_before_the_breakout_check() -> None:
    options = TarOptions(exclude_patterns=("skip", "../"))
    assert rules.entry_name(_member("skip/me"), options) is None
    assert rules.entry_name(_member("../out"), options) is None  # Docker: excludes come first
    assert rules.entry_name(_member("keep"), options) == "keep"


@pytest.mark.parametrize(("name", "root"), [(".", True), ("/", True), ("a", False), ("./a", False)])
def test_is_root(name: str, root: bool) -> None:
    assert rules.is_root(name) is root


def test_root_replacement_message() -> None:
    error = rules.cannot_replace_root(_member("./", type=tarfile.REGTYPE))
    assert str(error) == "./: cannot replace the root (the destination directory)"


def test_link_targets_are_cleaned_and_breakouts_refused() -> None:
    assert rules.link_target(_member("l", type=tarfile.LNKTYPE, linkname="/a/./b")) == "/a/b"
    with pytest.raises(InvalidArgument, match=r"^l: hard link to 'a/\.\./\.\./x' escapes"):
        rules.link_target(_member("l", type=tarfile.LNKTYPE, linkname="a/../../x"))


@pytest.mark.parametrize(
    ("base", "overlay", "aufs"),
    [
        (".wh..wh..opq", rules.Marker.OPAQUE, None),
        (".wh.gone", rules.Marker.WHITEOUT, None),
        (".wh..wh.plnk", rules.Marker.WHITEOUT, None),  # Docker: any other prefixed name
        ("gone", None, None),
        ("x.wh.y", None, None),
    ],
)
def test_overlay_markers_only_with_the_overlay_format(
    base: str, overlay: rules.Marker | None, aufs: rules.Marker | None
) -> None:
    _assert_markers(base, overlay, aufs)
    _assert_markers(base.encode(), overlay, aufs)


def _assert_markers(name: AnyStr, overlay: rules.Marker | None, aufs: rules.Marker | None) -> None:
    # one call per form: overlay_marker is generic in AnyStr, not over str | bytes
    assert rules.overlay_marker(name, TarOptions(whiteout_format=OVERLAY_WHITEOUTS)) is overlay
    assert rules.overlay_marker(name, TarOptions(whiteout_format=AUFS_WHITEOUTS)) is aufs


def test_owner_from_header_chown_or_none() -> None:
    member = _member("f", uid=7, gid=8)
    assert rules.owner(member, TarOptions()) == (7, 8)
    assert rules.owner(member, TarOptions(chown=(1, 2))) == (1, 2)
    assert rules.owner(member, TarOptions(no_lchown=True, chown=(1, 2))) is None


def test_mode_bits_keep_setuid_setgid_and_sticky() -> None:
    assert rules.mode_bits(_member("f", mode=0o107755)) == 0o7755


@pytest.mark.parametrize(
    ("pax", "mtime", "expected"),
    [
        ({}, 1_000, (1_000 * 10**9, 1_000 * 10**9)),
        ({"mtime": "12.5"}, 0, (12_500_000_000, 12_500_000_000)),
        ({"mtime": "-1.25"}, 0, (-1_250_000_000, -1_250_000_000)),
        ({"mtime": "10", "atime": "20.000000001"}, 0, (20_000_000_001, 10 * 10**9)),
        ({"mtime": "10", "atime": "5"}, 0, (10 * 10**9, 10 * 10**9)),  # atime >= mtime
        ({"mtime": "1.1234567891"}, 0, (1_123_456_789, 1_123_456_789)),  # ns precision
    ],
)
def test_times(pax: dict[str, str], mtime: int, expected: tuple[int, int]) -> None:
    assert rules.times_ns(_member("f", pax_headers=pax, mtime=mtime)) == expected


def test_a_bad_pax_time_names_the_entry() -> None:
    with pytest.raises(InvalidArgument, match=r"^f: invalid PAX mtime '1x'"):
        rules.times_ns(_member("f", pax_headers={"mtime": "1x"}))


def test_directories_get_their_times_last() -> None:
    assert rules.defers_times(_member("d", type=tarfile.DIRTYPE))
    assert not rules.defers_times(_member("f", type=tarfile.REGTYPE))


def test_xattrs_come_from_schily_records() -> None:
    member = _member(
        "f", pax_headers={"SCHILY.xattr.user.a": "1", "mtime": "5", "SCHILY.xattr.user.b": ""}
    )
    assert sorted(rules.xattrs(member)) == [("user.a", b"1"), ("user.b", b"")]


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _read(data: bytes) -> list[str]:
    stream = io.BytesIO(data)
    with rules.open_archive(rules.peek(stream), "t.tar") as archive:
        return [m.name for m in rules.members(archive, "t.tar")]


def test_whole_archives_are_read_member_by_member() -> None:
    data = _tar((_member("a"), b"x"), (_member("b"), b""))
    assert _read(data) == ["a", "b"]


def test_a_cut_archive_names_the_member_before_the_damage() -> None:
    data = _tar((_member("a"), b"x"), (_member("b"), b""))
    with pytest.raises(InvalidArgument, match=r"^t\.tar: truncated archive: .*\(after entry b\)$"):
        _read(data[:1536])  # a's header and data, b's header, then nothing: no end marker


def test_owners_past_32_bits_are_refused() -> None:
    data = _tar((_member("a", uid=1 << 32), b""))
    with pytest.raises(InvalidArgument, match=r"^a: uid 4294967296 is out of range"):
        _read(data)


def test_a_pax_block_past_the_limit_is_a_limit() -> None:
    data = _tar((_member("a", pax_headers={"comment": "x" * (1 << 20)}), b""))
    with pytest.raises(LimitExceeded, match="exceed the limit"):
        _read(data)
