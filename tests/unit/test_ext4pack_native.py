"""The C packer ``lcow._ext4pack`` against the pure-Python writer it accelerates.

Every image here is built twice, once with the C module and once with the writer's reference to
it set to ``None`` (the pure-Python path), and the two must be byte-identical: on tars with every
file type, hard links, xattrs in the inode and in a block, inline data, sparse files with deep
extent trees, times outside 1970..2038, big owners and multi-block directories, on trees built
directly (several block groups, files mapped by one to four extents or a deeper tree, clamped
times), and on random layers (Hypothesis). ``e2fsck -fn`` checks native images too.

The tests import the module directly, so they also run under ``LCOW_NATIVE=0``; they skip when
it is not built, and fail when ``CI=true`` (CI must prove the accelerator builds).
"""

from __future__ import annotations

import importlib
import os
import stat
import subprocess
import sys
import tempfile
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lcow import ConvertOptions, tar2ext4
from lcow._util import native
from lcow.formats.ext4 import writer
from lcow.formats.ext4.dirents import pack_directory
from lcow.formats.ext4.inodes import pack_inode_into
from lcow.formats.ext4.layout import BLOCK_SIZE, INODE_SIZE, ROOT_INO, FileType
from lcow.formats.ext4.tree import TIME_BIAS, Tree
from lcow.formats.ext4.writer import Ext4Writer
from tests.helpers import TarEntry, assert_e2fsck_clean, in_ci, missing, write_tar
from tests.property.strategies import layer_entries

_NS = 10**9
_EXTENT = 32768  # blocks one extent maps
_HYPOTHESIS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}


def _ext4pack() -> ModuleType:
    """The C module, whatever ``LCOW_NATIVE`` says; skips (fails under CI) when not built."""
    try:
        return importlib.import_module("lcow._ext4pack")
    except ImportError as exc:
        missing(f"lcow._ext4pack is not built: {exc}")


@pytest.fixture
def ext4pack() -> ModuleType:
    return _ext4pack()


# --------------------------------------------------------------------------------------------
# the switch


def test_accelerator_is_built_in_ci() -> None:
    """Under ``CI=true`` the extension must have been built, and ``load`` must return it unless
    ``LCOW_NATIVE=0`` turned native code off."""
    if not in_ci():
        pytest.skip("only checked when CI=true")
    importlib.import_module("lcow._ext4pack")
    loaded = native.load("_ext4pack")
    if os.environ.get("LCOW_NATIVE") == "0":
        assert loaded is None
    else:
        assert loaded is not None


def test_load_honours_lcow_native(monkeypatch: pytest.MonkeyPatch, ext4pack: ModuleType) -> None:
    monkeypatch.setenv("LCOW_NATIVE", "0")
    assert native.load("_ext4pack") is None
    monkeypatch.setenv("LCOW_NATIVE", "1")
    assert native.load("_ext4pack") is ext4pack
    monkeypatch.delenv("LCOW_NATIVE")
    assert native.load("_ext4pack") is ext4pack
    assert native.load("_no_such_module") is None


def test_lcow_native_0_in_a_subprocess_gives_the_same_image(
    tmp_path: Path, ext4pack: ModuleType
) -> None:
    """The environment switch end to end: a fresh interpreter with ``LCOW_NATIVE=0`` uses the
    Python packer and writes the image the C packer writes."""
    tar = write_tar(tmp_path / "layer.tar", _every_type())
    script = (
        "import sys\n"
        "from lcow import tar2ext4\n"
        "from lcow.formats.ext4 import writer\n"
        "assert writer._ext4pack is None\n"
        "tar2ext4(sys.argv[1], sys.argv[2])\n"
    )
    env = {**os.environ, "LCOW_NATIVE": "0"}
    python_image = tmp_path / "python.img"
    subprocess.run([sys.executable, "-c", script, tar, python_image], check=True, env=env)
    native_image = _convert(tar, tmp_path / "native.img", ConvertOptions(), ext4pack)
    _assert_same(native_image, python_image)


# --------------------------------------------------------------------------------------------
# whole images from tars


def _convert(tar: Path, dst: Path, options: ConvertOptions, module: ModuleType | None) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(writer, "_ext4pack", module)
        tar2ext4(tar, dst, options)
    return dst


def _both(
    entries: list[TarEntry], work: Path, module: ModuleType, options: ConvertOptions | None = None
) -> Path:
    """Convert ``entries`` with and without the C packer; assert the images are identical and
    return the native one."""
    options = options or ConvertOptions()
    tar = write_tar(work / "layer.tar", entries)
    native_image = _convert(tar, work / "native.img", options, module)
    python_image = _convert(tar, work / "python.img", options, None)
    _assert_same(native_image, python_image)
    return native_image


def _data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """``[start, end)`` of the parts of a file that are not holes."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        pos = end


def _assert_same(a: Path, b: Path) -> None:
    """Same size and bytes (holes read as zeros; only written parts of sparse images are read)."""
    size = a.stat().st_size
    assert b.stat().st_size == size
    with open(a, "rb") as fa, open(b, "rb") as fb:
        ranges = sorted({*_data_ranges(fa.fileno(), size), *_data_ranges(fb.fileno(), size)})
        for start, end in ranges:
            left = os.pread(fa.fileno(), end - start, start)
            right = os.pread(fb.fileno(), end - start, start)
            if left != right:
                at = start + next(
                    i for i, (x, y) in enumerate(zip(left, right, strict=True)) if x != y
                )
                pytest.fail(f"images differ at byte {at} (block {at // BLOCK_SIZE}): {a} {b}")


def _every_type() -> list[TarEntry]:
    return [
        TarEntry("d", kind="dir", mode=0o755),
        TarEntry("d/sticky", kind="dir", mode=0o1777),
        TarEntry("d/f", data=b"hello\n", mode=0o640),
        TarEntry("empty"),
        TarEntry("setuid", data=b"#!/bin/sh\n", mode=0o4755),
        TarEntry("block", data=b"b" * BLOCK_SIZE),
        TarEntry("blocks", data=b"x" * (3 * BLOCK_SIZE + 1)),
        TarEntry("d/fast", kind="symlink", target="f"),
        TarEntry("slow", kind="symlink", target="t" * 100),
        TarEntry("slowest", kind="symlink", target="/".join(["p" * 200] * 20)),
        TarEntry("fifo", kind="fifo", mode=0o600),
        TarEntry("null", kind="chr", major=1, minor=3, mode=0o666),
        TarEntry("sda", kind="blk", major=8, minor=0x12345, mode=0o660),
        TarEntry("whiteout", kind="chr"),
        TarEntry("d/hard", kind="hardlink", target="d/f"),
        TarEntry("hard2", kind="hardlink", target="d/f"),
        TarEntry("fifo-link", kind="hardlink", target="fifo"),
        TarEntry("symlink-link", kind="hardlink", target="slow"),
        TarEntry(
            "holes", kind="sparse", size=10 * BLOCK_SIZE, sparse=[(5 * BLOCK_SIZE, b"s" * 512)]
        ),
        TarEntry("d/.wh.gone"),
        TarEntry("opaque/.wh..wh..opq"),
        TarEntry("d/f", data=b"replaced, the first copy's blocks are freed\n"),
        TarEntry("d/sticky", kind="dir", mode=0o1755),  # metadata update of an existing dir
    ]


@pytest.mark.parametrize(
    "options",
    [
        ConvertOptions(),
        ConvertOptions(inline_data=True),
        ConvertOptions(convert_whiteouts=True, inline_data=True),
    ],
    ids=["plain", "inline", "overlay-inline"],
)
def test_every_file_type(tmp_path: Path, ext4pack: ModuleType, options: ConvertOptions) -> None:
    image = _both(_every_type(), tmp_path, ext4pack, options)
    assert_e2fsck_clean(image)


def test_xattrs_in_inode_and_block(tmp_path: Path, ext4pack: ModuleType) -> None:
    entries = [
        TarEntry("small", data=b"1", xattrs={"user.a": b"1"}),
        TarEntry("d", kind="dir", xattrs={"trusted.overlay.opaque": b"y"}),
        TarEntry("big", data=b"2" * 5000, xattrs={"user.big": b"v" * 3000, "user.s": b""}),
        TarEntry("d/bigdir", kind="dir", xattrs={"security.x": b"w" * 2000}),
        TarEntry("inline", data=b"tiny", xattrs={"user.k": b"v" * 90}),
        TarEntry("inline2", data=b"t" * 100),
    ]
    for options in (ConvertOptions(), ConvertOptions(inline_data=True)):
        work = tmp_path / str(options.inline_data)
        work.mkdir()
        assert_e2fsck_clean(_both(entries, work, ext4pack, options))


def _segments(count: int) -> list[tuple[int, bytes]]:
    """One 512-byte segment every other block: one extent each."""
    return [(2 * i * BLOCK_SIZE, bytes([i % 251 + 1]) * 512) for i in range(count)]


def test_sparse_files_and_deep_extent_trees(tmp_path: Path, ext4pack: ModuleType) -> None:
    entries = [
        TarEntry(f"sparse-{n}", kind="sparse", size=2 * n * BLOCK_SIZE + 7, sparse=_segments(n))
        for n in (1, 4, 5, 340, 1400)  # in-inode, full root, depth 1, full leaf, depth 2
    ]
    entries.append(TarEntry("all-hole", kind="sparse", size=1 << 30, sparse=[]))
    assert_e2fsck_clean(_both(entries, tmp_path, ext4pack))


def _pax_time(ns: int) -> str:
    sign = "-" if ns < 0 else ""
    seconds, nanos = divmod(abs(ns), _NS)
    return f"{sign}{seconds}.{nanos:09d}"


def test_times_before_1970_and_after_2038(tmp_path: Path, ext4pack: ModuleType) -> None:
    times = [
        -(2**31) * _NS,  # ext4's first second
        -(2**32) * _NS,  # clamped by the reader
        -1_500_000_000,
        -1,
        0,
        (2**31 - 1) * _NS + 999_999_999,
        2**31 * _NS,
        2**32 * _NS + 123,
        (2**33 + 5) * _NS + 7,
        0x3_7FFF_FFFF * _NS + 999_999_999,  # ext4's last ns
        2**70,  # clamped by the reader
    ]
    entries = []
    for i, t in enumerate(times):
        pax = {"atime": _pax_time(times[-1 - i]), "ctime": _pax_time(times[(i + 3) % len(times)])}
        entries.append(TarEntry(f"f{i}", data=b"x", mtime_ns=t, pax=pax))
        entries.append(TarEntry(f"d{i}", kind="dir", mtime_ns=t, pax=pax))
        entries.append(TarEntry(f"p{i}", kind="fifo", mtime_ns=t))
    _both(entries, tmp_path, ext4pack)


def test_owners_beyond_16_bits(tmp_path: Path, ext4pack: ModuleType) -> None:
    ids = [0, 1, 65534, 65535, 65536, 70000, 2**31, 2**32 - 2, 2**32 - 1]
    entries = []
    for i, uid in enumerate(ids):
        gid = ids[-1 - i]
        entries.append(TarEntry(f"f{i}", data=b"x", uid=uid, gid=gid))
        entries.append(TarEntry(f"d{i}", kind="dir", uid=uid, gid=gid))
        entries.append(TarEntry(f"p{i}", kind="fifo", uid=uid, gid=gid))
    _both(entries, tmp_path, ext4pack)


def test_multi_block_directories(tmp_path: Path, ext4pack: ModuleType) -> None:
    entries = [TarEntry("big", kind="dir")]
    for i in range(900):  # names of 1..255 bytes: every rec_len, blocks end at varying places
        name = f"{i:04d}".ljust(1 + (i * 37) % 255, "n")
        kind = ["file", "dir", "fifo", "symlink", "chr"][i % 5]
        entries.append(TarEntry(f"big/{name}", kind=kind, target="x"))
    entries += [TarEntry(f"subdirs/{i}", kind="dir") for i in range(300)]  # links = 302
    assert_e2fsck_clean(_both(entries, tmp_path, ext4pack))


@settings(max_examples=40, **_HYPOTHESIS)  # type: ignore[arg-type]
@given(
    layer=st.booleans().flatmap(lambda w: st.tuples(st.just(w), layer_entries(whiteouts=w))),
    inline=st.booleans(),
)
def test_random_layers(layer: tuple[bool, list[TarEntry]], inline: bool) -> None:
    overlay, entries = layer
    options = ConvertOptions(convert_whiteouts=overlay, inline_data=inline)
    with tempfile.TemporaryDirectory(prefix="lcow-ext4pack-") as tmp:
        _both(entries, Path(tmp), _ext4pack(), options)


# --------------------------------------------------------------------------------------------
# whole images from trees built directly


def _build_big_tree(w: Ext4Writer) -> None:
    """40,000 inodes (two groups' worth) and files mapping up to 2 GiB (16 groups of blocks),
    allocated but never written, so the image stays sparse."""
    tree = w.tree
    mtime = 1_700_000_000 * _NS
    d = tree.new_inode(stat.S_IFDIR | 0o755, 1000, 1000, mtime)
    tree.place(ROOT_INO, b"many", d, "many")
    for i in range(40_000):
        ino = tree.new_inode(stat.S_IFREG | 0o644, i * 7919, 2**32 - 1 - i, mtime + i)
        tree.place(d, b"f%d" % i, ino, "f")
        if i % 3 == 0:
            w.file_runs(ino, i % 9000, "f")
        if i % 1000 == 1:
            tree.link(ROOT_INO, b"link%d" % i, ino, "link")
    for blocks in (_EXTENT, _EXTENT + 1, 3 * _EXTENT + 5, 4 * _EXTENT, 4 * _EXTENT + 1):
        ino = tree.new_inode(stat.S_IFREG | 0o600, 0, 0, mtime)
        tree.place(ROOT_INO, b"long%d" % blocks, ino, "long")
        w.file_runs(ino, blocks * BLOCK_SIZE - 1, "long")
    for mode in (stat.S_IFSOCK | 0o777, stat.S_IFCHR, stat.S_IFBLK | 0o600, stat.S_IFIFO):
        ino = tree.new_inode(mode, 5, 6, mtime)  # devices without rdev: number 0
        tree.place(ROOT_INO, b"special%o" % mode, ino, "special")
    latest = 2**64 - 1 - TIME_BIAS  # past ext4's last second: clamped
    for n, t in enumerate((-(2**31) * _NS, -1, 2**33 * _NS + 5, latest)):
        ino = tree.new_inode(stat.S_IFREG | 0o644, 0, 0, t, latest - n, t - n)
        tree.place(ROOT_INO, b"time%d" % n, ino, "time")
    ino = tree.new_inode(stat.S_IFREG | 0o644, 0, 0, mtime)
    tree.place(ROOT_INO, b"big-size", ino, "big-size")
    w.file_runs(ino, 5 << 30, "big-size")  # i_size_high; 1.25 Mi blocks: a deep tree too


def _write_tree(path: Path, build: Callable[[Ext4Writer], None], module: ModuleType | None) -> Path:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(writer, "_ext4pack", module)
            w = Ext4Writer(fd, max_size=16 << 30)
            try:
                build(w)
                stats = w.close()
            finally:
                w.out.discard()
    finally:
        os.close(fd)
    assert stats.groups > 2
    return path


def test_several_block_groups_and_long_files(tmp_path: Path, ext4pack: ModuleType) -> None:
    native_image = _write_tree(tmp_path / "native.img", _build_big_tree, ext4pack)
    python_image = _write_tree(tmp_path / "python.img", _build_big_tree, None)
    _assert_same(native_image, python_image)
    assert_e2fsck_clean(native_image)


# --------------------------------------------------------------------------------------------
# the functions themselves


_FTYPES = {
    stat.S_IFREG: FileType.REG_FILE,
    stat.S_IFDIR: FileType.DIR,
    stat.S_IFCHR: FileType.CHRDEV,
    stat.S_IFBLK: FileType.BLKDEV,
    stat.S_IFIFO: FileType.FIFO,
    stat.S_IFSOCK: FileType.SOCK,
    stat.S_IFLNK: FileType.SYMLINK,
}


@settings(max_examples=200, **_HYPOTHESIS)  # type: ignore[arg-type]
@given(
    children=st.dictionaries(
        st.binary(min_size=1, max_size=255), st.sampled_from(sorted(_FTYPES)), max_size=200
    ),
    ino=st.integers(1, 2**32 - 1),
    parent=st.integers(1, 2**32 - 1),
)
def test_pack_dir_matches_pack_directory(children: dict[bytes, int], ino: int, parent: int) -> None:
    # Child inode numbers index a small mode array; the real numbers only go in the entries.
    mode = array("H", [0])
    by_name = {}
    entries = [(ino, FileType.DIR, b"."), (parent, FileType.DIR, b"..")]
    for name, fmt in children.items():
        by_name[name] = len(mode)
        entries.append((len(mode), _FTYPES[fmt], name))
        mode.append(fmt | 0o644)
    assert _ext4pack().pack_dir(ino, parent, by_name, mode) == pack_directory(entries)


def test_pack_dir_rejects_what_python_rejects(ext4pack: ModuleType) -> None:
    mode = array("H", [0, stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, 0, 0o170000])
    with pytest.raises(KeyError):
        ext4pack.pack_dir(1, 1, {b"free": 3}, mode)  # mode 0: no file type
    with pytest.raises(KeyError):
        ext4pack.pack_dir(1, 1, {b"odd": 4}, mode)
    with pytest.raises(IndexError):
        ext4pack.pack_dir(1, 1, {b"far": 5}, mode)
    with pytest.raises(ValueError, match="too long"):
        ext4pack.pack_dir(1, 1, {b"n" * 256: 2}, mode)
    with pytest.raises(TypeError):
        ext4pack.pack_dir(1, 1, {"str": 2}, mode)
    with pytest.raises(OverflowError):
        ext4pack.pack_dir(1, 1, {b"neg": -1}, mode)
    with pytest.raises(TypeError):
        ext4pack.pack_dir(1, 1, {b"f": 2}, array("I", [0, 0, 0]))
    assert len(ext4pack.pack_dir(1, 1, {b"f": 2}, mode)) == BLOCK_SIZE


_FORMATS = [
    stat.S_IFREG,
    stat.S_IFDIR,
    stat.S_IFIFO,
    stat.S_IFSOCK,
    stat.S_IFCHR,
    stat.S_IFBLK,
    stat.S_IFLNK,
]
_rows = st.lists(
    st.tuples(
        st.sampled_from([*_FORMATS, 0]),  # 0: a free inode
        st.integers(0, 0o7777),
        st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),  # uid, gid
        st.tuples(*[st.integers(0, 2**64 - 1)] * 3),  # biased mtime, atime, ctime
        st.integers(0, 2**64 - 1),  # size
        st.sampled_from([0, 1, 7, _EXTENT, _EXTENT + 1, 4 * _EXTENT, 4 * _EXTENT + 1]),
        st.integers(0, 2**32 - 1),  # start
        st.sampled_from([0, 1, 2, 65533, 65534, 65535, 65536]),  # links
        st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 3)),  # xattr block, extra blocks
    ),
    max_size=80,
)


@settings(max_examples=200, **_HYPOTHESIS)  # type: ignore[arg-type]
@given(rows=_rows, ipg=st.sampled_from([16, 32, 48]), first_chunk=st.integers(1, 40))
def test_pack_inodes_matches_pack_inode_into(
    rows: list[
        tuple[int, int, tuple[int, int], tuple[int, int, int], int, int, int, int, tuple[int, int]]
    ],
    ipg: int,
    first_chunk: int,
) -> None:
    with tempfile.TemporaryFile() as scratch:  # a writer for its Python accounting
        fallback = Ext4Writer(scratch.fileno(), max_size=1 << 30)
    tree = fallback.tree
    xattr_block, extra_blocks = array("I", [0] * 12), array("I", [0] * 12)
    for fmt, perm, (uid, gid), times, size, nblocks, start, links, (xblock, extra) in rows:
        ino = tree.new_inode(fmt | perm if fmt else 0, uid, gid, 0)
        tree.mtime[ino], tree.atime[ino], tree.ctime[ino] = times
        tree.size[ino], tree.nblocks[ino], tree.start[ino] = size, nblocks, start
        tree.links[ino] = links
        xattr_block.append(xblock)
        extra_blocks.append(extra)
    count = tree.count
    groups = (count - 1) // ipg + 1
    special = bytearray(count + 1)
    special[ROOT_INO] = 1  # left to Python like any flagged inode
    columns = (
        *(tree.mode, tree.uid, tree.gid, tree.links, tree.size),
        *(tree.mtime, tree.atime, tree.ctime, tree.start, tree.nblocks),
        *(xattr_block, extra_blocks),
    )
    # C: the table in two chunks, split at an arbitrary inode.
    split = min(first_chunk, count + 1)
    table = bytearray(count * INODE_SIZE)
    dirs, free = array("I", [0] * groups), array("I", [ipg] * groups)
    bitmaps = bytearray(groups * BLOCK_SIZE)
    left: list[int] = []
    for first, last in ((1, split), (split, count + 1)):
        chunk = bytearray((last - first) * INODE_SIZE)
        left += _ext4pack().pack_inodes(
            chunk, first, last, ipg, columns, special, dirs, free, bitmaps
        )
        table[(first - 1) * INODE_SIZE : (last - 1) * INODE_SIZE] = chunk
    # Python: the accounting of the writer's fallback, and pack_inode_into per packed inode.
    py_dirs, py_free = array("I", [0] * groups), array("I", [ipg] * groups)
    py_bitmaps = bytearray(groups * BLOCK_SIZE)
    live = fallback._account_inodes(1, count + 1, ipg, py_dirs, py_free, py_bitmaps)
    assert (dirs, free, bitmaps) == (py_dirs, py_free, py_bitmaps)

    def declined(ino: int) -> bool:
        fmt = stat.S_IFMT(tree.mode[ino])
        links = tree.links[ino] + (2 if fmt == stat.S_IFDIR else 0)
        return (
            special[ino] == 1
            or fmt == stat.S_IFLNK
            or links > 0xFFFF
            or tree.nblocks[ino] > (4 * _EXTENT if fmt in (stat.S_IFREG, stat.S_IFDIR) else 0)
        )

    assert left == [ino for ino in live if declined(ino)]
    expected = bytearray(count * INODE_SIZE)
    for ino in live:
        if ino not in left:
            at = (ino - 1) * INODE_SIZE
            pack_inode_into(
                expected, at, tree, ino, None, None, xattr_block[ino], extra_blocks[ino]
            )
    assert table == expected


def test_pack_inodes_checks_its_arguments(ext4pack: ModuleType) -> None:
    tree = Tree(lambda runs: None)
    n = tree.count + 1
    columns = (
        *(tree.mode, tree.uid, tree.gid, tree.links, tree.size),
        *(tree.mtime, tree.atime, tree.ctime, tree.start, tree.nblocks),
        *(array("I", [0] * n), array("I", [0] * n)),
    )
    dirs, free, bitmaps = array("I", [0]), array("I", [16]), bytearray(BLOCK_SIZE)
    table = bytearray((n - 1) * INODE_SIZE)
    args = (table, 1, n, 16, columns, bytes(n), dirs, free, bitmaps)
    assert ext4pack.pack_inodes(*args) == []  # the root and lost+found are plain directories
    assert free[0] == 16 - (n - 1) and dirs[0] == 2
    bad: list[tuple[object, ...]] = [
        (bytearray(10), *args[1:]),  # table too short
        (bytes(len(table)), *args[1:]),  # read-only table
        (*args[:1], 0, *args[2:]),  # inode 0 is not in the table
        (*args[:3], 0, *args[4:]),  # no inodes per group
        (*args[:4], columns[:-1], *args[5:]),  # a column missing
        (*args[:4], (array("L", tree.mode), *columns[1:]), *args[5:]),  # wrong item type
        (*args[:4], (tree.mode[:3], *columns[1:]), *args[5:]),  # column too short
        (*args[:5], bytes(3), *args[6:]),  # special mask too short
        (*args[:6], array("I"), *args[7:]),  # no group counters
        (*args[:8], bytearray(100)),  # no bitmap block
    ]
    for call in bad:
        with pytest.raises((TypeError, ValueError, BufferError)):
            ext4pack.pack_inodes(*call)
