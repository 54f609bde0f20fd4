"""A fixed VHD's unique id, derived from its disk data (SPEC §7.1 note: deterministic images).

The footer's 16-byte unique id is the first 16 bytes of a *piece digest* of the disk data (every
byte before the footer, the dm-verity area included):

    id = SHA-256( SHA-256(piece 0) || SHA-256(piece 1) || ... )[:16]

where the pieces are the consecutive 1 MiB slices of the data (the last one may be shorter).
Equal data gives equal ids on every host and run; different data gives different ids (a
SHA-256 collision aside). Hashing pieces rather than the whole stream lets them be hashed on
several cores at once and lets a piece that lies wholly in a hole of a sparse image use the
known digest of zeros without being read.

To check a file by hand (``layer.vhd``, footer 512 bytes)::

    python3 -c 'import hashlib,sys; d=open(sys.argv[1],"rb").read()[:-512]; print(hashlib.sha256(
        b"".join(hashlib.sha256(d[i:i+2**20]).digest() for i in range(0,len(d),2**20))
        ).hexdigest()[:32])' layer.vhd
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from lcow._util.holes import data_ranges
from lcow.errors import InvalidArgument

__all__ = ["PIECE_SIZE", "UNIQUE_ID_SIZE", "disk_digest", "unique_id", "unique_id_of"]

#: Bytes of disk data per hashed piece.
PIECE_SIZE = 1 << 20
UNIQUE_ID_SIZE = 16
_MAX_WORKERS = 4
_ZERO_PIECE_DIGEST = hashlib.sha256(bytes(PIECE_SIZE)).digest()


def unique_id(fd: int, size: int, *, workers: int | None = None) -> bytes:
    """The footer unique id of the disk data ``[0, size)`` of ``fd``: see the module docs.

    Args:
        fd: an open descriptor, readable; its file offset is not moved.
        size: bytes of disk data (the footer's current size).
        workers: hashing threads (SHA-256 releases the GIL); default: the CPU count, at most 4.

    Raises:
        InvalidArgument: ``size`` is negative or runs past the end of the file.
        OSError: reading failed.
    """
    return disk_digest(fd, size, workers=workers)[:UNIQUE_ID_SIZE]


def unique_id_of(data: bytes | bytearray | memoryview) -> bytes:
    """The footer unique id of disk data held in memory (small images, seeds, checks)."""
    view = memoryview(data)
    pieces = (
        hashlib.sha256(view[i : i + PIECE_SIZE]).digest() for i in range(0, len(view), PIECE_SIZE)
    )
    return hashlib.sha256(b"".join(pieces)).digest()[:UNIQUE_ID_SIZE]


def disk_digest(fd: int, size: int, *, workers: int | None = None) -> bytes:
    """The 32-byte piece digest of ``[0, size)`` of ``fd`` (see the module docs)."""
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
        digests[-1] = hashlib.sha256(bytes(size % PIECE_SIZE)).digest()
    count = workers if workers is not None else min(os.cpu_count() or 1, _MAX_WORKERS)
    local = threading.local()

    def task(index: int) -> tuple[int, bytes]:
        buf: bytearray | None = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = bytearray(PIECE_SIZE)
        pos = index * PIECE_SIZE
        view = memoryview(buf)[: min(PIECE_SIZE, size - pos)]
        _pread_exact(fd, view, pos, size)
        return index, hashlib.sha256(view).digest()

    def store(result: tuple[int, bytes]) -> None:
        digests[result[0]] = result[1]

    wanted = _pieces_with_data(fd, size)
    if count <= 1:
        for index in wanted:
            store(task(index))
    else:
        pending: deque[Future[tuple[int, bytes]]] = deque()
        with ThreadPoolExecutor(max_workers=count, thread_name_prefix="lcow-vhd-id") as pool:
            for index in wanted:
                if len(pending) >= 2 * count:
                    store(pending.popleft().result())
                pending.append(pool.submit(task, index))
            while pending:
                store(pending.popleft().result())
    return hashlib.sha256(b"".join(digests)).digest()


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
