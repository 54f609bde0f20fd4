"""ApplyDiff and tar2ext4 read raw binary streams: Driver.diff()'s own stream goes straight
into another layer's ApplyDiff; a non-blocking stream is refused by name, not taken for the
end of the tar. The image is judged by e2fsck and by the Diff read back."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from lcow.backends.userspace import UserspaceBackend
from lcow.convert.tar2ext4 import tar2ext4
from lcow.errors import InvalidArgument
from lcow.graphdriver.driver import Driver
from tests.helpers import TarEntry, assert_e2fsck_clean, diff_files, requires, write_tar

_FILES = {"etc/motd": b"hello\n", "usr/lib/big.bin": os.urandom(3 << 20), "empty": b""}


def _layer_tar(tmp_path: Path) -> Path:
    entries = [TarEntry("etc", "dir"), TarEntry("usr", "dir"), TarEntry("usr/lib", "dir")]
    entries += [TarEntry(name, data=data) for name, data in _FILES.items()]
    return write_tar(tmp_path / "layer.tar", entries)


@requires("e2fsck")
def test_a_layers_diff_stream_is_applied_to_another_layer_as_it_is(tmp_path: Path) -> None:
    driver = Driver(tmp_path / "data", backend=UserspaceBackend())
    driver.create("one")
    with _layer_tar(tmp_path).open("rb") as tar:
        driver.apply_diff("one", None, tar)
    driver.create("two")
    with driver.diff("one") as stream:
        assert isinstance(stream, io.RawIOBase)  # what Diff returns: no buffering around it
        size = driver.apply_diff("two", None, stream)
    assert size == sum(map(len, _FILES.values()))
    assert diff_files(driver, "two") == _FILES
    assert_e2fsck_clean(Path(driver.get_layer_path("two")) / "layer.vhd")


class _NotReadyYet(io.RawIOBase):
    """A non-blocking raw stream with nothing to read yet (``read`` gives ``None``)."""

    name = "nonblocking-feed"

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int | None:  # type: ignore[override]
        return None


def test_a_non_blocking_stream_is_refused_by_name(tmp_path: Path) -> None:
    out = tmp_path / "out.img"
    with pytest.raises(InvalidArgument, match=r"^nonblocking-feed: the stream is non-blocking"):
        tar2ext4(_NotReadyYet(), out)
    assert list(tmp_path.iterdir()) == []  # no image, no temporary file
