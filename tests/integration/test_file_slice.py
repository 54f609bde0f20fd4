"""A tar stored inside another file is converted in place and never read past its end."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from lcow import ConvertOptions, tar2ext4
from lcow.convert.input import FileSlice
from lcow.errors import InvalidArgument
from lcow.formats.ext4.reader import Ext4Reader


def _tar(files: dict[str, bytes], *, end_marker: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    if not end_marker:
        data = data.rstrip(b"\x00")
        data += bytes(-len(data) % 512)
    return data


def _names(image: Path) -> list[bytes]:
    with Ext4Reader.open(image) as reader:
        return sorted(e.path for e in reader.walk(b"/") if e.path not in (b"/", b"/lost+found"))


def test_slice_is_converted_in_place(tmp_path: Path) -> None:
    inner = _tar({"a": b"x" * 300_000, "b": b"y" * 10})
    outer = tmp_path / "outer.bin"
    outer.write_bytes(b"P" * 4096 + inner + b"Q" * 4096)
    fd = os.open(outer, os.O_RDONLY)
    try:
        result = tar2ext4(FileSlice(fd, 4096, len(inner)), tmp_path / "out.img", ConvertOptions())
    finally:
        os.close(fd)
    assert result.entries == 2
    assert _names(tmp_path / "out.img") == [b"/a", b"/b"]


def test_slice_without_end_marker_fails_and_stops_at_its_end(tmp_path: Path) -> None:
    """A slice without the end marker is a cut tar: it fails, naming the slice, and what
    follows it (another member of the outer archive) is never read as tar."""
    inner = _tar({"a": b"x" * 1000}, end_marker=False)
    trailing = _tar({"evil": b"z" * 10})
    outer = tmp_path / "outer.bin"
    outer.write_bytes(inner + trailing)
    fd = os.open(outer, os.O_RDONLY)
    try:
        with pytest.raises(InvalidArgument, match=r"^blob: truncated archive: no end-of-archive"):
            tar2ext4(FileSlice(fd, 0, len(inner), "blob"), tmp_path / "out.img")
    finally:
        os.close(fd)
    assert not (tmp_path / "out.img").exists()


def test_member_running_past_the_slice_is_truncation(tmp_path: Path) -> None:
    inner = _tar({"big": b"x" * 600_000})
    outer = tmp_path / "outer.bin"
    outer.write_bytes(inner)
    fd = os.open(outer, os.O_RDONLY)
    try:
        with pytest.raises(InvalidArgument, match="big: unexpected end of archive"):
            tar2ext4(FileSlice(fd, 0, 300_000), tmp_path / "out.img")
    finally:
        os.close(fd)
    assert not (tmp_path / "out.img").exists()
