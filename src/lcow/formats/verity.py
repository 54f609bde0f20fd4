"""dm-verity hash tree and superblock, as hcsshim ``ext4/dmverity`` writes them (SPEC §8).

Layout of a layer file carrying verity data::

    [ data (ext4), data_size bytes ][ superblock, padded to 4096 ][ tree, top level first ]

SHA-256, 4096-byte data and hash blocks, hash type 1 (salt hashed *before* each block), a salt
of 32 zero bytes. Every data block is hashed, the digests are concatenated and zero-padded to a
whole block, and that level is hashed again until a level fits in one block. The root hash is
SHA-256(salt || top block). Levels are stored top first, directly after the superblock, which is
where ``veritysetup`` expects them for a superblock at ``--hash-offset``.

As in hcsshim, there is always at least one tree level, even for a single data block; cryptsetup
hashes a one-block device without a tree, so the two disagree only for that degenerate size.

The superblock's UUID is derived from the content (the first 16 bytes of the root hash) rather
than drawn at random, so the same image always gives the same bytes.

Data blocks that lie in holes of a sparse file are not read: their digest is the precomputed
digest of a zero block.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from lcow._util.holes import data_ranges
from lcow.errors import CorruptImage, InvalidArgument

__all__ = [
    "ALGORITHM",
    "BLOCK_SIZE",
    "DIGEST_SIZE",
    "HASH_TYPE",
    "SALT",
    "SUPERBLOCK_SIZE",
    "VERITY_SIGNATURE",
    "VERITY_VERSION",
    "VerityInfo",
    "VeritySuperblock",
    "append_hash_tree",
    "build_verity_superblock",
    "content_uuid",
    "read_verity_superblock",
]

BLOCK_SIZE = 4096  # data and hash block size
DIGEST_SIZE = 32  # SHA-256
HASHES_PER_BLOCK = BLOCK_SIZE // DIGEST_SIZE  # 128
SALT = bytes(32)
ALGORITHM = "sha256"
HASH_TYPE = 1  # "normal": salt first; type 0 (Chrome OS) appends it
VERITY_SIGNATURE = b"verity\0\0"
VERITY_VERSION = 1
SUPERBLOCK_SIZE = BLOCK_SIZE  # the 512-byte struct, zero-padded to one hash block
MAX_SALT_SIZE = 256

# cryptsetup's struct verity_sb (little-endian, 512 bytes). Offsets in the comments.
_SUPERBLOCK = struct.Struct(
    "<"
    "8s"  # 0   signature "verity\0\0"
    "I"  # 8   version
    "I"  # 12  hash type
    "16s"  # 16  uuid
    "32s"  # 32  algorithm name, NUL padded
    "I"  # 64  data block size
    "I"  # 68  hash block size
    "Q"  # 72  data blocks
    "H"  # 80  salt size
    "6x"  # 82  padding
    "256s"  # 88  salt
    "168x"  # 344 padding
)
assert _SUPERBLOCK.size == 512

_SALTED = hashlib.sha256(SALT)  # copied per block: the salt prefix is hashed once
_ZERO_DIGEST = hashlib.sha256(SALT + bytes(BLOCK_SIZE)).digest()
_CHUNK = 1 << 20  # bytes read and hashed per task
_MAX_WORKERS = 4


@dataclass(frozen=True)
class VerityInfo:
    """Where a hash tree was written and what it proves.

    Attributes:
        root_hash: SHA-256 root digest (32 bytes).
        hash_offset: byte offset of the verity superblock (= the data size); the value for
            ``veritysetup --hash-offset``.
        hash_size: bytes of verity data written at ``hash_offset`` (superblock + tree).
        data_blocks: number of 4096-byte data blocks covered.
    """

    root_hash: bytes
    hash_offset: int
    hash_size: int
    data_blocks: int

    @property
    def root_hash_hex(self) -> str:
        """The root hash as lowercase hex, as ``veritysetup`` and dm tables take it."""
        return self.root_hash.hex()

    @property
    def tree_offset(self) -> int:
        """Byte offset of the top tree level (the block after the superblock)."""
        return self.hash_offset + SUPERBLOCK_SIZE


@dataclass(frozen=True)
class VeritySuperblock:
    """A parsed dm-verity superblock (field names follow cryptsetup's ``struct verity_sb``).

    Attributes:
        version: superblock version (1).
        hash_type: 1 for normal (salt first), 0 for Chrome OS.
        uuid: 16-byte UUID of the hash device.
        algorithm: hash algorithm name, e.g. ``"sha256"``.
        data_block_size: data block size in bytes.
        hash_block_size: hash block size in bytes.
        data_blocks: number of data blocks.
        salt: the salt (``salt_size`` bytes).
    """

    version: int
    hash_type: int
    uuid: bytes
    algorithm: str
    data_block_size: int
    hash_block_size: int
    data_blocks: int
    salt: bytes

    @property
    def data_size(self) -> int:
        """Bytes of data covered (data blocks x data block size)."""
        return self.data_blocks * self.data_block_size


def content_uuid(root_hash: bytes) -> bytes:
    """The superblock UUID lcow derives from the content: the first 16 bytes of the root hash.

    The root hash already commits to every data block, so equal images get equal UUIDs and
    different ones different UUIDs (SPEC §8 note): conversions are byte-for-byte reproducible.
    """
    return bytes(root_hash[:16])


def _check_uuid(uuid: bytes) -> None:
    if len(uuid) != 16:
        raise InvalidArgument(f"verity: uuid must be 16 bytes, got {len(uuid)}")


def build_verity_superblock(data_blocks: int, *, uuid: bytes) -> bytes:
    """Build lcow's verity superblock, zero-padded to one 4096-byte block.

    Args:
        data_blocks: number of 4096-byte data blocks.
        uuid: 16 bytes (:func:`content_uuid` of the root hash in what lcow writes).

    Returns:
        :data:`SUPERBLOCK_SIZE` bytes.

    Raises:
        InvalidArgument: ``uuid`` is not 16 bytes or ``data_blocks`` is not positive.
    """
    if data_blocks <= 0:
        raise InvalidArgument(f"verity: data blocks must be positive, got {data_blocks}")
    _check_uuid(uuid)
    packed = _SUPERBLOCK.pack(
        VERITY_SIGNATURE,
        VERITY_VERSION,
        HASH_TYPE,
        bytes(uuid),
        ALGORITHM.encode("ascii"),
        BLOCK_SIZE,
        BLOCK_SIZE,
        data_blocks,
        len(SALT),
        SALT,
    )
    return packed + bytes(SUPERBLOCK_SIZE - len(packed))


def read_verity_superblock(data: bytes | bytearray | memoryview) -> VeritySuperblock:
    """Parse a dm-verity superblock.

    Args:
        data: at least the first 512 bytes of the superblock.

    Returns:
        The parsed superblock.

    Raises:
        CorruptImage: too short, wrong signature, unknown version, or a salt size over 256.
    """
    if len(data) < _SUPERBLOCK.size:
        raise CorruptImage(f"verity superblock: expected {_SUPERBLOCK.size} bytes, got {len(data)}")
    (
        signature,
        version,
        hash_type,
        uuid,
        algorithm,
        data_block_size,
        hash_block_size,
        data_blocks,
        salt_size,
        salt,
    ) = _SUPERBLOCK.unpack_from(data)
    if signature != VERITY_SIGNATURE:
        raise CorruptImage(
            f"verity superblock: bad signature {signature!r}, expected {VERITY_SIGNATURE!r}"
        )
    if version != VERITY_VERSION:
        raise CorruptImage(f"verity superblock: unsupported version {version}")
    if salt_size > MAX_SALT_SIZE:
        raise CorruptImage(f"verity superblock: salt size {salt_size} exceeds {MAX_SALT_SIZE}")
    return VeritySuperblock(
        version=version,
        hash_type=hash_type,
        uuid=uuid,
        algorithm=algorithm.rstrip(b"\0").decode("ascii", "replace"),
        data_block_size=data_block_size,
        hash_block_size=hash_block_size,
        data_blocks=data_blocks,
        salt=salt[:salt_size],
    )


def append_hash_tree(
    fd: int, data_size: int, *, uuid: bytes | None = None, workers: int | None = None
) -> VerityInfo:
    """Hash ``[0, data_size)`` of a file and write superblock and tree at ``data_size``.

    The data is streamed in 1 MiB chunks with ``preadv``; memory is bounded by the tree
    (32 bytes per data block) plus one chunk buffer per worker. The file offset of ``fd`` is
    left where it was. Bytes after the written tree are not touched.

    Args:
        fd: file descriptor open for reading and writing.
        data_size: bytes of data to protect; a positive multiple of 4096.
        uuid: 16-byte superblock UUID; ``None``: :func:`content_uuid` of the root hash, so the
            same data always gives the same bytes.
        workers: hashing threads (SHA-256 releases the GIL); defaults to the CPU count,
            at most 4.

    Returns:
        Root hash and placement of the tree.

    Raises:
        InvalidArgument: ``data_size`` is not a positive multiple of 4096, the file is shorter
            than ``data_size``, or ``uuid`` is not 16 bytes.
        OSError: reading or writing failed.
    """
    if data_size <= 0 or data_size % BLOCK_SIZE:
        raise InvalidArgument(
            f"verity: data size {data_size} must be a positive multiple of {BLOCK_SIZE}",
            subject=str(data_size),
        )
    file_size = os.fstat(fd).st_size
    if file_size < data_size:
        raise InvalidArgument(
            f"verity: data size {data_size} runs past the end of the file ({file_size} bytes)",
            subject=str(data_size),
        )
    data_blocks = data_size // BLOCK_SIZE
    if uuid is not None:
        _check_uuid(uuid)  # before the long hashing, not after
    if workers is None:
        workers = min(os.cpu_count() or 1, _MAX_WORKERS)
    digests = _hash_data(fd, data_size, max(workers, 1))
    levels = _build_levels(digests)
    root = _block_digest(levels[-1])
    chosen = content_uuid(root) if uuid is None else uuid
    superblock = build_verity_superblock(data_blocks, uuid=chosen)
    offset = data_size
    _pwrite_all(fd, superblock, offset)
    offset += len(superblock)
    for level in reversed(levels):
        _pwrite_all(fd, level, offset)
        offset += len(level)
    return VerityInfo(
        root_hash=root,
        hash_offset=data_size,
        hash_size=offset - data_size,
        data_blocks=data_blocks,
    )


def _block_digest(block: bytes | bytearray | memoryview) -> bytes:
    h = _SALTED.copy()
    h.update(block)
    return h.digest()


def _digest_blocks(view: memoryview) -> bytes:
    """Concatenated salted digests of each 4096-byte block of ``view``."""
    out: list[bytes] = []
    append = out.append
    copy = _SALTED.copy
    for off in range(0, len(view), BLOCK_SIZE):
        h = copy()
        h.update(view[off : off + BLOCK_SIZE])
        append(h.digest())
    return b"".join(out)


def _build_levels(digests: bytes | bytearray) -> list[bytes]:
    """Hash levels, bottom first, each zero-padded to whole blocks; the last is one block."""
    levels: list[bytes] = []
    current = bytes(digests)
    while True:
        pad = -len(current) % BLOCK_SIZE
        level = current + bytes(pad)
        levels.append(level)
        if len(level) == BLOCK_SIZE:
            return levels
        current = _digest_blocks(memoryview(level))


def _hash_data(fd: int, data_size: int, workers: int) -> bytearray:
    """Level-0 digests of ``[0, data_size)``; blocks in holes get the zero-block digest."""
    data_blocks = data_size // BLOCK_SIZE
    digests = bytearray(_ZERO_DIGEST * data_blocks)
    local = threading.local()

    def task(pos: int, length: int) -> tuple[int, bytes]:
        buf: bytearray | None = getattr(local, "buf", None)
        if buf is None:
            buf = bytearray(_CHUNK)
            local.buf = buf
        view = memoryview(buf)[:length]
        _pread_exact(fd, view, pos, data_size)
        return pos, _digest_blocks(view)

    def store(result: tuple[int, bytes]) -> None:
        pos, chunk = result
        start = pos // BLOCK_SIZE * DIGEST_SIZE
        digests[start : start + len(chunk)] = chunk

    chunks = _chunks(data_ranges(fd, data_size, BLOCK_SIZE))
    if workers == 1:
        for pos, length in chunks:
            store(task(pos, length))
        return digests
    pending: deque[Future[tuple[int, bytes]]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lcow-verity") as pool:
        for pos, length in chunks:
            if len(pending) >= 2 * workers:
                store(pending.popleft().result())
            pending.append(pool.submit(task, pos, length))
        while pending:
            store(pending.popleft().result())
    return digests


def _chunks(ranges: Iterable[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Split ``(start, end)`` ranges into ``(pos, length)`` pieces of at most one chunk."""
    for start, end in ranges:
        for pos in range(start, end, _CHUNK):
            yield pos, min(_CHUNK, end - pos)


def _pread_exact(fd: int, view: memoryview, pos: int, data_size: int) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], pos + done)
        if n == 0:
            raise InvalidArgument(
                f"verity: data size {data_size} runs past the end of the file "
                f"(read stopped at {pos + done})",
                subject=str(data_size),
            )
        done += n


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
