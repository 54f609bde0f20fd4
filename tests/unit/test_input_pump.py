"""lcow.convert.input's pump, shared by the converter's input and the image importer's feed."""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import pytest
import zstandard

from lcow.convert.input import Pump, sniff, tar_work
from lcow.errors import InvalidArgument
from lcow.images.blobstream import LayerFeed
from lcow.images.errors import ImageError

_TAR = bytes(range(256)) * 4096  # stands for a tar: the work does not parse it

_FORMS = {
    "plain": (_TAR, None),
    "gzip": (gzip.compress(_TAR), "gzip"),
    "zstd": (zstandard.ZstdCompressor(write_checksum=True).compress(_TAR), "zstd"),
}


def _reader(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


@pytest.mark.parametrize("form", list(_FORMS))
@pytest.mark.parametrize("sniffed", [False, True])
def test_tar_work_copies_or_decompresses_and_shows_the_tar(form: str, sniffed: bool) -> None:
    stored, kind = _FORMS[form]
    src = _reader(stored)
    head = sniff(src.read) if sniffed else None
    kinds: list[str | None] = []
    seen = bytearray()

    def found(k: str | None) -> object:
        kinds.append(k)
        return seen.extend

    out = bytearray()
    tar_work("blob", head=head, on_kind=found)(src.read, out.extend)  # type: ignore[arg-type]
    assert bytes(out) == _TAR and bytes(seen) == _TAR
    assert kinds == [kind]


@pytest.mark.parametrize("form", ["gzip", "zstd"])
def test_a_cut_stream_fails_in_the_category_asked_for(form: str) -> None:
    stored, _ = _FORMS[form]
    src = _reader(stored[: len(stored) // 2])
    with pytest.raises(ImageError, match=rf"^blob: truncated {form} stream"):
        tar_work("blob", error=ImageError)(src.read, bytearray().extend)


def test_the_pump_keeps_the_work_error_for_the_reader() -> None:
    stored, _ = _FORMS["gzip"]
    src = _reader(stored[:-8])  # the trailer is missing
    pump = Pump(tar_work("blob"), src.read, "blob")
    try:
        pump.drain()  # the reader sees only an early end ...
    finally:
        pump.close()
    assert isinstance(pump.error, InvalidArgument)  # ... and the cause is kept
    assert "truncated gzip stream" in str(pump.error)
    pump.close()  # closing again does nothing


def test_a_failed_feed_never_closes_a_descriptor_it_no_longer_owns(tmp_path: Path) -> None:
    """The importer calls ``abort`` after a ``finish`` that raised: the feed's pipe was closed
    by ``finish``, and its number may belong to another file by then (it closed that file)."""
    stored, _ = _FORMS["gzip"]
    feed = LayerFeed(io.BytesIO(stored[:-8]), name="blob")
    with pytest.raises(ImageError, match="truncated gzip stream"):
        feed.finish()
    other = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT, 0o600)  # takes the lowest fd
    try:
        assert feed.abort() is not None
        os.fstat(other)  # still open
    finally:
        os.close(other)
