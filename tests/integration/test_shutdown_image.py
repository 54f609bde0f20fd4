"""``lcow._util.shutdown.shut_down_image`` against real loop-mounted ext4 images: it shuts down
the file system of the image it is given, never another one (the staged unpacks of the
containerd snapshotter use it to drop a discarded sandbox's page cache)."""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lcow._util import shutdown
from tests.helpers import requires


@contextmanager
def _mounted(image: Path, mountpoint: Path) -> Iterator[Path]:
    subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", str(image)], check=True)
    mountpoint.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


@requires("loop", "mke2fs")
def test_shuts_down_the_images_file_system_and_only_it(tmp_path: Path) -> None:
    with (
        _mounted(tmp_path / "garbage.img", tmp_path / "g") as garbage,
        _mounted(tmp_path / "kept.img", tmp_path / "k") as kept,
    ):
        (garbage / "f").write_bytes(b"x" * 65536)
        assert shutdown.shut_down_image(tmp_path / "garbage.img") is True
        with pytest.raises(OSError) as info:
            (garbage / "g2").write_bytes(b"y")
        assert info.value.errno == errno.EIO
        (kept / "f").write_bytes(b"still writable")
        assert (kept / "f").read_bytes() == b"still writable"
    assert shutdown.shut_down_image(tmp_path / "garbage.img") is False  # not mounted


@requires("loop", "mke2fs")
def test_a_mount_point_that_now_holds_another_file_system_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the mount table answers with a mount point whose file system is not
    the image's (its slot reused between the lookup and the ``open``)."""
    with (
        _mounted(tmp_path / "garbage.img", tmp_path / "g"),
        _mounted(tmp_path / "kept.img", tmp_path / "k") as kept,
    ):
        monkeypatch.setattr(shutdown, "_ext4_mount", lambda device: str(kept))
        assert shutdown.shut_down_image(tmp_path / "garbage.img") is False
        (kept / "f").write_bytes(b"still writable")
        assert (kept / "f").read_bytes() == b"still writable"
