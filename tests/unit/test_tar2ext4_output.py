"""tar2ext4's two outputs: a path (own temporary name, renamed) and a caller's descriptor
(written in place, nothing renamed), as ApplyDiff stages its image."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lcow.convert.options import ConvertOptions
from lcow.convert.tar2ext4 import tar2ext4
from lcow.errors import InvalidArgument
from lcow.formats.ext4.reader import Ext4Reader
from lcow.formats.whiteouts import is_overlay_whiteout
from tests.helpers import TarEntry, write_tar

_OPTIONS = ConvertOptions(convert_whiteouts=True)


def _layer(tmp_path: Path) -> Path:
    return write_tar(
        tmp_path / "layer.tar",
        [
            TarEntry("d", kind="dir", mode=0o755),
            TarEntry("d/f", data=b"content\n" * 100),
            TarEntry("d/.wh.gone"),
        ],
    )


def test_a_descriptor_gets_the_same_image_in_place(tmp_path: Path) -> None:
    tar = _layer(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    by_path = tar2ext4(tar, out / "by-path.img", _OPTIONS)
    fd = os.open(out / "by-fd.img", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        by_fd = tar2ext4(tar, fd, _OPTIONS)
        os.fstat(fd)  # the caller's descriptor stays open
    finally:
        os.close(fd)
    assert by_fd == by_path
    assert sorted(p.name for p in out.iterdir()) == ["by-fd.img", "by-path.img"]  # no temporaries
    assert (out / "by-fd.img").read_bytes() == (out / "by-path.img").read_bytes()
    with Ext4Reader.open(out / "by-fd.img") as reader:
        assert reader.read_file(reader.lookup(b"/d/f")) == b"content\n" * 100
        gone = reader.lookup(b"/d/gone")
        assert is_overlay_whiteout(gone.mode, gone.rdev)


def test_a_failed_conversion_into_a_descriptor_leaves_it_to_the_caller(tmp_path: Path) -> None:
    bad = write_tar(tmp_path / "bad.tar", [TarEntry("../x")])
    path = tmp_path / "staged"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with pytest.raises(InvalidArgument, match=r"\.\./x"):
            tar2ext4(bad, fd, _OPTIONS)
        os.fstat(fd)
    finally:
        os.close(fd)
    assert path.exists()  # neither removed nor renamed: the caller decides
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar", "staged"]


def test_a_failed_conversion_into_a_path_leaves_nothing(tmp_path: Path) -> None:
    bad = write_tar(tmp_path / "bad.tar", [TarEntry("../x")])
    with pytest.raises(InvalidArgument):
        tar2ext4(bad, tmp_path / "out.img", _OPTIONS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar"]
