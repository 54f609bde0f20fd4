"""Check the VHD footer and dm-verity tree against tools we did not write (SPEC §7.1, §8).

Oracles: ``qemu-img`` (qemu-utils) reads our fixed VHD footer and writes footers our parser must
accept; ``veritysetup`` (cryptsetup-bin) verifies our tree through our superblock and, given the
same UUID and salt, formats a byte-identical hash area. ``mke2fs`` makes the ext4 data.

When the environment variable ``CI`` is ``true`` a missing tool or missing root fails the test
instead of skipping it (deselect with ``-m "not root"`` where root is unavailable on purpose).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import NoReturn

import pytest

from lcow.formats.verity import append_hash_tree, read_verity_superblock
from lcow.formats.vhd.footer import (
    FOOTER_SIZE,
    append_fixed_footer,
    build_fixed_footer,
    chs_geometry,
    parse_footer,
    read_footer,
)

MiB = 1 << 20
EXT4_SIZE = 64 * MiB
UUID = bytes(range(100, 116))
ZERO_SALT_HEX = "00" * 32


def _missing(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: required)")
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """Path of ``name`` on PATH (or in /sbin, /usr/sbin); skip, or fail under CI, if absent."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        _missing(f"{name} not found")
    return path


def require_root() -> None:
    """Skip, or fail under CI, unless running as root."""
    if os.geteuid() != 0:
        _missing("needs root (loop devices for veritysetup)")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=300)


def _mkext4(path: Path, size: int = EXT4_SIZE) -> None:
    mke2fs = require_tool("mke2fs")
    result = _run(mke2fs, "-q", "-F", "-t", "ext4", "-b", "4096", str(path), f"{size // 1024}K")
    assert result.returncode == 0, result.stderr
    assert path.stat().st_size == size


def _qemu_virtual_size(qemu_img: str, *args: str) -> int:
    result = _run(qemu_img, "info", "--output=json", *args)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    return int(info["virtual-size"])


def _footer_for(path: Path, size: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        append_fixed_footer(fd, size)
    finally:
        os.close(fd)


def test_qemu_reads_footed_ext4(tmp_path: Path) -> None:
    qemu_img = require_tool("qemu-img")
    image = tmp_path / "layer.vhd"
    _mkext4(image)
    _footer_for(image, EXT4_SIZE)

    # 64 MiB is not a whole CHS geometry (963 x 8 x 17 sectors = 66,655,616 bytes). qemu uses
    # the footer's current_size instead of the geometry when the creator app is "win ", which is
    # what lcow writes, so the virtual size is exactly the ext4 size.
    cylinders, heads, spt = chs_geometry(EXT4_SIZE)
    assert cylinders * heads * spt * 512 != EXT4_SIZE
    assert _qemu_virtual_size(qemu_img, "-f", "vpc", str(image)) == EXT4_SIZE

    raw = tmp_path / "raw"
    result = _run(qemu_img, "convert", "-f", "vpc", "-O", "raw", str(image), str(raw))
    assert result.returncode == 0, result.stderr
    with image.open("rb") as f:
        expected = f.read(EXT4_SIZE)
    assert raw.read_bytes() == expected


def test_qemu_reads_tar2ext4_variant_by_current_size(tmp_path: Path) -> None:
    # tar2ext4 writes zero creator app and zero geometry. qemu 7.x trusts CHS for unknown
    # creators and then reports a size of 0, unless told to use current_size.
    qemu_img = require_tool("qemu-img")
    image = tmp_path / "layer.vhd"
    _mkext4(image)
    raw = bytearray(build_fixed_footer(EXT4_SIZE, unique_id=bytes(range(16))))
    for offset in (24, 28, 36, 56, 64):  # timestamp, creator app, host OS, geometry, checksum
        raw[offset : offset + 4] = bytes(4)
    checksum = ~(sum(raw)) & 0xFFFFFFFF
    raw[64:68] = checksum.to_bytes(4, "big")
    with image.open("ab") as f:
        f.write(raw)
    assert read_footer(image) is not None

    opts = f"driver=vpc,force_size_calc=current_size,file.driver=file,file.filename={image}"
    assert _qemu_virtual_size(qemu_img, "--image-opts", opts) == EXT4_SIZE


@pytest.mark.parametrize("size", ["1M", "64M", "1G", "40G", "2000G"])
def test_qemu_footers_parse_and_geometry_agrees(tmp_path: Path, size: str) -> None:
    # qemu-img rounds a fixed VPC up to a whole CHS geometry computed with the VHD spec's
    # algorithm and checksums the footer; our parser must accept it and agree on the geometry.
    qemu_img = require_tool("qemu-img")
    image = tmp_path / "q.vhd"
    result = _run(qemu_img, "create", "-q", "-f", "vpc", "-o", "subformat=fixed", str(image), size)
    assert result.returncode == 0, result.stderr
    with image.open("rb") as f:
        f.seek(-FOOTER_SIZE, os.SEEK_END)
        footer = parse_footer(f.read(FOOTER_SIZE))
    assert footer.is_fixed
    assert image.stat().st_size == footer.current_size + FOOTER_SIZE
    assert footer.geometry == chs_geometry(footer.current_size)


def _veritysetup_verify(veritysetup: str, path: Path, root_hex: str, offset: int) -> int:
    result = _run(veritysetup, "verify", str(path), str(path), root_hex, f"--hash-offset={offset}")
    return result.returncode


@pytest.mark.root
def test_veritysetup_verifies_our_tree(tmp_path: Path) -> None:
    veritysetup = require_tool("veritysetup")
    require_root()
    image = tmp_path / "layer.vhd"
    _mkext4(image)
    fd = os.open(image, os.O_RDWR)
    try:
        info = append_hash_tree(fd, EXT4_SIZE)
        append_fixed_footer(fd, EXT4_SIZE + info.hash_size)
    finally:
        os.close(fd)
    assert read_footer(image) is not None

    assert _veritysetup_verify(veritysetup, image, info.root_hash_hex, info.hash_offset) == 0
    wrong_root = bytes(b ^ 0xFF for b in info.root_hash).hex()
    assert _veritysetup_verify(veritysetup, image, wrong_root, info.hash_offset) != 0

    fd = os.open(image, os.O_RDWR)
    try:
        offset = 40 * MiB + 123
        byte = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([byte[0] ^ 0x01]), offset)
    finally:
        os.close(fd)
    assert _veritysetup_verify(veritysetup, image, info.root_hash_hex, info.hash_offset) != 0


@pytest.mark.root
def test_veritysetup_format_is_byte_identical(tmp_path: Path) -> None:
    veritysetup = require_tool("veritysetup")
    require_root()
    ours = tmp_path / "ours"
    _mkext4(ours)
    data = tmp_path / "data"
    shutil.copyfile(ours, data)
    hashes = tmp_path / "hashes"

    result = _run(
        veritysetup,
        "format",
        str(data),
        str(hashes),
        f"--salt={ZERO_SALT_HEX}",
        f"--uuid={uuid.UUID(bytes=UUID)}",
        "--hash=sha256",
        "--format=1",
        "--data-block-size=4096",
        "--hash-block-size=4096",
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"Root hash:\s*([0-9a-f]{64})", result.stdout)
    assert match, result.stdout

    fd = os.open(ours, os.O_RDWR)
    try:
        info = append_hash_tree(fd, EXT4_SIZE, uuid=UUID)
    finally:
        os.close(fd)
    assert info.root_hash_hex == match.group(1)
    with ours.open("rb") as f:
        f.seek(info.hash_offset)
        area = f.read()
    assert area == hashes.read_bytes()
    assert read_verity_superblock(area).uuid == UUID
