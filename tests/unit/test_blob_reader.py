"""lcow.registry.client.BlobReader over a real httpx response whose body arrives in given
pieces: a read joins whole pieces as the connection delivered them up to what is asked (one
copy; a piece that does not fit is kept whole for the next read), never returns more, and the
length is enforced at the first piece too many or at an early end."""

from __future__ import annotations

import random
from collections.abc import Iterator

import httpx
import pytest

from lcow.registry.client import BlobReader
from lcow.registry.errors import BlobMismatch


class _Pieces(httpx.SyncByteStream):
    """A response body delivered in exactly these pieces (as a socket would hand them)."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = pieces

    def __iter__(self) -> Iterator[bytes]:
        yield from self._pieces


def _reader(pieces: list[bytes], size: int) -> BlobReader:
    request = httpx.Request("GET", "http://registry.test/v2/r/blobs/x")
    response = httpx.Response(200, stream=_Pieces(pieces), request=request)
    return BlobReader(response, digest="sha256:" + "0" * 64, size=size, where="r: blob x")


def test_reads_join_whole_pieces_up_to_n() -> None:
    pieces = [b"a" * 1000, b"b" * 3000, b"c" * 10, b"d" * 5]
    reader = _reader(pieces, 4015)
    assert reader.read(2000) == b"a" * 1000  # the next piece does not fit: kept whole
    assert reader.read(2000) == b"b" * 2000  # a piece alone longer than asked is split
    assert reader.read(1 << 20) == b"b" * 1000 + b"c" * 10 + b"d" * 5
    assert reader.read(1 << 20) == b""


def test_reads_return_at_most_n_bytes_in_order() -> None:
    rng = random.Random(7)
    body = rng.randbytes(300_000)
    cuts = sorted(rng.sample(range(1, len(body)), 60))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    reader = _reader(pieces, len(body))
    got = []
    while True:
        n = rng.choice([1, 7, 512, 4096, 65536, 1 << 20])
        data = reader.read(n)
        assert len(data) <= n
        if not data:
            break
        got.append(data)
    assert b"".join(got) == body
    assert reader.read_so_far == len(body)


def test_read_all() -> None:
    reader = _reader([b"xy", b"z"], 3)
    assert reader.read() == b"xyz"


def test_a_longer_body_fails_at_the_first_piece_too_many() -> None:
    reader = _reader([b"a" * 10, b"b" * 10, b"c" * 10], 15)
    assert reader.read(10) == b"a" * 10
    with pytest.raises(BlobMismatch, match="longer than its descriptor's 15 bytes"):
        reader.read(10)


def test_a_shorter_body_fails_at_its_end() -> None:
    reader = _reader([b"a" * 10], 11)
    assert reader.read(10) == b"a" * 10
    with pytest.raises(BlobMismatch, match="ended after 10 of its 11 bytes"):
        reader.read(100)
