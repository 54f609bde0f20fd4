"""Streaming decompression that accepts only complete streams (gzip, zstd, bzip2, xz).

A compressed layer cut short must never become a shorter layer. zlib, bz2 and lzma say when a
member is complete (after its trailer's CRC and length, or the xz index and footer, are
verified). The zstandard bindings' streaming reader does not, and their ``decompressobj``, which
has ``eof``, puts no bound on the output of one call (a bomb would expand in memory); so the
reader decompresses (libzstd verifies each frame's checksum) while the frame structure is
followed here as the bytes go by (block headers only: a few per 128 KiB, no copy of the data),
and the input must end at a frame boundary, the checksum of a frame that declares one
included. Concatenated members and frames are one stream, as gzip(1), zstd(1) and Go's readers
take them; a cut exactly between two of them cannot be seen here, which is why the tar reader
also demands the end-of-archive marker.

Output comes in chunks of at most ``chunk`` bytes, so a highly compressible bomb never expands
in memory at once.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO, Protocol, cast

from lcow.errors import InvalidArgument

__all__ = [
    "GZIP_MAGIC",
    "ZSTD_MAGIC",
    "DecompressedReader",
    "decompress",
    "detect",
]

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_BZIP2_BLOCK = b"\x31\x41\x59\x26\x53\x59"  # pi: the first block's magic, after "BZh1".."BZh9"
_CHUNK = 1 << 20

Read = Callable[[int], bytes]


def detect(head: bytes, *, kinds: tuple[str, ...] = ("gzip", "zstd")) -> str | None:
    """The compression ``head`` (the first 10 bytes or fewer) starts with, among ``kinds``
    (``gzip``, ``zstd``, ``bzip2``, ``xz``); ``None`` for anything else (a plain tar)."""
    if "gzip" in kinds and head.startswith(GZIP_MAGIC):
        return "gzip"
    if "zstd" in kinds and head.startswith(ZSTD_MAGIC):
        return "zstd"
    if "xz" in kinds and head.startswith(_XZ_MAGIC):
        return "xz"
    # "BZh" alone could begin a tar entry's name: the block magic must follow.
    if "bzip2" in kinds and head[:3] == b"BZh" and head[3:4].isdigit():
        return "bzip2" if head[4:10] == _BZIP2_BLOCK else None
    return None


def decompress(
    kind: str,
    read: Read,
    *,
    name: str,
    chunk: int = _CHUNK,
    error: type[InvalidArgument] = InvalidArgument,
) -> Iterator[bytes]:
    """Yield the decompressed bytes of the complete ``kind`` stream that ``read`` returns.

    Args:
        kind: ``gzip``, ``zstd``, ``bzip2`` or ``xz`` (see :func:`detect`).
        read: returns up to ``n`` more compressed bytes, ``b""`` at the end.
        name: the input, for messages.
        chunk: most bytes read or yielded at a time.
        error: the category raised (an image importer raises its own).

    Raises:
        InvalidArgument: (or ``error``) the stream is corrupt, or ends inside a member or frame.
    """
    if kind == "zstd":
        return _zstd(read, name, chunk, error)
    new = {"gzip": _Gzip, "bzip2": _bzip2, "xz": _xz}.get(kind)
    if new is None:
        raise ValueError(f"unknown compression {kind!r}")
    return _members(
        kind, cast("Callable[[], _Member]", new), read, name=name, chunk=chunk, error=error
    )


class _Member(Protocol):
    """One member's decompressor, as :mod:`bz2` and :mod:`lzma` shape them."""

    eof: bool
    needs_input: bool
    unused_data: bytes

    def decompress(self, data: bytes, max_length: int = -1) -> bytes: ...


class _Gzip:
    """zlib's gzip decompressor in the shape of :class:`bz2.BZ2Decompressor`."""

    def __init__(self) -> None:
        self._dec = zlib.decompressobj(zlib.MAX_WBITS | 16)
        self.needs_input = True

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        dec = self._dec
        out = dec.decompress(data or dec.unconsumed_tail, max_length)
        # zlib may hold output back even when all input was taken: ask again if it filled up.
        self.needs_input = not dec.unconsumed_tail and len(out) < max_length
        return out

    @property
    def eof(self) -> bool:  # only once the trailer's CRC-32 and length matched
        return self._dec.eof

    @property
    def unused_data(self) -> bytes:
        return self._dec.unused_data


# bz2 and lzma are imported when a stream needs them: most inputs are plain, gzip or zstd,
# and every `lcow tar2ext4` start would pay for both (issue 17).
def _bzip2() -> _Member:
    import bz2

    return cast(_Member, bz2.BZ2Decompressor())


def _xz() -> _Member:
    import lzma

    return cast(_Member, lzma.LZMADecompressor(lzma.FORMAT_XZ))


def _corrupt(kind: str) -> tuple[type[Exception], ...]:
    """What a ``kind`` member decompressor raises for corrupt data."""
    if kind == "xz":
        import lzma

        return (zlib.error, OSError, EOFError, lzma.LZMAError)
    return (zlib.error, OSError, EOFError)


def _members(  # noqa: PLR0913 - decompress()'s parameters plus the member decompressor's factory
    kind: str,
    new: Callable[[], _Member],
    read: Read,
    *,
    name: str,
    chunk: int,
    error: type[InvalidArgument],
) -> Iterator[bytes]:
    dec: _Member | None = None  # the member being decompressed; None between members
    data = b""
    consumed = 0
    while True:
        if not data and (dec is None or dec.needs_input):
            data = read(chunk)
            if not data:
                break
            consumed += len(data)
        if dec is None:
            dec = new()
        try:
            out = dec.decompress(data, chunk)
        except _corrupt(kind) as exc:
            raise error(f"{name}: corrupt {kind} stream: {exc}", subject=name) from exc
        data = b""
        if out:
            yield out
        if dec.eof:  # complete and verified; another member may follow
            data = dec.unused_data
            dec = None
    if dec is not None:
        raise error(
            f"{name}: truncated {kind} stream: the input ends inside a member "
            f"(after {consumed} bytes)",
            subject=name,
        )


# -- zstd ---------------------------------------------------------------------------------------

_MAGIC, _DESCRIPTOR, _HEADER, _BLOCK, _CONTENT, _CHECKSUM, _SKIP_SIZE, _SKIP = range(8)
_WHERE = {
    _DESCRIPTOR: "a frame header",
    _HEADER: "a frame header",
    _BLOCK: "a block header",
    _CONTENT: "a block",
    _CHECKSUM: "the frame's checksum",
    _SKIP_SIZE: "a skippable frame",
    _SKIP: "a skippable frame",
}


class _ZstdFrames:
    """Follows the frame structure of RFC 8878 over the compressed bytes, only far enough to
    know where frames end: magic, header sizes, block headers, checksum, skippable frames."""

    def __init__(self, name: str, error: type[InvalidArgument]) -> None:
        self._name = name
        self._error = error
        self.state = _MAGIC
        self._need = 4  # bytes until the current item is complete
        self._got = bytearray()  # the current item's bytes, for items that are read
        self._checksum = False
        self._last = False
        self.offset = 0  # compressed bytes seen

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            if self.state == _BLOCK and self._need == 3 and end - pos >= 3:
                pos = self._hop(view, pos, end)  # the common case, block after block
                continue
            take = min(self._need, end - pos)
            if self.state not in (_CONTENT, _SKIP):
                self._got += view[pos : pos + take]
            pos += take
            self._need -= take
            if not self._need:
                self._advance(self.offset + pos)
        self.offset += end

    def _hop(self, view: memoryview, pos: int, end: int) -> int:
        """At a block header wholly in ``view[pos:end]``: what the item-by-item path does for
        the header and the content that follows, without copying the header (a blob has a few
        thousand blocks per 100 MB: this path is the tracker's cost). Returns the new position."""
        pos += 3
        self._block(int.from_bytes(view[pos - 3 : pos], "little"), self.offset + pos)
        take = min(self._need, end - pos)
        pos += take
        self._need -= take
        if not self._need:
            if self._last:
                self._advance(self.offset + pos)
            else:
                self.state, self._need = _BLOCK, 3  # as _advance does after a block's content
        return pos

    def _block(self, word: int, at: int) -> None:
        """A block header (``word``, ending at byte ``at``): the block's content is next."""
        self._last = bool(word & 1)
        kind, size = word >> 1 & 3, word >> 3
        if kind == 3:
            raise self._error(
                f"{self._name}: corrupt zstd stream: reserved block type at byte {at - 3}",
                subject=self._name,
            )
        self.state, self._need = _CONTENT, 1 if kind == 1 else size

    def _advance(self, at: int) -> None:  # noqa: PLR0912 - one branch per RFC 8878 frame item: a state machine
        """The current item is complete: move to the next (items of size 0 are passed)."""
        while not self._need:
            got = bytes(self._got)
            self._got.clear()
            state = self.state
            if state == _MAGIC:
                if got == ZSTD_MAGIC:
                    self.state, self._need = _DESCRIPTOR, 1
                elif got[0] & 0xF0 == 0x50 and got[1:] == b"\x2a\x4d\x18":
                    self.state, self._need = _SKIP_SIZE, 4
                else:
                    raise self._error(
                        f"{self._name}: corrupt zstd stream: no frame at byte {at - 4}",
                        subject=self._name,
                    )
            elif state == _DESCRIPTOR:
                flags = got[0]
                single = flags >> 5 & 1
                fcs = (single, 2, 4, 8)[flags >> 6]
                self._checksum = bool(flags & 4)
                self.state = _HEADER
                self._need = (1 - single) + (0, 1, 2, 4)[flags & 3] + fcs
            elif state in (_HEADER, _CONTENT):
                if state == _CONTENT and self._last:
                    self.state, self._need = _CHECKSUM, 4 if self._checksum else 0
                else:
                    self.state, self._need = _BLOCK, 3
            elif state == _BLOCK:
                self._block(int.from_bytes(got, "little"), at)
            elif state == _CHECKSUM:
                self.state, self._need = _MAGIC, 4
            elif state == _SKIP_SIZE:
                self.state, self._need = _SKIP, int.from_bytes(got, "little")
            else:  # _SKIP
                self.state, self._need = _MAGIC, 4

    def check_end(self) -> None:
        """At the end of the input: raise unless it ends between frames."""
        if self.state == _MAGIC and self._need == 4:
            return
        raise self._error(
            f"{self._name}: truncated zstd stream: the input ends inside "
            f"{_WHERE.get(self.state, 'a frame')} (after {self.offset} bytes)",
            subject=self._name,
        )


class _Tracked:
    """The compressed input as the zstd reader pulls it, every byte shown to the tracker."""

    def __init__(self, read: Read, frames: _ZstdFrames) -> None:
        self._read = read
        self._frames = frames

    def read(self, n: int = -1) -> bytes:
        data = self._read(n if n >= 0 else _CHUNK)
        if data:
            self._frames.feed(data)
        return data


def _zstd(read: Read, name: str, chunk: int, error: type[InvalidArgument]) -> Iterator[bytes]:
    import zstandard

    frames = _ZstdFrames(name, error)
    reader = zstandard.ZstdDecompressor().stream_reader(
        cast("BinaryIO", _Tracked(read, frames)),
        read_size=chunk,
        read_across_frames=True,
        closefd=False,
    )
    with reader:
        try:
            while out := reader.read(chunk):
                yield out
        except zstandard.ZstdError as exc:
            raise error(f"{name}: corrupt zstd stream: {exc}", subject=name) from exc
    frames.check_end()


class DecompressedReader(io.RawIOBase):
    """A readable binary stream over :func:`decompress` (for readers that pull, as
    :mod:`tarfile` does); errors surface from :meth:`read`."""

    def __init__(
        self,
        kind: str,
        read: Read,
        *,
        name: str,
        error: type[InvalidArgument] = InvalidArgument,
    ) -> None:
        super().__init__()
        self._chunks = decompress(kind, read, name=name, error=error)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        while not self._pending:
            data = next(self._chunks, None)
            if data is None:
                return 0
            self._pending = memoryview(data)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n
