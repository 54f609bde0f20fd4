"""lcow._util.hashwriter: pieces written in order and hashed on a helper thread, their writeback
started as they go where asked (lcow._util.writeback); a failure on either side ends both, the
writer's reaching the producer."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from lcow._util.hashwriter import HashingWriter
from lcow._util.writeback import start_writeback


def test_pieces_are_written_in_order_and_hashed(tmp_path: Path) -> None:
    pieces = [bytes([i]) * (i * 1000 + 1) for i in range(50)]
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with HashingWriter(fd, "out") as writer:
            for piece in pieces:
                writer.write(piece)
    finally:
        os.close(fd)
    data = b"".join(pieces)
    assert (tmp_path / "out").read_bytes() == data
    assert writer.digest == f"sha256:{hashlib.sha256(data).hexdigest()}"
    assert writer.size == len(data)


def test_a_write_error_reaches_the_producer(tmp_path: Path) -> None:
    (tmp_path / "ro").write_bytes(b"")
    fd = os.open(tmp_path / "ro", os.O_RDONLY)  # os.write fails: EBADF
    try:
        with pytest.raises(OSError), HashingWriter(fd, "ro") as writer:
            for _ in range(100):  # more than the queue holds: must not block on a dead writer
                writer.write(b"x" * 4096)
    finally:
        os.close(fd)


def test_a_producer_error_ends_the_writer(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    before = threading.active_count()
    try:
        with pytest.raises(ValueError, match="producer"), HashingWriter(fd, "out") as writer:
            writer.write(b"piece")
            raise ValueError("producer failed")
    finally:
        os.close(fd)
    assert threading.active_count() == before


def test_write_behind_writes_the_same_bytes(tmp_path: Path) -> None:
    """Writeback started every 8 KiB while the pieces stream: the same file and digest."""
    pieces = [bytes([i]) * (i * 997 + 1) for i in range(60)]
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with HashingWriter(fd, "out", write_behind=8192) as writer:
            for piece in pieces:
                writer.write(piece)
        os.fsync(fd)
    finally:
        os.close(fd)
    data = b"".join(pieces)
    assert (tmp_path / "out").read_bytes() == data
    assert writer.digest == f"sha256:{hashlib.sha256(data).hexdigest()}"


def test_start_writeback_is_a_hint_a_pipe_refuses(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x" * 100_000)
        assert start_writeback(fd)
    finally:
        os.close(fd)
    read_end, write_end = os.pipe()
    try:
        assert not start_writeback(write_end)  # ESPIPE: not a file with writeback
    finally:
        os.close(read_end)
        os.close(write_end)


def test_write_behind_into_a_pipe_still_writes_everything() -> None:
    """Where the kernel refuses the hint, the writer goes on without it."""
    data = bytes(range(256)) * 2000
    read_end, write_end = os.pipe()
    received = bytearray()

    def drain() -> None:
        while chunk := os.read(read_end, 65536):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        with HashingWriter(write_end, "pipe", write_behind=4096) as writer:
            for i in range(0, len(data), 10_000):
                writer.write(data[i : i + 10_000])
    finally:
        os.close(write_end)
        reader.join()
        os.close(read_end)
    assert bytes(received) == data
    assert writer.digest == f"sha256:{hashlib.sha256(data).hexdigest()}"
