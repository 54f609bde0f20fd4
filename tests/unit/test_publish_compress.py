"""lcow.images.publish's zstd blobs: one frame of the file, the same bytes whatever the thread
count (libzstd's multi-threaded mode), digests that hashlib agrees with."""

from __future__ import annotations

import hashlib
import random
import tempfile
from pathlib import Path

import pytest
import zstandard

from lcow.images import publish


def _sample(path: Path) -> bytes:
    rng = random.Random(16)
    # Compressible text and incompressible noise, over several zstd jobs' worth of input.
    parts = [rng.randbytes(1 << 16) if i % 3 == 0 else b"lcow layer %d\n" % i * 5000
             for i in range(120)]  # fmt: skip
    data = b"".join(parts)
    path.write_bytes(data)
    return data


def _compress(path: Path) -> tuple[tuple[str, int, str, int], bytes]:
    with tempfile.TemporaryFile() as out:
        facts = publish._compress(path, out)
        out.seek(0)
        return facts, out.read()


def test_compress_is_one_checked_frame_of_the_file(tmp_path: Path) -> None:
    data = _sample(tmp_path / "layer.vhd")
    (vhd_digest, vhd_size, digest, size), blob = _compress(tmp_path / "layer.vhd")
    assert (vhd_digest, vhd_size) == (f"sha256:{hashlib.sha256(data).hexdigest()}", len(data))
    assert (digest, size) == (f"sha256:{hashlib.sha256(blob).hexdigest()}", len(blob))
    params = zstandard.get_frame_parameters(blob)
    assert params.content_size == len(data) and params.has_checksum
    assert zstandard.ZstdDecompressor().decompress(blob) == data


@pytest.mark.parametrize("threads", [1, 4])
def test_compress_does_not_depend_on_the_thread_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    _sample(tmp_path / "layer.vhd")
    _, reference = _compress(tmp_path / "layer.vhd")
    monkeypatch.setattr(publish, "ZSTD_THREADS", threads)
    assert _compress(tmp_path / "layer.vhd")[1] == reference
