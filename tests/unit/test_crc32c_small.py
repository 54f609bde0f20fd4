"""The superblock's CRC-32C computed in Python (``crc32c_small``) equals the crc32c package's
(the oracle), and checking a superblock does not import that package (its import costs a
converted pull about 12 ms)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import crc32c
import pytest

from lcow.errors import CorruptImage
from lcow.formats.ext4.read_csum import crc32c_small
from lcow.formats.ext4.read_super import parse_superblock
from tests.helpers import requires

_M32 = 0xFFFFFFFF


@pytest.mark.parametrize("size", [0, 1, 3, 255, 1020, 1024, 4096])
def test_it_equals_the_package(size: int) -> None:
    rng = random.Random(size)
    for seed in (0, _M32, rng.getrandbits(32), rng.getrandbits(32)):
        data = rng.randbytes(size)
        # the kernel's crc32c_le is the package's CRC without its pre- and post-inversion
        assert crc32c_small(seed, data) == crc32c.crc32c(data, seed ^ _M32) ^ _M32


_CHECK = """
import sys
from lcow.formats.ext4.read_super import parse_superblock
with open(sys.argv[1], "rb") as f:
    f.seek(1024)
    raw = f.read(1024)
parse_superblock(raw, disk_size=8 << 20, name="image", verify=True)
print("crc32c" in sys.modules)
"""


@requires("mke2fs")
def test_a_superblock_check_does_not_import_the_package(tmp_path: Path) -> None:
    image = tmp_path / "image"
    made = subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-O", "metadata_csum", str(image), "8M"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    proc = subprocess.run([sys.executable, "-c", _CHECK, str(image)], capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    raw = bytearray(image.read_bytes()[1024:2048])
    raw[0x3FC] ^= 1  # a wrong checksum is still refused, by the Python CRC
    with pytest.raises(CorruptImage, match="checksum"):
        parse_superblock(bytes(raw), disk_size=8 << 20, name="image", verify=True)
