"""lcow._util.decompress's zstd frame tracking, fed in pieces of every size: a stream ending at
a frame boundary is complete (its bytes come out whole), one cut anywhere else is refused.
The oracle is the construction: the frames' ends are known, and the zstandard library made
them (several blocks each, raw, RLE and compressed; with and without a checksum; a skippable
frame between)."""

from __future__ import annotations

import random

import pytest
import zstandard

from lcow._util.decompress import decompress
from lcow.errors import InvalidArgument


def _frames() -> tuple[bytes, list[int], list[bytes]]:
    """The stream, the offsets where a frame ends (0 included), and what each frame holds."""
    rng = random.Random(5)
    words = [rng.randbytes(rng.randint(3, 12)) for _ in range(400)]
    texts = [
        b"".join(rng.choice(words) for _ in range(60_000)),  # compressed blocks
        rng.randbytes(300_000) + b"\0" * 400_000,  # raw blocks, then RLE blocks
    ]
    parts = [
        zstandard.ZstdCompressor(level=3, write_checksum=True).compress(texts[0]),
        b"\x50\x2a\x4d\x18" + (7).to_bytes(4, "little") + b"skipped",
        zstandard.ZstdCompressor(level=1, write_checksum=False).compress(texts[1]),
    ]
    ends = [0]
    for part in parts:
        ends.append(ends[-1] + len(part))
    return b"".join(parts), ends, texts


STREAM, ENDS, TEXTS = _frames()


def _read_in_pieces(data: bytes, rng: random.Random, most: int):  # type: ignore[no-untyped-def]
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        take = min(n, rng.randint(1, most), len(data) - pos)
        piece = data[pos : pos + take]
        pos += take
        return piece

    return read


@pytest.mark.parametrize("most", [1, 2, 3, 5, 4096, 70_000, 1 << 20])
def test_the_whole_stream_in_pieces(most: int) -> None:
    rng = random.Random(most)
    out = b"".join(decompress("zstd", _read_in_pieces(STREAM, rng, most), name="s"))
    assert out == TEXTS[0] + TEXTS[1]


@pytest.mark.parametrize("most", [3, 4096, 1 << 20])
def test_cuts_are_refused_except_at_frame_ends(most: int) -> None:
    rng = random.Random(most)
    cuts = set(ENDS) | {1, 3, 4, 5, 8, ENDS[1] - 4, ENDS[1] - 1, ENDS[1] + 1, ENDS[3] - 1}
    cuts |= {rng.randrange(len(STREAM)) for _ in range(40)}
    whole = {ENDS[0]: b"", ENDS[1]: TEXTS[0], ENDS[2]: TEXTS[0], ENDS[3]: TEXTS[0] + TEXTS[1]}
    for cut in sorted(cuts):
        read = _read_in_pieces(STREAM[:cut], rng, most)
        if cut in whole:
            assert b"".join(decompress("zstd", read, name="s")) == whole[cut], cut
        else:
            with pytest.raises(InvalidArgument, match="zstd stream"):
                b"".join(decompress("zstd", read, name="s"))
