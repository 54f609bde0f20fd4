"""Layer export (Diff), Changes and DiffSize on hostile images: a fuzz smoke test (issue 3).

Truncated, bit-flipped (seeded) and cyclic images go through :func:`export_layer`,
:func:`overlay_changes`, :func:`tree_changes` (with the capability-reading view), and
:func:`own_diff_size`. Each operation must finish or raise an :class:`~lcow.errors.LcowError`
within a second — never another exception, never a hang. A flipped bit that leaves a valid
image is fine; one that turns a file into a huge sparse file is too, so the export writes into
a sink that stops after 16 MiB. Truncated and cyclic images must fail.

Base images: lcow's writer (always) and ``mke2fs -d`` (skipped without e2fsprogs, failed when
``CI=true``). Every third case is read from a file, so the kernel-copy paths run too.
"""

from __future__ import annotations

import os
import random
import stat
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lcow import ConvertOptions, tar2ext4
from lcow.convert.export import export_layer
from lcow.errors import CorruptImage, LcowError
from lcow.formats.ext4.reader import Ext4Reader
from lcow.formats.source import BytesSource, open_source
from lcow.layerdiff.changes import (
    LayerContent,
    MergedView,
    change_size,
    overlay_changes,
    own_diff_size,
    tree_changes,
)
from tests.helpers import TarEntry, ensure, tool, write_tar

SECOND = 1.0
OUTPUT_CAP = 16 << 20


class _Capped(Exception):
    """The export produced more than OUTPUT_CAP bytes: a (possibly huge) valid file."""


def _capped_sink() -> Callable[[bytes], None]:
    written = 0

    def write(data: bytes) -> None:
        nonlocal written
        written += len(data)
        if written > OUTPUT_CAP:
            raise _Capped

    return write


# -- base images ------------------------------------------------------------------------------


def _writer_image(tmp: Path) -> bytes:
    entries = [
        TarEntry("d", kind="dir"),
        TarEntry("d/e", kind="dir"),
        TarEntry("d/e/f", data=b"in e" * 100),
        TarEntry("d/.wh.gone"),
        TarEntry("opq", kind="dir"),
        TarEntry("opq/.wh..wh..opq"),
        TarEntry("opq/x", data=b"x"),
        TarEntry("small", data=b"small", xattrs={"user.a": b"1", "security.capability": b"c" * 20}),
        TarEntry("big-xattr", data=b"b", xattrs={"user.big": b"B" * 2000}),
        TarEntry("sym", kind="symlink", target="small"),
        TarEntry("longsym", kind="symlink", target="L" * 300),
        TarEntry("link", kind="hardlink", target="small"),
        TarEntry("dev", kind="chr", major=1, minor=3),
        TarEntry(
            "frag",  # more extents than fit the inode: an index block and a leaf
            kind="sparse",
            size=64 * 8192,
            sparse=[(i * 8192, bytes([i + 1]) * 4096) for i in range(64)],
        ),
        *(TarEntry(f"many/{i:02d}", data=b"m" * i) for i in range(40)),
    ]
    tar = write_tar(tmp / "base.tar", entries)
    image = tmp / "base.img"
    tar2ext4(tar, image, ConvertOptions(convert_whiteouts=True))
    return image.read_bytes()


def _mke2fs_image(tmp: Path) -> bytes:
    ensure("mke2fs")
    src = tmp / "tree"
    (src / "d" / "e").mkdir(parents=True)
    (src / "d" / "e" / "f").write_bytes(b"in e")
    (src / "small").write_bytes(b"small")
    (src / "inl").write_bytes(b"i" * 100)
    with open(src / "frag", "wb") as fh:  # 200 extents: an index block and leaves
        for i in range(200):
            fh.seek(i * 2048)
            fh.write(b"%04d" % i * 256)
    os.symlink("short", src / "sym")
    os.symlink("L" * 300, src / "longsym")
    os.setxattr(src / "small", "user.a", b"1")
    for i in range(30):
        (src / "d" / f"n{i:02d}").write_bytes(b"")
    image = tmp / "base.img"
    mke2fs = tool("mke2fs")
    assert mke2fs is not None
    subprocess.run(
        [mke2fs, "-q", "-F", "-t", "ext4", "-b", "1024", "-O", "^has_journal,inline_data",
         "-N", "96", "-d", src, image, "2M"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return image.read_bytes()


BASES: dict[str, Callable[[Path], bytes]] = {"writer": _writer_image, "mke2fs": _mke2fs_image}


@pytest.fixture(params=sorted(BASES))
def base(request: pytest.FixtureRequest, tmp_path: Path) -> bytes:
    return BASES[request.param](tmp_path)


@pytest.fixture
def lower(tmp_path: Path) -> Ext4Reader:
    """A small healthy layer to compute changes against."""
    tar = write_tar(tmp_path / "lower.tar", [TarEntry("d", kind="dir"), TarEntry("small")])
    image = tmp_path / "lower.img"
    tar2ext4(tar, image, ConvertOptions(convert_whiteouts=True))
    return Ext4Reader(BytesSource(image.read_bytes()))


# -- running the operations -------------------------------------------------------------------


def _open(data: bytes | bytearray, path: Path | None) -> Ext4Reader:
    if path is None:
        return Ext4Reader(BytesSource(bytes(data)))
    path.write_bytes(data)
    source = open_source(path)
    try:
        return Ext4Reader(source, close_source=True)
    except BaseException:
        source.close()
        raise


def _operations(lower: Ext4Reader) -> dict[str, Callable[[Ext4Reader], object]]:
    below = LayerContent(lower)

    def export(reader: Ext4Reader) -> object:
        try:
            return export_layer(reader, _capped_sink())
        except _Capped:
            return "capped"

    def overlay(reader: Ext4Reader) -> object:
        return overlay_changes(LayerContent(reader), MergedView.build([below]))

    def tree(reader: Ext4Reader) -> object:
        view = MergedView.build([LayerContent(reader), below])
        return change_size(view, tree_changes(view, MergedView.build([below])))

    def size(reader: Ext4Reader) -> object:
        return own_diff_size(LayerContent(reader))

    return {"export": export, "overlay": overlay, "tree": tree, "size": size}


def run_all(data: bytes | bytearray, lower: Ext4Reader, path: Path | None = None) -> dict[str, str]:
    """Run every operation; ``name -> "ok" | error class``. Each must take under a second and
    fail only with an LcowError."""
    outcomes = {}
    for name, op in _operations(lower).items():
        start = time.monotonic()
        try:
            reader = _open(data, path)
        except LcowError as exc:
            outcomes[name] = type(exc).__name__
            continue
        try:
            op(reader)
            outcomes[name] = "ok"
        except LcowError as exc:
            outcomes[name] = type(exc).__name__
        finally:
            reader.close()
        elapsed = time.monotonic() - start
        assert elapsed < SECOND, f"{name} took {elapsed:.2f} s"
    return outcomes


# -- locating structures ------------------------------------------------------------------------


def _inode_offset(reader: Ext4Reader, ino: int) -> int:
    sb = reader.superblock
    group, index = divmod(ino - 1, sb.s_inodes_per_group)
    return reader.group_desc(group).bg_inode_table * reader.block_size + index * sb.s_inode_size


def _metadata_ranges(data: bytes) -> list[tuple[int, int]]:
    reader = Ext4Reader(BytesSource(data))
    bs = reader.block_size
    gdt = 2 * bs if bs == 1024 else bs
    ranges = [(1024, 2048), (gdt, gdt + bs)]
    isz = reader.superblock.s_inode_size
    for e in reader.walk():
        off = _inode_offset(reader, e.ino)
        ranges.append((off, off + isz))
        if e.inode.file_acl:
            ranges.append((e.inode.file_acl * bs, (e.inode.file_acl + 1) * bs))
        if stat.S_ISDIR(e.mode) or (e.inode.has_extents and e.inode.i_block[6:8] != b"\0\0"):
            runs = reader.data_runs(e.inode) if stat.S_ISDIR(e.mode) else ()
            for run in runs:
                if run.physical is not None:
                    ranges.append((run.physical * bs, (run.physical + run.length) * bs))
            if e.inode.has_extents and e.inode.i_block[6:8] != b"\0\0":
                for i in range(struct.unpack_from("<H", e.inode.i_block, 2)[0]):
                    leaf = struct.unpack_from("<I", e.inode.i_block, 16 + 12 * i)[0]
                    ranges.append((leaf * bs, leaf * bs + 256))
    return ranges


def _dirent_offset(data: bytes, reader: Ext4Reader, directory: bytes, name: bytes) -> int:
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


# -- the tests --------------------------------------------------------------------------------


def test_base_images_are_healthy(base: bytes, lower: Ext4Reader) -> None:
    assert set(run_all(base, lower).values()) == {"ok"}


@pytest.mark.timeout(300)
def test_bit_flips_end_in_lcow_errors(base: bytes, lower: Ext4Reader, tmp_path: Path) -> None:
    ranges = _metadata_ranges(base)
    rng = random.Random(20261127)
    errors = 0
    for case in range(150):
        data = bytearray(base)
        for _ in range(rng.randint(1, 10)):
            lo, hi = rng.choice(ranges)
            pos = rng.randrange(lo, hi)
            data[pos] ^= 1 << rng.randrange(8)
        outcomes = run_all(data, lower, tmp_path / "case.img" if case % 3 == 0 else None)
        errors += sum(v != "ok" for v in outcomes.values())
    assert errors > 50


@pytest.mark.timeout(120)
def test_truncated_images_fail(base: bytes, lower: Ext4Reader, tmp_path: Path) -> None:
    for i, cut in enumerate((0, 1, 1024, 2047, 2048, 4096, len(base) // 3, len(base) - 1)):
        path = tmp_path / "cut.img" if i % 2 else None
        outcomes = run_all(base[:cut], lower, path)
        assert "ok" not in outcomes.values(), (cut, outcomes)


def test_directory_loops_fail(base: bytes, lower: Ext4Reader) -> None:
    reader = Ext4Reader(BytesSource(base))
    d_ino = reader.lookup(b"/d").ino
    for target in (d_ino, 2):  # /d/e is /d again; /d/e is the root
        data = bytearray(base)
        struct.pack_into("<I", data, _dirent_offset(base, reader, b"/d", b"e"), target)
        outcomes = run_all(data, lower)
        assert set(outcomes.values()) == {"CorruptImage"}, outcomes


def test_shared_directory_block_fails(base: bytes, lower: Ext4Reader) -> None:
    reader = Ext4Reader(BytesSource(base))
    d = reader.lookup(b"/d")
    e = reader.lookup(b"/d/e")
    off = _inode_offset(reader, e.ino)
    data = bytearray(base)
    data[off + 0x28 : off + 0x64] = d.i_block  # /d/e's blocks are /d's
    struct.pack_into("<I", data, off + 0x20, d.flags)
    struct.pack_into("<I", data, off + 4, d.size)
    outcomes = run_all(data, lower)
    assert set(outcomes.values()) == {"CorruptImage"}, outcomes


def test_extent_loop_fails(base: bytes, lower: Ext4Reader) -> None:
    reader = Ext4Reader(BytesSource(base))
    frag = reader.lookup(b"/frag")
    assert frag.has_extents and frag.i_block[6:8] != b"\0\0", "frag needs an extent index"
    leaf = struct.unpack_from("<I", frag.i_block, 16)[0]
    bs = reader.block_size
    data = bytearray(base)
    # The leaf turns into an index node of depth 1 pointing at itself.
    struct.pack_into("<HHHHI", data, leaf * bs, 0xF30A, 1, (bs - 12) // 12, 1, 0)
    struct.pack_into("<IIHH", data, leaf * bs + 12, 0, leaf, 0, 0)
    outcomes = run_all(data, lower)
    # Only the export reads file data; the metadata operations never open the extent tree.
    assert outcomes["export"] == "CorruptImage"
    assert all(isinstance(v, str) for v in outcomes.values())


def test_huge_sizes(base: bytes, lower: Ext4Reader) -> None:
    reader = Ext4Reader(BytesSource(base))
    small = _inode_offset(reader, reader.lookup(b"/small").ino)
    data = bytearray(base)
    struct.pack_into("<I", data, small + 0x6C, 1 << 31)  # 2^63 bytes
    outcomes = run_all(data, lower)
    assert outcomes["export"] == "CorruptImage"
    d = _inode_offset(reader, reader.lookup(b"/d").ino)
    data = bytearray(base)
    struct.pack_into("<I", data, d + 0x6C, 1 << 10)  # a 4 TiB directory
    outcomes = run_all(data, lower)
    assert "ok" not in outcomes.values(), outcomes


def test_export_errors_name_the_image(base: bytes) -> None:
    data = base[: len(base) // 2]
    with pytest.raises(CorruptImage) as info:
        export_layer(Ext4Reader(BytesSource(data, name="layer.vhd")), _capped_sink())
    assert "layer.vhd" in str(info.value)
