"""The output writer: buffered positional writes, queued copies and write-behind.

Whatever the mix of small writes, gaps, large writes and copies from another file, and with
write-behind advising the kernel as it goes, the file must end up byte for byte as a plain
model of the same writes says; and an observer hashing the bytes as they go by (the VHD
identity's piece digests) must arrive at the id of what is in the file.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lcow._util import outbuf
from lcow._util.outbuf import OutputWriter
from lcow.formats.vhd.identity import PieceDigests, unique_id_of
from tests.unit.advice_spy import record_advice

SOURCE_SIZE = 3 << 20


class ShortSource(Exception):
    pass


@pytest.fixture
def source(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    data = random.Random(7).randbytes(SOURCE_SIZE)
    path = tmp_path / "source"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    yield fd, data
    os.close(fd)


# (kind, offset or source offset, length): kind 0 writes bytes, 1 copies from the source.
_ops = st.lists(
    st.tuples(st.integers(0, 1), st.integers(0, 6 << 20), st.integers(1, 1 << 20)),
    min_size=1,
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(ops=_ops, write_behind=st.booleans())
def test_file_matches_the_writes(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[int, int, int]], write_behind: bool
) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        _check_writes(tmp_path_factory.mktemp("out"), monkeypatch, ops, write_behind)


def _check_writes(
    work: Path, monkeypatch: pytest.MonkeyPatch, ops: list[tuple[int, int, int]], write_behind: bool
) -> None:
    # Small windows and an early start, so write-behind advises many times in a short test;
    # small chunks and an early read-ahead, so copies take both ways and cycle its buffers.
    advised = record_advice(monkeypatch, threshold=512 << 10, window=256 << 10)
    monkeypatch.setattr(outbuf, "_COPY_CHUNK", 64 << 10)
    monkeypatch.setattr(outbuf, "_READ_AHEAD_FROM", 256 << 10)
    data = random.Random(len(ops)).randbytes(SOURCE_SIZE)
    (work / "source").write_bytes(data)
    src = os.open(work / "source", os.O_RDONLY)
    fd = os.open(work / "image", os.O_RDWR | os.O_CREAT, 0o644)
    model = bytearray()
    try:
        digests = PieceDigests()
        out = OutputWriter(fd, write_behind=write_behind, observer=digests)
        cursor = 0  # like the image writer: every range is written once, ascending
        for kind, where, length in ops:
            offset = cursor + where % (64 << 10)  # sometimes a small gap, filled with zeros
            if kind == 0:
                chunk = bytes([len(model) % 251]) * length
                out.write_at(offset, chunk)
            else:
                start = where % (SOURCE_SIZE - length)
                chunk = data[start : start + length]
                out.copy_range(src, start, offset, length, ShortSource)
            model[len(model) : offset] = bytes(max(0, offset - len(model)))
            model[offset : offset + length] = chunk
            cursor = offset + length
        out.close()
        with open(fd, "rb", closefd=False) as f:
            assert f.read() == bytes(model)
        assert digests.unique_id(fd, len(model)) == unique_id_of(model)
    finally:
        os.close(fd)
        os.close(src)
    total = sum(length for _, _, length in ops)
    if write_behind and total > 2 << 20:
        assert advised, "write-behind never advised the kernel"
    if not write_behind:
        assert not advised


def test_a_short_copy_source_fails_at_flush(tmp_path: Path, source: tuple[int, bytes]) -> None:
    src, _ = source
    fd = os.open(tmp_path / "image", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        out = OutputWriter(fd)
        out.copy_range(src, SOURCE_SIZE - 100, 0, 4096, ShortSource)
        with pytest.raises(ShortSource):
            out.close()
    finally:
        os.close(fd)


def test_a_short_source_ends_a_read_ahead_copy(tmp_path: Path, source: tuple[int, bytes]) -> None:
    """A big body is read on a second thread: a source that ends early still fails at
    flush, after the bytes before the end were written, and leaves no thread behind."""
    src, data = source
    length = outbuf._READ_AHEAD_FROM + 4096
    start = SOURCE_SIZE - length + 4096  # the last 4 KiB are missing
    fd = os.open(tmp_path / "image", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        out = OutputWriter(fd)
        out.copy_range(src, start, 0, length, ShortSource)
        with pytest.raises(ShortSource):
            out.close()
        assert os.pread(fd, length, 0) == data[start:]
    finally:
        os.close(fd)
    assert not [t for t in threading.enumerate() if t.name.startswith(("lcow-read", "lcow-write"))]


def test_write_behind_advises_inside_a_big_copy(
    tmp_path: Path, source: tuple[int, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body copied as one job is handed to writeback window by window as it is written,
    not as one window of the whole body at its end (which closing the image then waited for)."""
    monkeypatch.setattr(outbuf, "_WRITE_BEHIND", 256 << 10)
    monkeypatch.setattr(outbuf, "background_writeback_threshold", lambda: 512 << 10)
    advised: list[tuple[int, int]] = []
    monkeypatch.setattr(outbuf, "_advise", lambda fd, ranges: advised.extend(ranges))
    src, data = source
    fd = os.open(tmp_path / "image", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        out = OutputWriter(fd, write_behind=True)
        out.copy_range(src, 0, 0, SOURCE_SIZE, ShortSource)
        out.close()
        assert os.pread(fd, SOURCE_SIZE, 0) == data
    finally:
        os.close(fd)
    assert len(advised) >= 2, advised
    # The first window is advised as soon as it is full; later ones may merge while the
    # settler thread is still busy (by design), so only the first one's size is certain.
    first_offset, first_length = advised[0]
    assert first_offset + first_length <= SOURCE_SIZE // 2, advised
