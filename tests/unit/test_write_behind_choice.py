"""When the converter writes its image behind (hands pages to writeback as it goes).

An image nobody syncs that is known to end below the kernel's background writeback threshold is
written as any file of its size would be: the kernel would not write it back meanwhile, so
writing it behind only costs. Past the threshold (a wrong guess) it is written behind after
all; an image with no known size, or one synced next, keeps writing behind from half the
threshold. The kernel's advice calls are counted on their way to the kernel.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from lcow import ConvertOptions, tar2ext4
from lcow._util.outbuf import OutputWriter
from lcow.convert.input import FileSlice, open_tar_input
from tests.unit.advice_spy import record_advice

THRESHOLD = 4 << 20


@pytest.fixture
def advised(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every range handed to writeback, with a 4 MiB background threshold and 256 KiB
    windows (so a small test crosses them)."""
    return record_advice(monkeypatch, threshold=THRESHOLD, window=256 << 10)


def _write(path: Path, total: int, expected_size: int | None) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        out = OutputWriter(fd, write_behind=True, expected_size=expected_size)
        chunk = bytes(range(256)) * 256  # 64 KiB
        for offset in range(0, total, len(chunk)):
            out.write_at(offset, chunk)
        out.close()
        assert os.fstat(fd).st_size == total
    finally:
        os.close(fd)


def test_an_output_expected_below_the_threshold_is_not_written_behind(
    tmp_path: Path, advised: list[tuple[int, int]]
) -> None:
    _write(tmp_path / "image", 3 << 20, expected_size=3 << 20)
    assert advised == []


def test_an_output_of_unknown_size_is_written_behind_from_half_the_threshold(
    tmp_path: Path, advised: list[tuple[int, int]]
) -> None:
    _write(tmp_path / "image", 3 << 20, expected_size=None)
    assert advised
    assert min(offset for offset, _ in advised) >= THRESHOLD // 2 - (1 << 20)


def test_a_wrong_guess_is_written_behind_past_the_threshold(
    tmp_path: Path, advised: list[tuple[int, int]]
) -> None:
    _write(tmp_path / "image", 6 << 20, expected_size=1 << 20)
    assert advised
    assert min(offset for offset, _ in advised) >= THRESHOLD - (1 << 20)


def _tar(path: Path, size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("blob")
        info.size = size
        tf.addfile(info, io.BytesIO(os.urandom(size)))
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def test_tar2ext4_to_a_path_nobody_syncs_is_not_written_behind(
    tmp_path: Path, advised: list[tuple[int, int]]
) -> None:
    _tar(tmp_path / "layer.tar", 3 << 20)
    tar2ext4(tmp_path / "layer.tar", tmp_path / "layer.vhd", ConvertOptions(vhd_footer=True))
    assert advised == []


@pytest.mark.parametrize("how", ["synced path", "descriptor"])
def test_tar2ext4_to_an_image_synced_next_is_written_behind(
    tmp_path: Path, advised: list[tuple[int, int]], how: str
) -> None:
    _tar(tmp_path / "layer.tar", 3 << 20)
    if how == "synced path":
        tar2ext4(tmp_path / "layer.tar", tmp_path / "layer.vhd", ConvertOptions(fsync=True))
    else:
        fd = os.open(tmp_path / "layer.vhd", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            tar2ext4(tmp_path / "layer.tar", fd, ConvertOptions())
        finally:
            os.close(fd)
    assert advised


def test_the_tar_size_is_known_for_plain_files_and_slices_only(tmp_path: Path) -> None:
    data = _tar(tmp_path / "layer.tar", 100_000)
    (tmp_path / "layer.tar.gz").write_bytes(gzip.compress(data))
    with open_tar_input(tmp_path / "layer.tar") as source:
        assert source.known_size() == len(data)
    with open_tar_input(tmp_path / "layer.tar.gz") as source:
        assert source.known_size() is None
    fd = os.open(tmp_path / "layer.tar", os.O_RDONLY)
    try:
        with open_tar_input(FileSlice(fd, 0, len(data))) as source:
            assert source.known_size() == len(data)
    finally:
        os.close(fd)
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, data[:4096])
        os.close(write_end)
        with open_tar_input(read_end) as source:
            assert source.known_size() is None
    finally:
        os.close(read_end)
