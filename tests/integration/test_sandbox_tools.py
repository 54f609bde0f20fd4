"""Sandboxes and the VHDX writer against tools we did not write (SPEC §4.5, §7.2, issue 4 item 4).

Oracles: ``qemu-img check -f vhdx`` (no errors), ``qemu-img info`` (format, virtual size) and
``qemu-img convert -f vhdx -O raw`` (the exact raw content) for every VHDX we write;
``e2fsck -fn`` (exit 0) and ``dumpe2fs -h`` (features, block and inode size) for the ext4 inside
a sandbox; the kernel (loop mount read-write, write files, unmount) for a sandbox used the way a
container uses it, packed back with our writer.

Tools and root are declared with ``requires``: skipped when missing, failed when ``CI=true``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lcow.errors import AlreadyExists, InvalidArgument
from lcow.formats.source import open_source
from lcow.formats.vhd.vhdx_writer import (
    VhdxBlockWriter,
    create_dynamic_vhdx,
    raw_to_dynamic_vhdx,
)
from lcow.sandboxes import (
    EXT4_FEATURES,
    MAX_SANDBOX_GB,
    MkfsFailed,
    copy_sandbox,
    make_sandbox,
    make_sandbox_template,
    mke2fs_argv,
    sandbox_size_bytes,
)
from lcow.sandboxes import make as sandbox_make
from tests.helpers import ensure, loop_mount, requires, run

MIB = 1 << 20
GIB = 1 << 30


# -- oracles --------------------------------------------------------------------------------


def _describe(proc: subprocess.CompletedProcess[str]) -> str:
    return f"$ {proc.args}\nexit {proc.returncode}\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}"


def qemu_check(path: Path) -> None:
    """``qemu-img check -f vhdx`` reports no errors."""
    proc = run(["qemu-img", "check", "-f", "vhdx", "--output=json", path])
    assert proc.returncode == 0, _describe(proc)
    report = json.loads(proc.stdout)
    assert report["format"] == "vhdx"
    assert report["check-errors"] == 0, report
    assert report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0, report


def qemu_info_size(path: Path) -> int:
    """Virtual size reported by ``qemu-img info`` (format detected, must be vhdx)."""
    proc = run(["qemu-img", "info", "--output=json", path])
    assert proc.returncode == 0, _describe(proc)
    info = json.loads(proc.stdout)
    assert info["format"] == "vhdx"
    return int(info["virtual-size"])


def qemu_same(vhdx: Path, raw: Path) -> None:
    """``qemu-img compare`` finds the VHDX's virtual disk identical to ``raw`` (hole-aware)."""
    proc = run(["qemu-img", "compare", "-f", "vhdx", "-F", "raw", vhdx, raw])
    assert proc.returncode == 0, _describe(proc)


def qemu_to_raw(path: Path, out: Path) -> Path:
    """The raw view of a VHDX through ``qemu-img convert`` (sparse output)."""
    proc = run(["qemu-img", "convert", "-f", "vhdx", "-O", "raw", path, out])
    assert proc.returncode == 0, _describe(proc)
    return out


def _sparse_raw(path: Path, size: int, writes: list[tuple[int, bytes]]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in writes:
            f.seek(offset)
            f.write(data)


def _convert(raw: Path, out: Path, *, block_size: int = MIB) -> int:
    fd = os.open(raw, os.O_RDONLY)
    try:
        return raw_to_dynamic_vhdx(fd, out, raw.stat().st_size, block_size=block_size)
    finally:
        os.close(fd)


def _all_zero(path: Path) -> bool:
    """Whether every data extent of ``path`` holds only zeros (holes are zeros)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                return True  # ENXIO: no data after pos
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            for off in range(start, end, 4 * MIB):
                chunk = os.pread(fd, min(4 * MIB, end - off), off)
                if chunk.count(0) != len(chunk):
                    return False
            pos = end
        return True
    finally:
        os.close(fd)


def _same_file(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(4 * MIB), fb.read(4 * MIB)
            if x != y:
                return False
            if not x:
                return True


# -- the writer -----------------------------------------------------------------------------


@requires("qemu-img")
@pytest.mark.parametrize(
    ("size", "block_size"),
    [
        (MIB, MIB),
        (20 * GIB, MIB),
        (5 * GIB + 512, MIB),  # partial last block
        (4097 * MIB, MIB),  # a sector-bitmap entry inside the BAT
        (1 << 40, MIB),  # 1 TiB: a 3 MiB BAT
        (20 * GIB, 32 * MIB),
        (3 * GIB, 256 * MIB),
    ],
)
def test_empty_disk_passes_qemu(tmp_path: Path, size: int, block_size: int) -> None:
    path = tmp_path / "d.vhdx"
    create_dynamic_vhdx(path, size, block_size=block_size)
    qemu_check(path)
    assert qemu_info_size(path) == size
    if size <= 5 * GIB + 512:
        raw = qemu_to_raw(path, tmp_path / "d.raw")
        assert raw.stat().st_size == size
        assert _all_zero(raw)


@requires("qemu-img")
@pytest.mark.parametrize(
    ("size", "block_size"), [(48 * MIB + 1536, MIB), (64 * MIB, 32 * MIB), (30 * MIB, 2 * MIB)]
)
def test_raw_conversion_round_trips_through_qemu(
    tmp_path: Path, size: int, block_size: int
) -> None:
    rng = random.Random(size)
    writes = [(rng.randrange(size - 200_000), rng.randbytes(rng.randrange(1, 200_000)))]
    writes += [(rng.randrange(size - 9), rng.randbytes(9)) for _ in range(20)]
    writes += [(0, b"\x07"), (size - 1, b"\x09"), (block_size - 1, b"ab"), (7 * MIB, bytes(MIB))]
    raw = tmp_path / "in.raw"
    _sparse_raw(raw, size, writes)
    out = tmp_path / "out.vhdx"
    _convert(raw, out, block_size=block_size)
    qemu_check(out)
    assert qemu_info_size(out) == size
    assert _same_file(qemu_to_raw(out, tmp_path / "back.raw"), raw)


@requires("qemu-img")
@pytest.mark.parametrize("origin", ["lcow", "qemu-1M", "qemu-default"])
def test_block_writer_output_passes_qemu(tmp_path: Path, origin: str) -> None:
    size = 96 * MIB + 512
    path = tmp_path / "d.vhdx"
    if origin == "lcow":
        create_dynamic_vhdx(path, size)
    else:
        opts = ["-o", "block_size=1M"] if origin == "qemu-1M" else []
        proc = run(["qemu-img", "create", "-q", "-f", "vhdx", *opts, path, str(size)])
        assert proc.returncode == 0, _describe(proc)
    model = bytearray(size)
    rng = random.Random(11)
    with VhdxBlockWriter.open(path) as w:
        for i in range(200):
            offset = rng.randrange(size)
            length = min(size - offset, rng.choice([1, 4096, 100_000, 2 * MIB]))
            data = bytes(length) if i % 7 == 0 else rng.randbytes(length)
            w.pwrite(offset, data)
            model[offset : offset + length] = data
    qemu_check(path)
    assert qemu_info_size(path) == size
    back = qemu_to_raw(path, tmp_path / "back.raw")
    assert back.read_bytes() == model
    with open_source(path) as src:  # and the project's reader agrees
        assert src.pread(0, size) == model


# -- sandboxes ------------------------------------------------------------------------------


def test_sandbox_sizes() -> None:
    assert sandbox_size_bytes(20) == 20 * GIB
    assert sandbox_size_bytes(MAX_SANDBOX_GB) == 64 << 40
    for bad in (0, 19, -20, MAX_SANDBOX_GB + 1):
        with pytest.raises(InvalidArgument):
            sandbox_size_bytes(bad)
    with pytest.raises(InvalidArgument, match="minimum of 20"):
        sandbox_size_bytes(19)
    with pytest.raises(InvalidArgument, match="VHDX maximum of 65536"):
        sandbox_size_bytes(65537)


def test_mke2fs_command_pins_features() -> None:
    argv = mke2fs_argv("mke2fs", "dev", 20 * GIB)
    assert argv[argv.index("-O") + 1] == "none," + ",".join(EXT4_FEATURES)
    assert argv[argv.index("-b") + 1] == "4096" and argv[argv.index("-I") + 1] == "256"
    assert "lazy_itable_init=1" in argv[argv.index("-E") + 1]
    assert "nodiscard" in argv[argv.index("-E") + 1]
    assert argv[-1] == str(20 * GIB // 4096)
    big = mke2fs_argv("mke2fs", "dev", 20 << 40)
    assert big[big.index("-O") + 1].endswith(",64bit")
    assert big[big.index("-i") + 1] == "65536"


def _features(raw: Path) -> tuple[set[str], dict[str, str]]:
    proc = run(["dumpe2fs", "-h", raw])
    assert proc.returncode == 0, _describe(proc)
    fields = dict(
        (k.strip(), v.strip())
        for k, v in (line.split(":", 1) for line in proc.stdout.splitlines() if ":" in line)
    )
    return set(fields["Filesystem features"].split()), fields


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """A 20 GB sandbox template and the seconds it took to make."""
    ensure("mke2fs")
    directory = tmp_path_factory.mktemp("cache")
    path = directory / "sandbox.vhdx"
    start = time.perf_counter()
    make_sandbox_template(path)
    return path, time.perf_counter() - start


@requires("mke2fs", "qemu-img", "e2fsck", "dumpe2fs")
def test_sandbox_template(template: tuple[Path, float], tmp_path: Path) -> None:
    path, seconds = template
    on_disk = path.stat().st_blocks * 512
    print(f"\n20 GB sandbox.vhdx: {on_disk / 1024:.0f} KiB on disk, made in {seconds:.3f} s")
    assert sorted(p.name for p in path.parent.iterdir()) == ["sandbox.vhdx"]  # no temporaries
    assert on_disk < 4 * MIB
    assert seconds < 30
    qemu_check(path)
    assert qemu_info_size(path) == 20 * GIB
    raw = qemu_to_raw(path, tmp_path / "sandbox.raw")
    assert raw.stat().st_size == 20 * GIB
    proc = run(["e2fsck", "-fn", raw])
    assert proc.returncode == 0, _describe(proc)
    features, fields = _features(raw)
    assert features == set(EXT4_FEATURES)
    assert not features & {"has_journal", "resize_inode", "metadata_csum", "64bit"}
    assert fields["Block size"] == "4096"
    assert fields["Inode size"] == "256"
    assert fields["Block count"] == str(20 * GIB // 4096)
    assert fields["Reserved block count"] == str(20 * GIB // 4096 // 20)
    assert set(fields["Default mount options"].split()) == {"user_xattr", "acl"}
    assert re.fullmatch(r"\d+ \d+", fields["Backup block groups"])  # sparse_super2


@pytest.mark.slow
@requires("mke2fs", "qemu-img", "e2fsck")
def test_sandbox_bigger_than_default(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.vhdx"
    make_sandbox_template(path, 300)
    qemu_check(path)
    assert qemu_info_size(path) == 300 * GIB
    assert path.stat().st_blocks * 512 < 8 * MIB
    raw = qemu_to_raw(path, tmp_path / "sandbox.raw")
    proc = run(["e2fsck", "-fn", raw])
    assert proc.returncode == 0, _describe(proc)


@requires("mke2fs", "qemu-img")
def test_make_sandbox_in_bytes(tmp_path: Path) -> None:
    make_sandbox(tmp_path / "default.vhdx")
    assert qemu_info_size(tmp_path / "default.vhdx") == 20 * GIB
    assert (tmp_path / "default.vhdx").stat().st_mode & 0o777 == 0o600
    make_sandbox(tmp_path / "odd.vhdx", 21 * GIB + 1)  # rounded up to whole MiB
    assert qemu_info_size(tmp_path / "odd.vhdx") == 21 * GIB + MIB
    qemu_check(tmp_path / "odd.vhdx")
    # An exact size (Docker's size=) may be below LCOW's 20 GB minimum.
    make_sandbox(tmp_path / "small.vhdx", 512 * MIB)
    assert qemu_info_size(tmp_path / "small.vhdx") == 512 * MIB
    qemu_check(tmp_path / "small.vhdx")
    for bad in ((8 << 20) - 1, (64 << 40) + 1):
        with pytest.raises(InvalidArgument):
            make_sandbox(tmp_path / "bad.vhdx", bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default.vhdx", "odd.vhdx", "small.vhdx"]


def test_sandbox_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox_make, "_find_mke2fs", lambda: "/bin/false")
    existing = tmp_path / "sandbox.vhdx"
    existing.write_bytes(b"old template")
    with pytest.raises(MkfsFailed, match="exit code 1") as info:
        make_sandbox_template(existing)
    assert info.value.returncode == 1
    assert info.value.argv[0] == "/bin/false"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sandbox.vhdx"]
    assert existing.read_bytes() == b"old template"
    with pytest.raises(InvalidArgument):
        make_sandbox_template(tmp_path / "small.vhdx", 19)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sandbox.vhdx"]


@requires("mke2fs", "qemu-img")
def test_copy_sandbox_keeps_it_sparse(template: tuple[Path, float], tmp_path: Path) -> None:
    src, _ = template
    dst = tmp_path / "layer" / "sandbox.vhdx"
    dst.parent.mkdir()
    copy_sandbox(src, dst)
    assert _same_file(src, dst)
    assert dst.stat().st_blocks <= src.stat().st_blocks + 8
    qemu_check(dst)
    with pytest.raises(AlreadyExists):
        copy_sandbox(src, dst)
    assert sorted(p.name for p in dst.parent.iterdir()) == ["sandbox.vhdx"]


@contextlib.contextmanager
def _mount_rw(image: Path, mountpoint: Path) -> Iterator[Path]:
    attach = run(["losetup", "--find", "--show", image])
    assert attach.returncode == 0, _describe(attach)
    device = attach.stdout.strip()
    try:
        mounted = run(["mount", "-t", "ext4", device, mountpoint])
        assert mounted.returncode == 0, _describe(mounted)
        try:
            yield mountpoint
        finally:
            if run(["umount", mountpoint]).returncode != 0:
                run(["umount", "--lazy", mountpoint])
    finally:
        run(["losetup", "--detach", device])


@pytest.mark.slow
@requires("root", "loop", "mke2fs", "qemu-img", "e2fsck", "mount", "umount", "losetup")
def test_sandbox_used_by_kernel_and_packed_back(
    template: tuple[Path, float], tmp_path: Path
) -> None:
    src, _ = template
    raw = qemu_to_raw(src, tmp_path / "sandbox.raw")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    rng = random.Random(3)
    files = {
        "upper/hello.txt": b"hello from the container\n",
        "upper/dir/big.bin": rng.randbytes(3 * MIB + 123),
        "work/.keep": b"",
    }
    with _mount_rw(raw, mnt):
        for name, data in files.items():
            (mnt / name).parent.mkdir(parents=True, exist_ok=True)
            (mnt / name).write_bytes(data)
        os.symlink("hello.txt", mnt / "upper" / "link")
    proc = run(["e2fsck", "-fn", raw])
    assert proc.returncode == 0, _describe(proc)

    packed = tmp_path / "packed.vhdx"
    _convert(raw, packed)
    qemu_check(packed)
    assert qemu_info_size(packed) == 20 * GIB
    assert packed.stat().st_blocks * 512 < 64 * MIB  # zeroed inode tables are not stored
    qemu_same(packed, raw)
    back = qemu_to_raw(packed, tmp_path / "back.raw")
    proc = run(["e2fsck", "-fn", back])
    assert proc.returncode == 0, _describe(proc)
    with loop_mount(back, tmp_path / "ro") as ro:
        for name, data in files.items():
            assert (ro / name).read_bytes() == data
        assert os.readlink(ro / "upper" / "link") == "hello.txt"
