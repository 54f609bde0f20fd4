"""Entry names split into components: the C split (``lcow._tarscan.split_path``) gives what its
Python twin gives, for any name; the converter reports what either refuses by name; and the
split in use is the C one when it is built."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lcow.convert import entrypath
from lcow.convert.entrypath import Split, split_path_py
from lcow.convert.tar2ext4 import tar2ext4
from lcow.errors import InvalidArgument
from tests.harness.hostile.tarbuild import END, file
from tests.harness.tarscan_diff import tarscan

# Names made of the bytes that matter to a split: separators, dots, NUL, and others.
_NAMES = st.binary(max_size=48).map(lambda raw: bytes(b"a./\x00\xff\\"[c % 6] for c in raw))

_CASES = [
    (b"a/b/c", ([b"a", b"b", b"c"], b"a/b", 1, 6)),
    (b"./usr//lib/./x/", ([b"usr", b"lib", b"x"], b"usr/lib", 3, 10)),
    (b"", ([], b"", 0, 0)),
    (b"./", ([], b"", 0, 0)),
    (b"/", ([], b"", 0, 0)),
    (b"only", ([b"only"], b"", 4, 5)),
    (b"a/.../b", ([b"a", b"...", b"b"], b"a/...", 3, 8)),
    (b"a/../b", None),
    (b"..", None),
    (b"a/b\x00c", None),
]


def _native_split() -> Callable[[bytes], Split | None]:
    module = tarscan()
    if module is None:
        if os.environ.get("CI") == "true":
            pytest.fail("lcow._tarscan is not built: the C accelerator must be present in CI")
        pytest.skip("lcow._tarscan is not built (no C compiler at install?)")
    split: Callable[[bytes], Split | None] = module.split_path
    return split


@pytest.mark.parametrize(("name", "expected"), _CASES)
def test_the_python_split(name: bytes, expected: Split | None) -> None:
    assert split_path_py(name) == expected


@pytest.mark.parametrize(("name", "expected"), _CASES)
def test_the_c_split(name: bytes, expected: Split | None) -> None:
    assert _native_split()(name) == expected


@settings(max_examples=3000, deadline=None)
@given(_NAMES)
def test_the_c_split_is_the_python_split(name: bytes) -> None:
    assert _native_split()(name) == split_path_py(name)


def test_the_c_split_refuses_what_is_not_bytes() -> None:
    with pytest.raises(TypeError):
        _native_split()("a/b")  # type: ignore[arg-type]


def test_the_split_in_use_follows_lcow_native() -> None:
    native = os.environ.get("LCOW_NATIVE") != "0" and tarscan() is not None
    assert (entrypath.split_path is split_path_py) is not native


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (b"etc/../../escape", r"^etc/\.\./\.\./escape: name contains a '\.\.' component$"),
        (b"bin/a\x00b", "^bin/a\x00b: name contains a NUL byte$"),
        (b"../a\x00", r"name contains a '\.\.' component"),  # both: '..' is reported
    ],
)
def test_a_refused_name_is_reported_by_name(tmp_path: Path, name: bytes, message: str) -> None:
    tar = tmp_path / "in.tar"
    tar.write_bytes(file(b"placeholder", b"x", records=[(b"path", name)]) + END)
    with pytest.raises(InvalidArgument, match=message):
        tar2ext4(tar, tmp_path / "out.img")
    assert not (tmp_path / "out.img").exists()
