"""Layer export (Diff) round trips judged by independent tools (issue 3, SPEC §5.3).

* trees made with system calls (:mod:`tests.integration.trees`) archived by GNU tar, converted
  and exported back;
* images made by ``mke2fs -d`` and by the kernel (loop mount read-write + copy), exported and
  compared with ``tar -C MNT --numeric-owner --xattrs -c`` of the same image mounted read-only.
"""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from lcow.convert.export import export_layer
from lcow.formats.ext4.reader import Ext4Reader
from tests.helpers import loop_mount, requires, run
from tests.integration.export_roundtrip import (
    T0,
    Member,
    MiB,
    assert_order,
    assert_same_members,
    convert,
    export,
    read_members,
)
from tests.integration.trees import TreeBuilder, build_tree, gnu_tar

# --------------------------------------------------------------------------------------------
# GNU tar of real trees


def _gnu_members(tar: Path) -> list[tuple[bytes, Member]]:
    return [(n, m) for n, m in read_members(tar) if n]


def _small_sparse(b: TreeBuilder) -> None:
    b.sparse("hole-only", 32 * MiB, [])
    b.sparse("lead-hole", 8 * MiB, [(8 * MiB - 4096, b"E" * 4096)])
    b.sparse("middle", 8 * MiB, [(MiB, b"M" * 3 * 4096)])
    b.sparse("partial-tail", 3 * 4096 + 100, [(0, b"P" * 4096)])
    b.sparse(
        "extents-341",
        2 * 341 * 4096,
        [(2 * i * 4096, bytes([i % 251 + 1]) * 4096) for i in range(341)],
    )


@requires("root", "xattrs", "tar")
@pytest.mark.parametrize("kind", ["basic", "xattrs", "longnames", "times", "sparse"])
def test_gnu_tar_trees_round_trip(kind: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    if kind == "sparse":
        builder = TreeBuilder(src)
        _small_sparse(builder)
        builder.finish()
    else:
        build_tree(kind, src)
    tar = tmp_path / f"{kind}.tar"
    proc = run(gnu_tar(src, tar, fmt="posix", sparse_version="1.0", xattrs=True))
    assert proc.returncode == 0, proc.stderr
    # Whiteout conversion off on both sides: the trees hold a ".wh." name and an opaque xattr
    # that must come back verbatim.
    out, _ = export(convert(tar, tmp_path, overlay=False), tmp_path, aufs=False)
    got = read_members(out)
    assert_order(got)
    assert_same_members(got, _gnu_members(tar))


# --------------------------------------------------------------------------------------------
# images made by mke2fs -d and by the kernel, against tar -c of the read-only mount


def _oracle_tree(root: Path) -> None:
    b = TreeBuilder(root)
    b.dir("d/e", 0o750)
    b.file("d/e/f", b"in e\n")
    b.dir("big")
    for i in range(3000):  # enough for an htree in the kernel's image
        b.file(f"big/entry-with-a-longish-name-{i:05d}", b"x" * (i % 5))
    b.file("small", b"small\n", 0o4755)
    b.random_file("random", 3 * MiB + 123)
    b.sparse("sparse", 40 * MiB, [(20 * MiB, b"middle")])
    b.symlink("sym", "small")
    b.symlink("slow-sym", "/" + "v/" * 100 + "end")
    b.file("multi", b"linked")
    b.link("d/multi-2", "multi")
    b.fifo("fifo")
    b.device("null", stat.S_IFCHR, 1, 3)
    b.device("whiteout", stat.S_IFCHR, 0, 0)
    b.chown("small", 1000, 1000)
    b.xattr("small", "user.a", b"1")
    b.xattr("small", "trusted.t", b"trusted")
    b.xattr("d", "trusted.overlay.opaque", b"y")
    b.xattr("random", "user.big", b"B" * 900)  # fits a 1 KiB block
    b.mtime("small", T0)
    b.finish()


def _kernel_tar(mnt: Path, out: Path) -> Path:
    proc = run(
        ["tar", "-C", mnt, "--numeric-owner", "--xattrs", "--xattrs-include=*", "-cf", out, "."]
    )
    assert proc.returncode == 0, proc.stderr
    return out


@contextlib.contextmanager
def _rw_mount(image: Path, mnt: Path) -> Iterator[Path]:
    mnt.mkdir()
    proc = run(["mount", "-t", "ext4", "-o", "loop", image, mnt])
    assert proc.returncode == 0, proc.stderr
    try:
        yield mnt
    finally:
        if run(["umount", mnt]).returncode != 0:
            run(["umount", "--lazy", mnt])


def _mke2fs_image(tmp: Path, args: list[str]) -> Path:
    src = tmp / "tree"
    src.mkdir()
    _oracle_tree(src)
    image = tmp / "mke2fs.img"
    proc = run(["mke2fs", "-q", "-F", *args, "-d", src, image, "200M"])
    assert proc.returncode == 0, proc.stderr
    return image


def _kernel_image(tmp: Path, args: list[str]) -> Path:
    image = tmp / "kernel.img"
    with open(image, "wb") as f:
        f.truncate(200 * MiB)
    proc = run(["mke2fs", "-q", "-F", *args, image])
    assert proc.returncode == 0, proc.stderr
    with _rw_mount(image, tmp / "rw") as mnt:
        _oracle_tree(mnt)
    return image


_ORACLE_IMAGES = {
    "mke2fs-d": (_mke2fs_image, ["-t", "ext4"]),
    "mke2fs-d-64bit-csum-inline": (
        _mke2fs_image,
        ["-t", "ext4", "-O", "64bit,metadata_csum,inline_data"],
    ),
    "kernel-ext4": (_kernel_image, ["-t", "ext4", "-b", "4096"]),
    "kernel-ext4-1k-inline": (
        _kernel_image,
        ["-t", "ext4", "-b", "1024", "-O", "inline_data,^has_journal"],
    ),
}


@requires("root", "loop", "xattrs", "mke2fs", "tar")
@pytest.mark.parametrize("name", sorted(_ORACLE_IMAGES))
def test_export_of_foreign_images_equals_kernel_tar(name: str, tmp_path: Path) -> None:
    builder, args = _ORACLE_IMAGES[name]
    image = builder(tmp_path, args)
    with loop_mount(image, tmp_path / "ro"):
        ref = _kernel_tar(tmp_path / "ro", tmp_path / "kernel.tar")
    want = [(n, m) for n, m in read_members(ref) if n and n != b"lost+found"]
    for aufs in (False, True):
        with (
            Ext4Reader.open(image, verify_checksums=True) as reader,
            open(tmp_path / "ours.tar", "wb") as f,
        ):
            export_layer(reader, f, aufs_whiteouts=aufs)
        got = read_members(tmp_path / "ours.tar")
        assert_order(got, aufs=aufs)
        if not aufs:
            assert_same_members(got, want)
            continue
        g = dict(got)
        assert b"whiteout" not in g and g[b".wh.whiteout"].perm == 0o600
        assert g[b"d/.wh..wh..opq"].perm == dict(want)[b"d"].perm
        assert "trusted.overlay.opaque" not in g[b"d"].xattrs
