"""A full output file system names the entry being written and leaves nothing (item C).

The output directory (or the whole data root) is a small tmpfs the kernel fills for real: the
conversion must fail with :class:`~lcow.errors.NoSpace` (an ``OSError`` with ``ENOSPC``) whose
``entry`` and message name the tar entry whose data did not fit, whether the write failed at
once (a body larger than the write buffer, a ``splice`` from a pipe) or later on the writer
thread (small files coalesced into one buffer, a body copied in the background), and the
staged image must be gone.
"""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lcow import tar2ext4
from lcow.errors import NoSpace
from lcow.graphdriver.driver import Driver
from lcow.samples import write_sample_image
from tests.helpers import requires

pytestmark = requires("root")

MiB = 1 << 20


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs, unmounted afterwards."""
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def _tar(files: list[tuple[str, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, size in files:
            info = tarfile.TarInfo(name)
            info.size = size
            tf.addfile(info, io.BytesIO(os.urandom(size)))  # incompressible: no sparse luck
    return buf.getvalue()


#: layout -> (the tar's files, the entries the error may name: those past the free space)
LAYOUTS = {
    # 8 MiB body: past the 4 MiB write buffer, written at once (file input: a background copy)
    "one-big-body": ([("small", 1000), ("big/blob", 8 * MiB)], {"big/blob"}),
    # a 600 KiB body: a queued kernel-to-kernel copy, its failure seen at a later call
    "copied-bodies": ([(f"c/{i:02d}", 600 << 10) for i in range(12)], None),
    # 64 KiB files coalesced into the write buffer: the pwrite of a whole run fails later
    "coalesced-small": ([(f"s/{i:03d}", 64 << 10) for i in range(100)], None),
}


def _expected(layout: str) -> set[str]:
    files, names = LAYOUTS[layout]
    if names is not None:
        return names
    # the file system holds 3 MiB: an entry whose data starts in the first MiB fitted
    late, before = set(), 0
    for name, size in files:
        if before >= MiB:
            late.add(name)
        before += size
    return late


def _judge(exc: NoSpace, layout: str, layer: str | None = None) -> None:
    assert isinstance(exc, OSError) and exc.errno == errno.ENOSPC
    assert exc.entry in _expected(layout), exc.entry
    prefix = "" if layer is None else f"{layer}: "
    assert str(exc) == f"{prefix}{exc.entry}: no space left on device"


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("via", ["file", "pipe"])
def test_tar2ext4_names_the_entry_and_leaves_nothing(
    layout: str, via: str, small_fs: Path, tmp_path: Path
) -> None:
    src = tmp_path / "in.tar"
    src.write_bytes(_tar(LAYOUTS[layout][0]))
    with pytest.raises(NoSpace) as info:
        if via == "file":
            tar2ext4(src, small_fs / "layer.img")
        else:
            _through_pipe(src, small_fs / "layer.img")
    _judge(info.value, layout)
    assert os.listdir(small_fs) == []


def _through_pipe(src: Path, out: Path) -> None:
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        try:
            with open(write_fd, "wb") as pipe:
                pipe.write(src.read_bytes())
        except BrokenPipeError:
            pass

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        tar2ext4(read_fd, out)
    finally:
        os.close(read_fd)
        feeder.join()


@pytest.mark.parametrize("layout", ["one-big-body", "coalesced-small"])
def test_apply_diff_names_the_entry_and_leaves_no_layer(
    layout: str, small_fs: Path, tmp_path: Path
) -> None:
    src = tmp_path / "in.tar"
    src.write_bytes(_tar(LAYOUTS[layout][0]))
    driver = Driver(small_fs / "root", ["lcow.backend=userspace"])
    driver.create("L")
    with pytest.raises(NoSpace) as info:
        driver.apply_diff("L", None, src)
    _judge(info.value, layout, "L")
    assert sorted(os.listdir(small_fs / "root" / "L")) == ["layerchain.json"]
    # the data root still works once there is room: a small layer goes in
    driver.apply_diff("L", None, io.BytesIO(_tar([("tiny", 10)])))
    assert (small_fs / "root" / "L" / "layer.vhd").is_file()


def test_metadata_that_does_not_fit_names_the_image(small_fs: Path, tmp_path: Path) -> None:
    """Data that fits, then no room for the inode tables and directories: the output named."""
    filler = small_fs / "filler"
    src = tmp_path / "in.tar"
    src.write_bytes(_tar([(f"f{i:05d}", 0) for i in range(20_000)]))
    with open(filler, "wb") as fh:  # leave about 64 KiB free
        free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
        fh.write(bytes(free - (64 << 10)))
    with pytest.raises(NoSpace) as info:
        tar2ext4(src, small_fs / "layer.img")
    assert info.value.entry is None and info.value.errno == errno.ENOSPC
    image = small_fs / "layer.img"
    assert str(info.value) == f"{image}: no space left on device for the image's metadata"
    assert os.listdir(small_fs) == ["filler"]


def _lcow(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lcow", *argv], capture_output=True, text=True, check=False
    )


def test_cli_names_the_layer_and_the_entry(small_fs: Path, tmp_path: Path) -> None:
    """``lcow: <id>: <entry>: no space left on device`` for apply-diff and import alike."""
    files, _ = LAYOUTS["one-big-body"]
    layer = tmp_path / "layer.tar"
    layer.write_bytes(_tar(files))
    root = small_fs / "root"
    assert _lcow("--root", str(root), "create", "L").returncode == 0
    proc = _lcow("--root", str(root), "apply-diff", "L", "-i", str(layer))
    assert proc.returncode == 1
    assert proc.stderr == "lcow: L: big/blob: no space left on device\n"
    image = write_sample_image(tmp_path / "image.tar", layers=[layer])
    proc = _lcow("--root", str(root), "import", str(image))
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].endswith(": big/blob: no space left on device"), lines
    kept = {"cache", "scratch", "L", ".lcow.lock", ".layers.lock"}
    assert not [p.name for p in root.iterdir() if p.name not in kept]
