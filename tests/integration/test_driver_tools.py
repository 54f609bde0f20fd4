"""The driver's disks against tools we did not write (SPEC §1.1, §4.5, §7, issue 4).

* Every ``sandbox.vhdx`` CreateReadWrite makes (the default one copied from the cache, the cache
  template itself, ``lcow.sandboxsize=25``, Docker's ``size=512M``) passes
  ``qemu-img check -f vhdx``, has the virtual size asked for, and its raw view
  (``qemu-img convert -O raw``) passes ``e2fsck -fn`` and shows LCOW's mkfs features in
  ``dumpe2fs -h``: no ``has_journal``, ``sparse_super2``, ``uninit_bg``, no ``resize_inode``,
  4 KiB blocks, 256-byte inodes, filling the disk.
* Every ``layer.vhd`` ApplyDiff writes (the sample layers with whiteouts, opaque directories,
  hard links, xattrs and devices; an empty tar; a layer replacing a sandbox) has a valid fixed-VHD
  footer and passes ``e2fsck -fn`` on the ext4 before the footer: a copy truncated to the image,
  and, with root, a read-only loop device limited with ``losetup --sizelimit``.

Missing tools or privileges skip, or fail under ``CI=true`` (``tests.helpers.requires``).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from lcow.formats.vhd.footer import FOOTER_SIZE, read_footer
from lcow.graphdriver.driver import Driver
from lcow.testing.backend_suite import layer_tar
from tests.helpers import requires, run

GIB = 1 << 30
MIB = 1 << 20

pytestmark = requires("mke2fs", "qemu-img", "e2fsck", "dumpe2fs")


def _describe(proc: subprocess.CompletedProcess[str]) -> str:
    return f"$ {proc.args}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def qemu_check_vhdx(path: Path) -> int:
    """``qemu-img check -f vhdx`` finds nothing; returns ``qemu-img info``'s virtual size."""
    proc = run(["qemu-img", "check", "-f", "vhdx", "--output=json", path])
    assert proc.returncode == 0, _describe(proc)
    report = json.loads(proc.stdout)
    assert report["check-errors"] == 0, report
    assert report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0, report
    info = run(["qemu-img", "info", "--output=json", path])
    assert info.returncode == 0, _describe(info)
    data = json.loads(info.stdout)
    assert data["format"] == "vhdx", data
    return int(data["virtual-size"])


def e2fsck_clean(image: Path | str) -> None:
    """``e2fsck -fn`` exits 0."""
    proc = run(["e2fsck", "-fn", image])
    assert proc.returncode == 0, _describe(proc)


def superblock(image: Path) -> dict[str, str]:
    """``dumpe2fs -h`` as a field dictionary."""
    proc = run(["dumpe2fs", "-h", image])
    assert proc.returncode == 0, _describe(proc)
    fields = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def check_sandbox(path: Path, size: int, scratch: Path) -> None:
    """A sandbox of ``size`` bytes: qemu-img clean, raw view e2fsck clean with LCOW's features."""
    assert qemu_check_vhdx(path) == size
    raw = scratch / (path.parent.name + "-" + path.name + ".raw")
    proc = run(["qemu-img", "convert", "-f", "vhdx", "-O", "raw", path, raw])
    assert proc.returncode == 0, _describe(proc)
    try:
        assert raw.stat().st_size == size
        e2fsck_clean(raw)
        sb = superblock(raw)
        features = set(sb["Filesystem features"].split())
        assert "has_journal" not in features, features
        assert "resize_inode" not in features, features
        assert {"sparse_super2", "uninit_bg", "extent", "ext_attr"} <= features, features
        assert sb["Block size"] == "4096"
        assert sb["Inode size"] == "256"
        assert int(sb["Block count"]) * 4096 == size
        assert sb["Filesystem state"] == "clean"
    finally:
        raw.unlink()


def test_default_sandbox_and_template(tmp_path: Path) -> None:
    """The first default sandbox seeds ``cache/sandbox.vhdx``; it, its copies and the template
    pass."""
    root = tmp_path / "root"
    driver = Driver(root)
    driver.create("base", None)
    driver.create_read_write("first", "base", None)
    driver.create_read_write("second", None, {})
    for path in (
        root / "cache" / "sandbox.vhdx",
        root / "first" / "sandbox.vhdx",
        root / "second" / "sandbox.vhdx",
    ):
        check_sandbox(path, 20 * GIB, tmp_path)


@pytest.mark.parametrize(
    ("opts", "size"),
    [
        ({"lcow.sandboxsize": "25"}, 25 * GIB),
        ({"lcow.sandboxsize": "20"}, 20 * GIB),
        ({"size": "512M"}, 512 * MIB),
    ],
    ids=["sandboxsize=25", "sandboxsize=20", "size=512M"],
)
def test_sized_sandbox(tmp_path: Path, opts: dict[str, str], size: int) -> None:
    """Sandboxes of other sizes pass the same checks at exactly the size asked for."""
    root = tmp_path / "root"
    driver = Driver(root)
    driver.create_read_write("rw", None, opts)
    check_sandbox(root / "rw" / "sandbox.vhdx", size, tmp_path)


def _build_layers(root: Path, sample_layers: list[Path]) -> list[Path]:
    """ApplyDiff the sample chain, an empty layer, a many-file layer and one over a sandbox."""
    driver = Driver(root)
    parent: str | None = None
    for index, tar in enumerate(sample_layers):
        layer_id = f"sample-{index}"
        driver.create(layer_id, parent)
        driver.apply_diff(layer_id, parent, tar)
        parent = layer_id
    driver.create("empty", parent)
    driver.apply_diff("empty", parent, io.BytesIO(layer_tar({})))
    many: dict[str, bytes | None] = {}
    for d in range(20):
        many[f"dir-{d}"] = None
        for f in range(100):
            many[f"dir-{d}/file-{f}"] = os.urandom(f * 37)
    driver.create("many", "empty")
    driver.apply_diff("many", "empty", io.BytesIO(layer_tar(many, whiteouts=["etc"])))
    driver.create_read_write("was-sandbox", "many", None)
    driver.apply_diff("was-sandbox", "many", io.BytesIO(layer_tar({"over": b"sandbox"})))
    vhds = sorted(root.glob("*/layer.vhd"))
    assert len(vhds) == len(sample_layers) + 3
    return vhds


def _image_size(vhd: Path) -> int:
    footer = read_footer(vhd)
    assert footer is not None, f"{vhd}: no valid VHD footer"
    assert footer.disk_type == 2 and footer.current_size == vhd.stat().st_size - FOOTER_SIZE
    return footer.current_size


def test_layer_vhds_e2fsck_truncated_copy(tmp_path: Path, sample_layers: list[Path]) -> None:
    """Every ``layer.vhd``, cut before its footer, passes ``e2fsck -fn``."""
    for vhd in _build_layers(tmp_path / "root", sample_layers):
        size = _image_size(vhd)
        copy = tmp_path / f"{vhd.parent.name}.ext4"
        with open(vhd, "rb") as src, open(copy, "wb") as dst:
            done = 0
            while done < size:
                done += os.copy_file_range(src.fileno(), dst.fileno(), size - done)
        try:
            assert copy.stat().st_size == size
            e2fsck_clean(copy)
        finally:
            copy.unlink()


@requires("loop", "losetup")
def test_layer_vhds_e2fsck_loop(tmp_path: Path, sample_layers: list[Path]) -> None:
    """Every ``layer.vhd`` through a read-only loop device limited to the image passes."""
    for vhd in _build_layers(tmp_path / "root", sample_layers):
        size = _image_size(vhd)
        attach = run(["losetup", "--find", "--show", "--read-only", "--sizelimit", str(size), vhd])
        assert attach.returncode == 0, _describe(attach)
        device = attach.stdout.strip()
        assert re.fullmatch(r"/dev/loop\d+", device), device
        try:
            e2fsck_clean(device)
        finally:
            run(["losetup", "--detach", device])
