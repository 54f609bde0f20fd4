"""Piece digests hashed while an image is written give the id a read-back would.

The oracle is :func:`lcow.formats.vhd.identity.unique_id_of` over the file's real bytes: any
mix of in-order writes, gaps, overwrites, out-of-order writes, bytes written around the
observer and truncations must come out the same. A conversion with a VHD footer must not read
its image back (beyond the first piece, which the superblock is written into last).
"""

from __future__ import annotations

import gzip
import io
import os
import random
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lcow.convert.options import ConvertOptions
from lcow.convert.tar2ext4 import tar2ext4
from lcow.formats.vhd import identity
from lcow.formats.vhd.footer import FOOTER_SIZE, read_footer
from lcow.formats.vhd.identity import PIECE_SIZE, PieceDigests, unique_id, unique_id_of

_MIB = 1 << 20

# (kind, offset, length): kind 0 is seen by the digests, 1 is written around them (unseen).
_writes = st.lists(
    st.tuples(
        st.sampled_from([0, 0, 0, 1]), st.integers(0, 5 * _MIB), st.integers(1, 2 * _MIB + 7)
    ),
    max_size=20,
)


@settings(max_examples=60, deadline=None)
@given(writes=_writes, cut=st.integers(0, 8 * _MIB), sequential=st.booleans())
def test_digests_match_the_file(
    tmp_path_factory: pytest.TempPathFactory,
    writes: list[tuple[int, int, int]],
    cut: int,
    sequential: bool,
) -> None:
    path = tmp_path_factory.mktemp("digests") / "image"
    rng = random.Random(len(writes))
    digests = PieceDigests()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        cursor = 0
        for kind, where, length in writes:
            offset = cursor + where % (96 << 10) if sequential else where
            data = rng.randbytes(length)
            os.pwrite(fd, data, offset)
            if kind == 0:
                digests.seen(offset, memoryview(data))
            else:
                digests.unseen(offset, length)
            cursor = max(cursor, offset + length)
        size = min(cut, os.fstat(fd).st_size) // 512 * 512
        os.ftruncate(fd, size)
        with open(path, "rb") as f:
            content = f.read()
        assert digests.unique_id(fd, size) == unique_id_of(content) == unique_id(fd, size)
    finally:
        os.close(fd)


def test_never_written_pieces_hash_as_zeros(tmp_path: Path) -> None:
    path = tmp_path / "image"
    digests = PieceDigests()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        data = b"\x5a" * 1000
        os.pwrite(fd, data, 3 * PIECE_SIZE + 10)
        digests.seen(3 * PIECE_SIZE + 10, memoryview(data))
        size = 5 * PIECE_SIZE + 4096  # extended past the last write: zeros
        os.ftruncate(fd, size)
        assert digests.unique_id(fd, size) == unique_id_of(path.read_bytes())
    finally:
        os.close(fd)


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _assert_id_from_bytes(image: Path) -> None:
    """The VHD footer's unique id is the one the image's disk bytes give."""
    disk = image.stat().st_size - FOOTER_SIZE
    fd = os.open(image, os.O_RDONLY)
    try:
        footer = read_footer(fd)
        assert footer is not None
        assert footer.unique_id == unique_id_of(os.pread(fd, disk, 0))
    finally:
        os.close(fd)


def test_conversion_does_not_read_its_image_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(17)
    files = {f"dir/small{i}": rng.randbytes(rng.randrange(1, 9000)) for i in range(200)}
    files["dir/big"] = rng.randbytes(6 * _MIB + 123)  # copied kernel-side of the read buffer
    files["dir/after"] = rng.randbytes(300_000)
    (tmp_path / "layer.tar").write_bytes(_tar(files))
    read_back: list[int] = []
    real = identity._pread_exact

    def counting(fd: int, view: memoryview, pos: int, size: int) -> None:
        read_back.append(len(view))
        real(fd, view, pos, size)

    monkeypatch.setattr(identity, "_pread_exact", counting)
    out = tmp_path / "layer.vhd"
    tar2ext4(tmp_path / "layer.tar", out, ConvertOptions(vhd_footer=True))
    assert sum(read_back) <= PIECE_SIZE, f"read back {sum(read_back)} bytes of the image"
    # The id is still the one the image's bytes give.
    _assert_id_from_bytes(out)


def test_spliced_bodies_are_read_back(tmp_path: Path) -> None:
    """A compressed input arrives through a pipe, and big bodies are spliced into the image
    without passing through memory: their pieces are read back, and the id still holds."""
    rng = random.Random(23)
    files = {"big": rng.randbytes(3 * _MIB + 5), "small": rng.randbytes(5000)}
    (tmp_path / "layer.tar.gz").write_bytes(gzip.compress(_tar(files), compresslevel=1))
    out = tmp_path / "layer.vhd"
    tar2ext4(tmp_path / "layer.tar.gz", out, ConvertOptions(vhd_footer=True))
    _assert_id_from_bytes(out)
