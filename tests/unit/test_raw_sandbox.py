"""Raw sandboxes (``sandbox.img``): how the data root names them, who may mount them, and the
file system they start with."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lcow.errors import NotSupported
from lcow.graphdriver.driver import Driver
from lcow.sandboxes import make_raw_sandbox
from lcow.storage.dataroot import LAYER_VHD, SANDBOX_RAW, SANDBOX_VHDX, DataRoot
from tests.helpers import assert_e2fsck_clean, requires


def test_a_raw_sandbox_is_a_writable_layer_file_and_layer_vhd_wins(tmp_path: Path) -> None:
    (tmp_path / SANDBOX_RAW).write_bytes(b"")
    found = DataRoot.layer_file(tmp_path)
    assert found is not None and found.writable and found.raw
    (tmp_path / LAYER_VHD).write_bytes(b"")  # ApplyDiff renamed the image in, then a crash
    found = DataRoot.layer_file(tmp_path)
    assert found is not None and not found.writable and not found.raw
    DataRoot.sweep_folder(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [LAYER_VHD]


def test_a_vhdx_sandbox_is_not_raw(tmp_path: Path) -> None:
    (tmp_path / SANDBOX_VHDX).write_bytes(b"")
    found = DataRoot.layer_file(tmp_path)
    assert found is not None and found.writable and not found.raw


def test_backends_that_cannot_mount_a_raw_sandbox_refuse_it_by_name(tmp_path: Path) -> None:
    driver = Driver(tmp_path / "root", ["lcow.backend=userspace"])
    with pytest.raises(NotSupported, match=r"l1: the userspace backend cannot mount a raw"):
        driver.create_read_write("l1", None, raw=True)
    assert not driver.root.layer_dir("l1").exists()  # nothing made
    driver.create("l2", None)
    (driver.root.layer_dir("l2") / SANDBOX_RAW).write_bytes(b"")  # made by a host front end
    with pytest.raises(NotSupported, match=r"l2: the userspace backend cannot mount a raw"):
        driver.get("l2")


@requires("mke2fs", "e2fsck")
def test_make_raw_sandbox_is_a_sparse_clean_ext4(tmp_path: Path) -> None:
    target = tmp_path / SANDBOX_RAW
    make_raw_sandbox(target, 64 << 20)
    assert target.stat().st_size == 64 << 20
    assert target.stat().st_blocks * 512 < 64 << 20  # sparse
    assert_e2fsck_clean(target)
    assert sorted(os.listdir(tmp_path)) == [SANDBOX_RAW]  # no temporaries left
