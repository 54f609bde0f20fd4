"""lcow._util.hashwriter: pieces written in order and hashed on a helper thread; a failure on
either side ends both, the writer's reaching the producer."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from lcow._util.hashwriter import HashingWriter


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
