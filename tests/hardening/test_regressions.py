"""Regression tests for what the hardening work found (see ``benchmarks/RELIABILITY.md``).

Each test names the finding it guards: found by the hostile corpus, the fuzzers (their inputs
also replay in ``test_fuzz_regressions.py``) or by review while writing them.
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from lcow import ConvertOptions, tar2ext4
from lcow._util.decompress import decompress
from lcow.cli.main import main
from lcow.cli.status import ExitStatus
from lcow.errors import CorruptImage, InvalidArgument
from lcow.graphdriver.driver import Driver
from lcow.storage.dataroot import DataRoot
from tests.harness.hostile.tarbuild import END, file, member, sparse_v1

DEEP_JSON = b"[" * 50_000


def _convert(tmp: Path, data: bytes, **options: object) -> None:
    src = tmp / "in.tar"
    src.write_bytes(data)
    tar2ext4(src, tmp / "out.img", ConvertOptions(**options))  # type: ignore[arg-type]


# -- tar reader and converter ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"size", b"12abc"),  # was ValueError (corpus: pax-size-not-a-number)
        (b"size", b"-1024"),  # was OverflowError; could move the reader backwards
        (b"uid", b"-1"),
        (b"gid", b" 7"),
        (b"SCHILY.devmajor", b"sp"),  # was ValueError (fuzz: tar_reader)
        (b"SCHILY.devminor", b"1_0"),
        (b"GNU.sparse.offset", b"x"),
        (b"size", b"9" * 40),
    ],
)
def test_pax_numbers_must_be_decimal(key: bytes, value: bytes, tmp_path: Path) -> None:
    data = file(b"victim", b"x", records=[(key, value)]) + END
    with pytest.raises(InvalidArgument, match=r"victim|PaxHeader"):  # the member or its header
        _convert(tmp_path, data)


def test_owner_beyond_32_bits(tmp_path: Path) -> None:
    """Was OverflowError from the inode arrays (corpus: pax-uid-huge)."""
    data = file(b"owner", b"x", records=[(b"uid", b"4294967296")]) + END
    with pytest.raises(InvalidArgument, match="owner: uid 4294967296 is out of range"):
        _convert(tmp_path, data)


def test_negative_owner_from_a_base256_field(tmp_path: Path) -> None:
    data = file(b"neg", b"x", uid=-5) + END
    with pytest.raises(InvalidArgument, match="neg: uid -5"):
        _convert(tmp_path, data)


def test_device_numbers_beyond_what_ext4_keeps(tmp_path: Path) -> None:
    """Were silently masked into another device (corpus: device-major-too-big)."""
    data = member(b"dev", type=b"3", major=1, minor=1 << 20) + END
    with pytest.raises(InvalidArgument, match="dev: device minor"):
        _convert(tmp_path, data)


@pytest.mark.parametrize("hidden", [b"", b".", b".."])
def test_whiteout_of_a_dot_name(hidden: bytes, tmp_path: Path) -> None:
    """``a/.wh...`` made a directory entry named ``..`` (corpus: whiteout-dotdot)."""
    data = file(b"a/.wh." + hidden) + END
    with pytest.raises(InvalidArgument, match="whiteout"):
        _convert(tmp_path, data, convert_whiteouts=True)
    _convert(tmp_path, data)  # without -overlay it is an ordinary file name


def test_sparse_map_limit_keeps_its_category(tmp_path: Path) -> None:
    """A sparse map over the segment limit was reported as 'malformed' (corpus:
    sparse-count-bomb)."""
    from lcow.errors import LimitExceeded

    records = [
        (b"GNU.sparse.major", b"1"),
        (b"GNU.sparse.minor", b"0"),
        (b"GNU.sparse.name", b"bomb"),
        (b"GNU.sparse.realsize", b"1"),
    ]
    payload = b"9999999999\n0\n1\n".ljust(512, b"\x00") + b"x"
    data = member(b"GNUSparseFile.0/bomb", payload, records=records)
    with pytest.raises(LimitExceeded, match="bomb: sparse map too large"):
        _convert(tmp_path, data + END)


def test_sparse_map_block_must_fit_the_member(tmp_path: Path) -> None:
    """A 1.0 map block larger than the member's data left it a negative data size."""
    raw = bytearray(sparse_v1(b"s", 4096, [(0, b"y" * 10)]))
    # shrink the member's size field to 100 bytes: less than its own map block
    header_at = raw.index(b"GNUSparseFile.0/s\x00")
    raw[header_at + 124 : header_at + 136] = b"%011o\x00" % 100
    raw[header_at + 148 : header_at + 156] = b" " * 8
    raw[header_at + 148 : header_at + 156] = b"%06o\x00 " % sum(raw[header_at : header_at + 512])
    with pytest.raises(InvalidArgument, match="sparse map"):
        _convert(tmp_path, bytes(raw) + END)


def test_gzip_output_is_bounded_per_write() -> None:
    """A 1 MiB read of a gzip bomb expanded into one huge buffer (corpus: deep-10k-every-level
    peaked at 250 MiB, zeros-bomb)."""
    packed = gzip.compress(bytes(64 << 20), compresslevel=9)
    assert len(packed) < 1 << 20
    source = io.BytesIO(packed)
    sizes = [len(chunk) for chunk in decompress("gzip", source.read, name="bomb")]
    assert sum(sizes) == 64 << 20
    assert max(sizes) <= 1 << 20


def test_gzip_members_and_trailing_garbage() -> None:
    one = gzip.compress(b"a" * 3_000_000)
    two = gzip.compress(b"b" * 10)
    out = b"".join(decompress("gzip", io.BytesIO(one + two).read, name="in"))
    assert out == b"a" * 3_000_000 + b"b" * 10
    with pytest.raises(InvalidArgument, match=r"^in: corrupt gzip stream"):
        b"".join(decompress("gzip", io.BytesIO(one + b"garbage!").read, name="in"))
    with pytest.raises(InvalidArgument, match=r"^in: truncated gzip"):
        b"".join(decompress("gzip", io.BytesIO(one[:-20]).read, name="in"))


# -- JSON nested past the interpreter's recursion limit --------------------------------------


def test_deep_layerchain_is_corrupt(tmp_path: Path) -> None:
    """json.loads raised RecursionError, not the documented CorruptImage (review; replayed by
    fuzz/regressions/layerchain)."""
    root = DataRoot(tmp_path / "root")
    root.create()
    (root.root / "l").mkdir()
    (root.root / "l" / "layerchain.json").write_bytes(DEEP_JSON)
    (root.root / "l" / "lcow-layer.json").write_bytes(DEEP_JSON)
    with pytest.raises(CorruptImage, match="layerchain"):
        root.read_chain("l")
    assert root.read_meta("l") == {}


def test_deep_manifest_fails_the_import_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A docker-save manifest.json nested 50,000 deep was an internal error (exit 1)."""
    image = tmp_path / "image.tar"
    with tarfile.open(image, "w") as tf:
        for name, data in (("manifest.json", DEEP_JSON), ("x.json", json.dumps({}).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    root = tmp_path / "root"
    assert main(["--root", str(root), "import", str(image)]) == ExitStatus.BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("lcow: ") and "manifest.json" in err
    assert DataRoot(root).layer_ids() == []


def test_xattr_name_over_255_bytes_is_a_limit() -> None:
    """``pack_xattrs`` hit ``struct.error`` on a 300-byte name (corpus: xattr-name-over-255)."""
    from lcow.errors import LimitExceeded
    from lcow.formats.ext4.xattrs import pack_xattrs

    with pytest.raises(LimitExceeded, match="owner: xattr name"):
        pack_xattrs([(1, b"n" * 300, b"1")], owner="owner")


class _FailingSource(io.BytesIO):
    """Fault injection: a tar stream (a binary file object without a descriptor, read through
    ``read``) whose source fails after ``limit`` bytes."""

    def __init__(self, data: bytes, limit: int) -> None:
        super().__init__(data)
        self.limit = limit

    def read(self, size: int | None = -1) -> bytes:
        pos = self.tell()
        if pos >= self.limit:
            raise OSError(errno.EIO, "injected read failure")
        left = self.limit - pos
        return super().read(left if size is None or size < 0 else min(size, left))


@pytest.mark.parametrize("cut", ["in-header", "in-data", "after-end-marker"])
def test_a_failing_source_never_leaves_an_image(tmp_path: Path, cut: str) -> None:
    """The source failing anywhere — also while its trailing padding is drained, after the
    converter has seen the end marker — is the error, and no ``layer.vhd`` is committed."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(3):
            info = tarfile.TarInfo(f"f{i}")
            info.size = 1 << 20
            tar.addfile(info, io.BytesIO(bytes(info.size)))
    data = buf.getvalue()
    limit = {"in-header": 100, "in-data": 1 << 20, "after-end-marker": len(data) - 10}[cut]
    driver = Driver(tmp_path / "root")
    driver.create("layer")
    with pytest.raises(InvalidArgument, match=r"reading failed: .*injected read failure"):
        driver.apply_diff("layer", None, _FailingSource(data, limit))
    assert sorted(os.listdir(tmp_path / "root" / "layer")) == ["layerchain.json"]


def test_apply_diff_never_shows_an_image_without_its_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image is staged, its metadata written, then it is renamed into place: a failure at
    the rename (fault injection standing in for a crash) leaves no image and no stage."""
    driver = Driver(tmp_path / "root", ["lcow.dmverity=true"])
    driver.create("layer")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("f")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    real_replace = os.replace

    def failing_replace(src: Any, dst: Any) -> None:
        if str(dst).endswith("layer.vhd"):
            meta = json.loads((tmp_path / "root" / "layer" / "lcow-layer.json").read_bytes())
            assert "root_hash" in meta  # already durable when the image would appear
            raise OSError(errno.EIO, "injected rename failure")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="injected"):
        driver.apply_diff("layer", None, io.BytesIO(buf.getvalue()))
    assert "layer.vhd" not in os.listdir(tmp_path / "root" / "layer")
    assert not [n for n in os.listdir(tmp_path / "root" / "layer") if ".tmp-" in n]
    monkeypatch.setattr(os, "replace", real_replace)
    assert driver.apply_diff("layer", None, io.BytesIO(buf.getvalue())) == 5
    assert "root_hash" in driver.root.read_meta("layer")
