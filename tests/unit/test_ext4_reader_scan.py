"""The reader's lean metadata scan (what Changes and DiffSize use) against its full walk (issue 3).

:meth:`Ext4Reader.scan`, :meth:`Ext4Reader.content_size` and :meth:`Ext4Reader.children` have a
fast path (bulk inode-table reads, a partial inode decode, directories listed without
``DirEntry`` objects) and a checked path (128-byte inodes, inline directories, checksums,
anything odd). Both must agree with :meth:`Ext4Reader.walk` on every image kind: lcow's writer
(with and without inline data) and ``mke2fs -d`` with 128- and 256-byte inodes, ``inline_data``
and ``metadata_csum`` (skipped without e2fsprogs, failed when ``CI=true``).
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from lcow import ConvertOptions, tar2ext4
from lcow.errors import NotFound
from lcow.formats.ext4.reader import Ext4Reader, ScanEntry
from tests.helpers import TarEntry, ensure, tool, write_tar

NS = 1_000_000_000
CAP = bytes.fromhex("0100000200040000000000000000000000000000")
OPAQUE = b"trusted.overlay.opaque"


def _entries() -> list[TarEntry]:
    out = [
        TarEntry("dir", kind="dir", mode=0o750, uid=70000, gid=5, mtime_ns=-3 * NS - 7),
        TarEntry("dir/file", data=b"hello", mtime_ns=(2**32 + 7) * NS + 9),
        TarEntry("dir/big", data=b"b" * 70000, uid=3_000_000_000),
        TarEntry("dir/.wh.gone", uid=4, gid=5, mtime_ns=12 * NS),
        TarEntry("opq", kind="dir", xattrs={"user.u": b"1"}),
        TarEntry("opq/.wh..wh..opq"),
        TarEntry("opq/in", data=b"i" * 30),
        TarEntry("capped", data=b"elf", mode=0o755, xattrs={"security.capability": CAP}),
        TarEntry("xattr-only", data=b"x", xattrs={"user.big": b"v" * 3000}),
        TarEntry("sym", kind="symlink", target="dir/file"),
        TarEntry("slow-sym", kind="symlink", target="t" * 200),
        TarEntry("link", kind="hardlink", target="dir/file"),
        TarEntry("fifo", kind="fifo"),
        TarEntry("chr", kind="chr", major=300, minor=70000),
        TarEntry("blk", kind="blk", major=8, minor=1),
        TarEntry("sparse", kind="sparse", size=10 << 20, sparse=[(4 << 20, b"s" * 100)]),
        TarEntry("wide", kind="dir"),
    ]
    out += [TarEntry(f"wide/{i:04d}-" + "n" * 40, data=b"w" * (i % 3)) for i in range(300)]
    return out


def _writer(tmp: Path, inline: bool) -> Path:
    tar = write_tar(tmp / "layer.tar", _entries())
    image = tmp / "layer.vhd"
    tar2ext4(
        tar, image, ConvertOptions(convert_whiteouts=True, vhd_footer=True, inline_data=inline)
    )
    return image


def _mke2fs(tmp: Path, args: list[str]) -> Path:
    ensure("mke2fs")
    src = tmp / "tree"
    src.mkdir()
    (src / "dir" / "sub").mkdir(parents=True)
    (src / "dir" / "file").write_bytes(b"hello")
    (src / "dir" / "sub" / "deep").write_bytes(b"d" * 5000)
    (src / "tiny").mkdir()
    (src / "tiny" / "one").write_bytes(b"1")
    (src / "wide").mkdir()
    for i in range(300):
        (src / "wide" / f"{i:04d}-{'n' * 40}").write_bytes(b"w" * (i % 3))
    os.symlink("dir/file", src / "sym")
    os.link(src / "dir" / "file", src / "link")
    os.mkfifo(src / "fifo")
    os.utime(src / "dir" / "file", ns=(5 * NS, 7 * NS + 11))
    image = tmp / "mke2fs.img"
    mke2fs = tool("mke2fs")
    assert mke2fs is not None
    subprocess.run(
        [mke2fs, "-q", "-F", *args, "-d", src, image, "16M"], check=True, capture_output=True
    )
    return image


IMAGES: dict[str, Callable[[Path], Path]] = {
    "writer": lambda tmp: _writer(tmp, False),
    "writer-inline": lambda tmp: _writer(tmp, True),
    "mke2fs-128": lambda tmp: _mke2fs(tmp, ["-t", "ext4", "-I", "128"]),
    "mke2fs-csum-inline": lambda tmp: _mke2fs(
        tmp, ["-t", "ext4", "-O", "metadata_csum,inline_data,64bit"]
    ),
    "mke2fs-1k-ext2": lambda tmp: _mke2fs(tmp, ["-t", "ext2", "-b", "1024"]),
}


@pytest.fixture(params=sorted(IMAGES))
def image(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return IMAGES[request.param](tmp_path)


def _from_walk(reader: Ext4Reader, top: bytes = b"/") -> list[ScanEntry]:
    out = []
    for e in reader.walk(top):
        opaque = stat.S_ISDIR(e.mode) and e.xattrs.get(OPAQUE) == b"y"
        cap = e.xattrs.get(b"security.capability")
        out.append(
            ScanEntry(
                e.path,
                e.ino,
                e.mode,
                e.uid,
                e.gid,
                e.size,
                e.mtime_ns,
                e.rdev,
                e.nlink,
                opaque,
                cap,
            )
        )
    return out


@pytest.mark.parametrize("verify", [False, True], ids=["fast", "verified"])
def test_scan_equals_walk(image: Path, verify: bool) -> None:
    with Ext4Reader.open(image, verify_checksums=verify) as reader:
        want = _from_walk(reader)
        assert list(reader.scan(capability=True)) == want
        assert list(reader.scan()) == [e._replace(capability=None) for e in want]
    assert len(want) > 300


def test_scan_of_a_subtree_relative_and_lost_found(image: Path) -> None:
    with Ext4Reader.open(image) as reader:
        want = _from_walk(reader, b"/dir")
        assert list(reader.scan(b"/dir/")) == [e._replace(capability=None) for e in want]
        rel = list(reader.scan(b"dir", relative=True))
        assert [e.path for e in rel] == [b"/"] + [e.path[len(b"/dir") :] for e in want[1:]]
        paths = [e.path for e in reader.scan(hide_lost_found=True)]
        assert b"/lost+found" not in paths
        assert b"/lost+found" in [e.path for e in reader.scan()]
        file_top = list(reader.scan(b"/dir/file"))
        assert [e.path for e in file_top] == [b"/dir/file"]
        with pytest.raises(NotFound):
            list(reader.scan(b"/nope"))


def test_content_size_equals_walk(image: Path) -> None:
    with Ext4Reader.open(image) as reader:
        for top in (b"/", b"/dir"):
            seen: set[int] = set()
            total = 0
            for e in reader.walk(top):
                if e.path != top.rstrip(b"/") and not stat.S_ISDIR(e.mode) and e.ino not in seen:
                    seen.add(e.ino)
                    total += e.size
            assert reader.content_size(top) == total
            assert reader.content_size(top, hide_lost_found=True) == total
        assert reader.content_size(b"/dir/file") == 0  # no content below a file


def test_children_equals_listdir(image: Path) -> None:
    with Ext4Reader.open(image) as reader:
        for e in reader.walk():
            if not stat.S_ISDIR(e.mode):
                continue
            want = [(x.name, x.ino) for x in reader.listdir(e.inode, path=e.path)]
            assert reader.children(e.inode, path=e.path, seen_blocks=set()) == want


def test_scan_of_the_writer_image_decodes_every_field(tmp_path: Path) -> None:
    with Ext4Reader.open(_writer(tmp_path, False)) as reader:
        got = {e.path: e for e in reader.scan(capability=True, hide_lost_found=True)}
    assert got[b"/dir"].mtime_ns == -3 * NS - 7
    assert (got[b"/dir"].uid, got[b"/dir"].gid, got[b"/dir"].mode) == (70000, 5, 0o40750)
    assert got[b"/dir/file"].mtime_ns == (2**32 + 7) * NS + 9
    assert got[b"/dir/big"].uid == 3_000_000_000
    gone = got[b"/dir/gone"]
    assert stat.S_ISCHR(gone.mode) and gone.rdev == 0 and gone.mtime_ns == 12 * NS
    assert got[b"/opq"].opaque and not got[b"/dir"].opaque
    assert got[b"/capped"].capability == CAP and got[b"/dir/file"].capability is None
    assert got[b"/chr"].rdev == os.makedev(300, 70000)
    assert got[b"/link"].ino == got[b"/dir/file"].ino and got[b"/link"].nlink == 2
    assert got[b"/sparse"].size == 10 << 20
    assert got[b"/slow-sym"].size == 200
