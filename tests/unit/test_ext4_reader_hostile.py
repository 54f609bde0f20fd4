"""The ext4 reader on hostile images: a fuzz smoke test and crafted attacks (issue 3).

Every damaged image must end in a :class:`~lcow.errors.LcowError` category — normally
:class:`~lcow.errors.CorruptImage`, :class:`~lcow.errors.LimitExceeded` for sizes past a limit,
:class:`~lcow.errors.NotSupported` for flags turned on — within a second, never another
exception, a hang or a huge allocation. Base images come from ``mke2fs -d``: skipped without
e2fsprogs, failed when ``CI=true``.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest

from lcow.errors import CorruptImage, LcowError, LimitExceeded
from lcow.formats.ext4.reader import Ext4Reader
from lcow.formats.source import BytesSource

_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
_SECOND = 1.0
_READ_CAP = 1 << 16


def _require(ok: bool, reason: str) -> None:
    """Skip when a requirement is missing, but fail in CI (CI=true)."""
    if ok:
        return
    if os.environ.get("CI", "").lower() in {"true", "1", "yes"}:
        pytest.fail(f"requirement missing in CI: {reason}")
    pytest.skip(reason)


def _tree(root: Path, *, inline: bool) -> None:
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "e" / "f").write_bytes(b"in e")
    (root / "dir2").mkdir()
    (root / "dir2" / "g").write_bytes(b"g" * 3000)
    (root / "small").write_bytes(b"small")
    (root / "inl").write_bytes(b"i" * 100)
    with open(root / "frag", "wb") as fh:  # 200 extents: an index block and leaves
        for i in range(200):
            fh.seek(i * 2048)
            fh.write(b"%04d" % i * 256)
    os.symlink("short", root / "sym")
    os.symlink("L" * 300, root / "longsym")
    os.setxattr(root / "small", "user.a", b"1")
    os.setxattr(root / "dir2" / "g", "user.big", b"B" * 600)
    for i in range(30):
        (root / "d" / f"n{i:02d}").write_bytes(b"")
    if inline:
        (root / "tiny").mkdir()
        (root / "tiny" / "x").write_bytes(b"x")


_BASES = {
    "ext4": ("-t", "ext4", "-b", "1024", "-O", "^has_journal"),
    "ext4-csum-inline": ("-t", "ext4", "-b", "1024", "-O", "^has_journal,inline_data,64bit"),
    "ext2": ("-t", "ext2", "-b", "1024"),
}


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Pristine images by name, built on first use."""
    found = shutil.which("mke2fs") or shutil.which("mke2fs", path=_SBIN)
    _require(found is not None, "mke2fs (e2fsprogs) not installed")
    assert found is not None
    mke2fs: str = found

    class Images(dict[str, bytes]):
        def __missing__(self, name: str) -> bytes:
            tmp = tmp_path_factory.mktemp(name)
            src = tmp / "src"
            src.mkdir()
            _tree(src, inline="inline" in name)
            image = tmp / "base.img"
            subprocess.run(
                [mke2fs, "-q", "-F", *_BASES[name], "-N", "64", "-d", src, image, "2M"],
                check=True,
                capture_output=True,
            )
            self[name] = image.read_bytes()
            return self[name]

    return Images()


@pytest.fixture(params=sorted(_BASES))
def base(request: pytest.FixtureRequest, bases: dict[str, bytes]) -> bytes:
    """Each pristine image in turn."""
    return bases[request.param]


def exercise(data: bytes | bytearray, *, verify: bool = False) -> int:
    """Walk everything and read every file's mapping and first bytes; return entry count."""
    reader = Ext4Reader(BytesSource(data), verify_checksums=verify)
    count = 0
    for entry in reader.walk():
        count += 1
        if stat.S_ISREG(entry.mode) or stat.S_ISDIR(entry.mode):
            for _ in reader.spans(entry.inode, path=entry.path):
                pass
            with reader.open_file(entry.inode, path=entry.path) as fh:
                fh.read(_READ_CAP)
    return count


def expect_error(data: bytes | bytearray, kind: type[LcowError] = CorruptImage) -> LcowError:
    """``exercise`` must raise ``kind`` within a second."""
    start = time.monotonic()
    with pytest.raises(kind) as info:
        exercise(data)
    assert time.monotonic() - start < _SECOND
    return info.value


# -- locating structures ---------------------------------------------------------------------


def inode_offset(reader: Ext4Reader, ino: int) -> int:
    sb = reader.superblock
    group, index = divmod(ino - 1, sb.s_inodes_per_group)
    return reader.group_desc(group).bg_inode_table * reader.block_size + index * sb.s_inode_size


def dirent_offset(data: bytes, reader: Ext4Reader, directory: bytes, name: bytes) -> int:
    """Offset of the dirent naming ``name`` inside ``directory``'s blocks."""
    inode = reader.lookup(directory)
    bs = reader.block_size
    for run in reader.data_runs(inode):
        if run.physical is None:
            continue
        lo, hi = run.physical * bs, (run.physical + run.length) * bs
        pos = lo
        while (pos := data.find(name, pos, hi)) != -1:
            if data[pos - 2] == len(name):
                return pos - 8
            pos += 1
    raise AssertionError(f"{name!r} not found in {directory!r}")


def put32(data: bytearray, off: int, value: int) -> None:
    data[off : off + 4] = struct.pack("<I", value)


# -- the fuzz smoke test ---------------------------------------------------------------------


def _metadata_ranges(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges worth flipping: superblock, descriptors, used inodes, dir/xattr/index blocks."""
    reader = Ext4Reader(BytesSource(data))
    bs = reader.block_size
    ranges = [(1024, 2048), (2 * bs if bs == 1024 else bs, 3 * bs if bs == 1024 else 2 * bs)]
    isz = reader.superblock.s_inode_size
    for entry in reader.walk():
        off = inode_offset(reader, entry.ino)
        ranges.append((off, off + isz))
        if entry.inode.file_acl:
            ranges.append((entry.inode.file_acl * bs, entry.inode.file_acl * bs + bs))
        if stat.S_ISDIR(entry.mode):
            for run in reader.data_runs(entry.inode):
                if run.physical is not None:
                    ranges.append((run.physical * bs, (run.physical + run.length) * bs))
        if entry.inode.has_extents and entry.inode.i_block[6:8] != b"\0\0":
            for i in range(struct.unpack_from("<H", entry.inode.i_block, 2)[0]):
                leaf = struct.unpack_from("<I", entry.inode.i_block, 12 + 12 * i + 4)[0]
                ranges.append((leaf * bs, leaf * bs + 512))
    return ranges


@pytest.mark.timeout(120)
def test_bit_flips_end_in_lcow_errors(base: bytes) -> None:
    assert exercise(base) > 40
    ranges = _metadata_ranges(base)
    rng = random.Random(20240611)
    outcomes = {"ok": 0, "error": 0}
    for case in range(300):
        data = bytearray(base)
        for _ in range(rng.randint(1, 12)):
            lo, hi = rng.choice(ranges)
            pos = rng.randrange(lo, hi)
            data[pos] ^= 1 << rng.randrange(8)
        start = time.monotonic()
        try:
            exercise(data, verify=case % 3 == 0)
            outcomes["ok"] += 1
        except LcowError:
            outcomes["error"] += 1
        elapsed = time.monotonic() - start
        assert elapsed < _SECOND, f"case {case} took {elapsed:.2f}s"
    assert outcomes["error"] > 30, outcomes


@pytest.mark.timeout(60)
def test_truncated_images(base: bytes) -> None:
    for cut in (0, 1, 1024, 2047, 2048, 4096, len(base) // 3, len(base) // 2, len(base) - 1):
        expect_error(base[:cut])


@pytest.mark.timeout(60)
def test_random_bytes_never_crash() -> None:
    rng = random.Random(7)
    for _ in range(50):
        data = bytearray(rng.randbytes(64 * 1024))
        data[1024 + 0x38 : 1024 + 0x3A] = b"\x53\xef"  # a plausible magic
        with pytest.raises(LcowError):
            exercise(data)


# -- crafted attacks -------------------------------------------------------------------------


def test_directory_loops(base: bytes) -> None:
    reader = Ext4Reader(BytesSource(base))
    d_ino = reader.lookup(b"/d").ino
    data = bytearray(base)
    put32(data, dirent_offset(base, reader, b"/d", b"e"), d_ino)  # /d/e is /d again
    err = expect_error(data)
    assert "loop" in str(err) and "/d/e" in str(err)
    data = bytearray(base)
    put32(data, dirent_offset(base, reader, b"/d", b"e"), 2)  # back to the root
    assert "loop" in str(expect_error(data))


def test_shared_directory_block(base: bytes) -> None:
    reader = Ext4Reader(BytesSource(base))
    d = reader.lookup(b"/d")
    dir2 = reader.lookup(b"/dir2")
    data = bytearray(base)
    # Give /dir2 the block map / extent root of /d: both directories share blocks.
    data[inode_offset(reader, dir2.ino) + 0x28 : inode_offset(reader, dir2.ino) + 0x64] = d.i_block
    data[inode_offset(reader, dir2.ino) + 0x20 : inode_offset(reader, dir2.ino) + 0x24] = (
        struct.pack("<I", d.flags)
    )
    err = expect_error(data)
    assert "twice" in str(err)


@pytest.mark.parametrize("name", ["ext4", "ext4-csum-inline"])
def test_extent_tree_attacks(bases: dict[str, bytes], name: str) -> None:
    base = bases[name]
    reader = Ext4Reader(BytesSource(base))
    frag = reader.lookup(b"/frag")
    assert frag.has_extents
    depth = struct.unpack_from("<H", frag.i_block, 6)[0]
    assert depth >= 1
    entries = struct.unpack_from("<H", frag.i_block, 2)[0]
    first_leaf = struct.unpack_from("<I", frag.i_block, 12 + 4)[0]
    root = inode_offset(reader, frag.ino) + 0x28
    bs = reader.block_size
    # The leaf claims depth 1 and points at itself.
    data = bytearray(base)
    leaf = first_leaf * bs
    struct.pack_into("<HHHHI", data, leaf, 0xF30A, 1, (bs - 12) // 12, 1, 0)
    struct.pack_into("<IIHH", data, leaf + 12, 0, first_leaf, 0, 0)
    assert "depth" in str(expect_error(data))
    # Two index entries naming the same leaf.
    assert entries >= 2
    data = bytearray(base)
    struct.pack_into("<I", data, root + 24 + 4, first_leaf)
    assert "twice" in str(expect_error(data))
    # A huge length pointing past the end of the filesystem.
    data = bytearray(base)
    struct.pack_into("<IHHI", data, leaf + 12, 0, 32768, 0, 10)
    assert "outside" in str(expect_error(data))


def test_huge_sizes(base: bytes) -> None:
    reader = Ext4Reader(BytesSource(base))
    small = inode_offset(reader, reader.lookup(b"/small").ino)
    for size in ((1 << 63) - 1, 1 << 50):
        data = bytearray(base)
        struct.pack_into("<I", data, small + 4, size & 0xFFFFFFFF)
        struct.pack_into("<I", data, small + 0x6C, size >> 32)
        assert "exceeds" in str(expect_error(data))
    d = inode_offset(reader, reader.lookup(b"/d").ino)
    data = bytearray(base)
    struct.pack_into("<I", data, d + 0x6C, 1 << 10)  # a 4 TiB directory
    assert isinstance(expect_error(data, LcowError), LimitExceeded | CorruptImage)
    with pytest.raises(LimitExceeded):
        list(Ext4Reader(BytesSource(data)).walk())
    sym = inode_offset(reader, reader.lookup(b"/longsym").ino)
    data = bytearray(base)
    struct.pack_into("<I", data, sym + 4, 1 << 20)
    assert "symlink" in str(expect_error(data))
    data = bytearray(base)
    struct.pack_into("<I", data, 1024 + 4, 1 << 31)  # s_blocks_count_lo
    assert "exceeds the disk size" in str(expect_error(data))
    for field, value in ((0x18, 40), (0x20, 0), (0x28, 0), (0x58, 100)):
        data = bytearray(base)
        struct.pack_into("<I" if field != 0x58 else "<H", data, 1024 + field, value)
        expect_error(data)


def test_bad_records(base: bytes) -> None:
    reader = Ext4Reader(BytesSource(base))
    if reader.lookup(b"/d").has_inline_data:
        pytest.skip("inline /d")
    off = dirent_offset(base, reader, b"/d", b"e")
    unused = reader.superblock.s_inodes_count  # the last inode is free in these images
    assert reader.inode(unused).mode == 0
    for delta, fmt, value in (
        (4, "<H", 0),  # rec_len 0: no endless loop
        (4, "<H", 2),
        (4, "<H", 65532),
        (6, "B", 250),  # name_len past rec_len
        (8, "B", ord("/")),  # "/" in a name
        (0, "<I", 1 << 30),  # inode out of range
        (0, "<I", unused),
    ):
        data = bytearray(base)
        struct.pack_into(fmt, data, off + delta, value)
        err = expect_error(data)
        assert "inode" in str(err)


def test_bad_inodes_and_xattrs(base: bytes) -> None:
    reader = Ext4Reader(BytesSource(base))
    small = reader.lookup(b"/small")
    off = inode_offset(reader, small.ino)
    data = bytearray(base)
    struct.pack_into("<H", data, off + 0x80, 3)  # odd i_extra_isize
    assert "i_extra_isize" in str(expect_error(data))
    data = bytearray(base)
    struct.pack_into("<H", data, off, 0o170644)  # impossible file type
    assert "file type" in str(expect_error(data))
    data = bytearray(base)
    struct.pack_into("<H", data, inode_offset(reader, 2), 0o100644)  # a regular-file root
    assert "root inode is not a directory" in str(expect_error(data))
    # The in-inode xattr value offset points outside the inode.
    extra = struct.unpack_from("<H", base, off + 0x80)[0]
    area = off + 128 + extra
    assert struct.unpack_from("<I", base, area)[0] == 0xEA020000
    entry = area + 4
    while base[entry + 16 : entry + 16 + base[entry]] != b"a":  # find user.a
        entry += (16 + base[entry] + 3) & ~3
    data = bytearray(base)
    struct.pack_into("<H", data, entry + 2, 60000)
    assert "outside the value area" in str(expect_error(data))
    data = bytearray(base)
    struct.pack_into("<I", data, entry + 8, 1 << 30)  # e_value_size
    expect_error(data)
    g = reader.lookup(b"/dir2/g")
    if g.file_acl:
        data = bytearray(base)
        put32(data, g.file_acl * reader.block_size, 0x12345678)
        assert "xattr block magic" in str(expect_error(data))
