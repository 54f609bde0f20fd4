"""A fixed VHD's unique id, derived from its disk data (SPEC §7.1 note: deterministic images).

The footer's 16-byte unique id is a *piece digest* of the disk data (every byte before the
footer, the dm-verity area included):

    id = XXH3-128( XXH3-128(piece 0) || XXH3-128(piece 1) || ... )

where the pieces are the consecutive 1 MiB slices of the data (the last one may be shorter) and
each XXH3-128 digest is its 16 canonical (big-endian) bytes. Equal data gives equal ids on every
host and run; different data gives different ids but for an accidental 128-bit collision.

Why XXH3 and not SHA-256: the id is a name, not a proof. Nothing trusts it (layers are verified
by their diff IDs and dm-verity, never by the footer), and a SHA-256 pass over every image
doubled tar2ext4's CPU time on big layers, where XXH3 (the kept ``xxhash`` library) costs a few
hundredths of a second per GiB. Hashing pieces rather than the whole stream lets a piece that
lies wholly in a hole of a sparse image use the known digest of zeros without being read, and
lets a writer hash the pieces as it writes them (:class:`PieceDigests`), in whatever order they
come, so that the image is never read back.

To check a file by hand (``layer.vhd``, footer 512 bytes; ``pip install xxhash``)::

    python3 -c 'import xxhash,sys; d=open(sys.argv[1],"rb").read()[:-512]; print(xxhash.xxh3_128(
        b"".join(xxhash.xxh3_128(d[i:i+2**20]).digest() for i in range(0,len(d),2**20))
        ).hexdigest())' layer.vhd
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import xxhash

from lcow._util.holes import data_ranges
from lcow.errors import InvalidArgument

__all__ = [
    "PIECE_SIZE",
    "UNIQUE_ID_SIZE",
    "PieceDigests",
    "disk_digest",
    "unique_id",
    "unique_id_of",
]

#: Bytes of disk data per hashed piece.
PIECE_SIZE = 1 << 20
UNIQUE_ID_SIZE = 16
_ZEROS = bytes(PIECE_SIZE)
_ZERO_PIECE_DIGEST = xxhash.xxh3_128(_ZEROS).digest()


def unique_id(fd: int, size: int) -> bytes:
    """The footer unique id of the disk data ``[0, size)`` of ``fd``: see the module docs.

    Args:
        fd: an open descriptor, readable; its file offset is not moved.
        size: bytes of disk data (the footer's current size).

    Raises:
        InvalidArgument: ``size`` is negative or runs past the end of the file.
        OSError: reading failed.
    """
    return disk_digest(fd, size)


def unique_id_of(data: bytes | bytearray | memoryview) -> bytes:
    """The footer unique id of disk data held in memory (small images, seeds, checks)."""
    view = memoryview(data)
    pieces = (
        xxhash.xxh3_128(view[i : i + PIECE_SIZE]).digest() for i in range(0, len(view), PIECE_SIZE)
    )
    return xxhash.xxh3_128(b"".join(pieces)).digest()


def disk_digest(fd: int, size: int) -> bytes:
    """The 16-byte piece digest of ``[0, size)`` of ``fd`` (see the module docs)."""
    if size < 0:
        raise InvalidArgument(f"VHD disk data: size {size} is negative", subject=str(size))
    length = os.fstat(fd).st_size
    if length < size:
        raise InvalidArgument(
            f"VHD disk data: size {size} runs past the end of the file ({length} bytes)",
            subject=str(size),
        )
    pieces = -(-size // PIECE_SIZE)
    digests = [_ZERO_PIECE_DIGEST] * pieces
    if pieces and size % PIECE_SIZE:  # a short last piece that stays a hole hashes its length
        digests[-1] = xxhash.xxh3_128(bytes(size % PIECE_SIZE)).digest()
    buf = bytearray(PIECE_SIZE)  # one buffer, reused: no fresh pages per piece
    for index in _pieces_with_data(fd, size):
        pos = index * PIECE_SIZE
        view = memoryview(buf)[: min(PIECE_SIZE, size - pos)]
        _pread_exact(fd, view, pos, size)
        digests[index] = xxhash.xxh3_128(view).digest()
    return xxhash.xxh3_128(b"".join(digests)).digest()


def _pieces_with_data(fd: int, size: int) -> Iterator[int]:
    """Indices of the pieces that are not wholly inside a hole, rising."""
    last = -1
    for start, end in data_ranges(fd, size, PIECE_SIZE):
        for index in range(max(start // PIECE_SIZE, last + 1), -(-end // PIECE_SIZE)):
            last = index
            yield index


def _pread_exact(fd: int, view: memoryview, pos: int, size: int) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], pos + done)
        if n == 0:
            raise InvalidArgument(
                f"VHD disk data: size {size} runs past the end of the file "
                f"(read stopped at {pos + done})",
                subject=str(size),
            )
        done += n


class PieceDigests:
    """The piece digests of a file being written, from the bytes as they are written.

    Made for a file that starts empty and whose every write is reported, in the order the
    writes happen (an :class:`~lcow._util.outbuf.OutputWriter` observer): :meth:`seen` for
    bytes passing through memory, :meth:`unseen` for bytes written by other means. A piece is
    hashed as a stream while its bytes arrive in rising order; a forward gap is hashed as the
    zeros it reads as (a later write into it makes the piece out of order). A piece written
    out of order, overwritten or written unseen is read back by :meth:`unique_id`, and only
    that piece: an image written front to back reads back its first piece (the superblock,
    written last) and little else.
    """

    def __init__(self) -> None:
        self._open: dict[int, tuple[xxhash.xxh3_128, int]] = {}  # piece -> (state, bytes fed)
        self._done: dict[int, bytes] = {}  # whole pieces hashed in order
        self._reread: set[int] = set()  # pieces to read back

    def seen(self, offset: int, data: memoryview) -> None:
        """``data`` was written at ``offset``."""
        n = len(data)
        pos = 0
        while pos < n:
            index, local = divmod(offset + pos, PIECE_SIZE)
            take = min(n - pos, PIECE_SIZE - local)
            if index not in self._reread:
                self._feed(index, local, data[pos : pos + take])
            pos += take

    def _feed(self, index: int, local: int, chunk: memoryview) -> None:
        state = self._open.get(index)
        if state is None:
            if index in self._done:  # written again
                del self._done[index]
                self._reread.add(index)
                return
            hasher, fed = xxhash.xxh3_128(), 0
        else:
            hasher, fed = state
        if local < fed:  # overwritten, or out of order
            self._open.pop(index, None)
            self._reread.add(index)
            return
        if local > fed:
            hasher.update(_ZEROS[: local - fed])
        hasher.update(chunk)
        fed = local + len(chunk)
        if fed == PIECE_SIZE:
            self._open.pop(index, None)
            self._done[index] = hasher.digest()
        else:
            self._open[index] = (hasher, fed)

    def unseen(self, offset: int, length: int) -> None:
        """``length`` bytes at ``offset`` were written by other means: read them back."""
        for index in range(offset // PIECE_SIZE, -(-(offset + length) // PIECE_SIZE)):
            self._open.pop(index, None)
            self._done.pop(index, None)
            self._reread.add(index)

    def unique_id(self, fd: int, size: int) -> bytes:
        """The footer unique id of the finished file's first ``size`` bytes (equal to
        :func:`unique_id` of it), reading back only the pieces not seen in order.

        Args:
            fd: the file written, readable.
            size: bytes of disk data; bytes never written read as zeros.
        """
        if size < 0:
            raise InvalidArgument(f"VHD disk data: size {size} is negative", subject=str(size))
        pieces = -(-size // PIECE_SIZE)
        digests: list[bytes] = []
        buf: bytearray | None = None
        for index in range(pieces):
            length = min(PIECE_SIZE, size - index * PIECE_SIZE)
            state = self._open.get(index)
            done = self._done.get(index)
            if index in self._reread or (state is not None and state[1] > length):
                if buf is None:
                    buf = bytearray(PIECE_SIZE)
                view = memoryview(buf)[:length]
                _pread_exact(fd, view, index * PIECE_SIZE, size)
                digests.append(xxhash.xxh3_128(view).digest())
            elif done is not None and length == PIECE_SIZE:
                digests.append(done)
            elif state is not None:  # the rest was never written: zeros
                hasher, fed = state
                hasher.update(_ZEROS[: length - fed])
                digests.append(hasher.digest())
            elif done is None and length == PIECE_SIZE:
                digests.append(_ZERO_PIECE_DIGEST)
            else:  # a short last piece: never written, or cut by a truncation
                view = memoryview(_ZEROS)[:length]
                if done is not None:
                    buf = buf or bytearray(PIECE_SIZE)
                    view = memoryview(buf)[:length]
                    _pread_exact(fd, view, index * PIECE_SIZE, size)
                digests.append(xxhash.xxh3_128(view).digest())
        return xxhash.xxh3_128(b"".join(digests)).digest()
