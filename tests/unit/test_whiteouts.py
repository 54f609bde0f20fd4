"""lcow.formats.whiteouts: AUFS names, overlay forms and the mapping (SPEC §5.1-§5.3)."""

from __future__ import annotations

import stat
from typing import AnyStr

import pytest

from lcow.formats import whiteouts as wh


@pytest.mark.parametrize(
    ("base", "whiteout", "metadata", "opaque"),
    [
        (b".wh.gone", True, False, False),
        (b".wh.", True, False, False),  # a marker of an empty name: callers refuse it
        (b".wh..wh..opq", True, True, True),
        (b".wh..wh.plnk", True, True, False),
        (b".wh..wh.other", True, True, False),
        (b"wh.gone", False, False, False),
        (b"a.wh.gone", False, False, False),
        (b".wh", False, False, False),
        (b"", False, False, False),
    ],
)
def test_name_predicates_in_bytes_and_str(
    base: bytes, whiteout: bool, metadata: bool, opaque: bool
) -> None:
    _assert_predicates(base, whiteout, metadata, opaque)
    _assert_predicates(base.decode(), whiteout, metadata, opaque)


def _assert_predicates(name: AnyStr, whiteout: bool, metadata: bool, opaque: bool) -> None:
    # one call per form: the predicates are generic in AnyStr, not over bytes | str
    assert wh.is_whiteout_name(name) is whiteout
    assert wh.is_metadata_name(name) is metadata
    assert wh.is_opaque_marker(name) is opaque


@pytest.mark.parametrize(
    ("base", "hidden"),
    [(b".wh.gone", b"gone"), (b".wh..wh..opq", b".wh..opq"), (b".wh.", b""), (b".wh...", b"..")],
)
def test_hidden_name_strips_the_prefix_only(base: bytes, hidden: bytes) -> None:
    assert wh.hidden_name(base) == hidden
    assert wh.hidden_name(base.decode()) == hidden.decode()


def test_hidden_name_of_a_plain_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="not a whiteout name"):
        wh.hidden_name(b"gone")


@pytest.mark.parametrize(
    ("path", "marker"),
    [
        (b"gone", b".wh.gone"),
        (b"a/gone", b"a/.wh.gone"),
        (b"a/b/gone", b"a/b/.wh.gone"),
        (b"/gone", b"/.wh.gone"),
        (b"./gone", b"./.wh.gone"),
    ],
)
def test_whiteout_path_marks_the_last_component(path: bytes, marker: bytes) -> None:
    assert wh.whiteout_path(path) == marker
    assert wh.whiteout_path(path.decode()) == marker.decode()
    base = marker.rpartition(b"/")[2]
    assert wh.is_whiteout_name(base) and wh.hidden_name(base) == path.rpartition(b"/")[2]


@pytest.mark.parametrize(
    ("directory", "marker"),
    [
        (b"a", b"a/.wh..wh..opq"),
        (b"a/", b"a/.wh..wh..opq"),
        (b"a/b", b"a/b/.wh..wh..opq"),
        (b"./", b"./.wh..wh..opq"),
        (b"/", b"/.wh..wh..opq"),
    ],
)
def test_opaque_marker_path_is_inside_the_directory(directory: bytes, marker: bytes) -> None:
    assert wh.opaque_marker_path(directory) == marker
    assert wh.opaque_marker_path(directory.decode()) == marker.decode()


@pytest.mark.parametrize(
    ("mode", "rdev", "expected"),
    [
        (stat.S_IFCHR, 0, True),
        (stat.S_IFCHR | 0o644, 0, True),  # permissions do not matter, the kernel's rule
        (stat.S_IFCHR, 1, False),
        (stat.S_IFCHR, (1 << 8) | 3, False),  # /dev/null
        (stat.S_IFBLK, 0, False),
        (stat.S_IFREG, 0, False),
        (stat.S_IFDIR, 0, False),
        (stat.S_IFIFO, 0, False),
    ],
)
def test_overlay_whiteout_is_a_char_device_0_0(mode: int, rdev: int, expected: bool) -> None:
    assert wh.is_overlay_whiteout(mode, rdev) is expected


def test_the_written_whiteout_is_recognised() -> None:
    assert wh.is_overlay_whiteout(wh.WHITEOUT_MODE, wh.WHITEOUT_RDEV)


@pytest.mark.parametrize(
    ("xattrs", "expected"),
    [
        ({b"trusted.overlay.opaque": b"y"}, True),
        ({b"trusted.overlay.opaque": b"n"}, False),
        ({b"trusted.overlay.opaque": b"Y"}, False),
        ({b"user.overlay.opaque": b"y"}, False),
        ({}, False),
    ],
)
def test_opaque_is_the_trusted_xattr_set_to_y(xattrs: dict[bytes, bytes], expected: bool) -> None:
    assert wh.is_opaque(xattrs) is expected


def test_with_and_without_opaque_keep_other_attributes() -> None:
    other = {b"user.a": b"1"}
    marked = wh.with_opaque(other)
    assert wh.is_opaque(marked) and marked[b"user.a"] == b"1"
    assert other == {b"user.a": b"1"}  # the argument is not changed
    assert wh.with_opaque(None) == {b"trusted.overlay.opaque": b"y"}
    assert wh.without_opaque(marked) == other


def test_str_constants_match_the_bytes_ones() -> None:
    assert wh.WHITEOUT_PREFIX_STR.encode() == wh.WHITEOUT_PREFIX
    assert wh.OPAQUE_MARKER_STR.encode() == wh.OPAQUE_MARKER
    assert wh.OPAQUE_XATTR_STR.encode() == wh.OPAQUE_XATTR
    assert wh.OPAQUE_MARKER.startswith(wh.META_PREFIX)
    assert wh.LINK_DIR.startswith(wh.META_PREFIX)
    assert all(
        wh.OPAQUE_XATTR.startswith(p) is (p == b"trusted.overlay.")
        for p in wh.OVERLAY_XATTR_PREFIXES
    )
