"""Hypothesis: random trees -> tar (Python tarfile, PAX) -> image -> read back -> compare.

Trees mix every entry type, odd names (spaces, control characters, backslashes, non-UTF-8 bytes,
255-byte names), xattrs in all three namespaces and both storage places, sparse files, hard links
(also to symlinks, fifos and devices) and duplicates of any type. The oracle is the moby
UnpackLayer model (tests/treemodel.py), checked against

* the kernel: ``e2fsck -fn`` exits 0 and the loop-mounted image matches (root needed);
* dissect.extfs, a reader we did not write (no root needed).

A third test mixes AUFS whiteouts and opaque markers in and converts with ``-overlay``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from lcow import ConvertOptions, tar2ext4
from tests.helpers import TarEntry, assert_e2fsck_clean, loop_mount, requires, write_tar
from tests.property.strategies import layer_entries
from tests.treemodel import compare, expect_from_tar, snapshot_dir, snapshot_image

# More examples for a bug hunt: LCOW_PROPERTY_EXAMPLES=500 pytest tests/property
_SCALE = int(os.environ.get("LCOW_PROPERTY_EXAMPLES", "0"))
_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}


def _convert(entries: list[TarEntry], work: Path, *, overlay: bool = False) -> tuple[Path, Path]:
    tar = write_tar(work / "layer.tar", entries)
    image = work / "out" / "layer.img"
    image.parent.mkdir()
    tar2ext4(tar, image, ConvertOptions(convert_whiteouts=overlay))
    assert [p.name for p in image.parent.iterdir()] == ["layer.img"]
    return tar, image


@requires("root", "loop", "e2fsck")
@settings(max_examples=_SCALE or 25, **_COMMON)  # type: ignore[arg-type]
@given(entries=layer_entries())
def test_roundtrip_through_a_kernel_mount(entries: list[TarEntry]) -> None:
    with tempfile.TemporaryDirectory(prefix="lcow-prop-") as tmp:
        work = Path(tmp)
        tar, image = _convert(entries, work)
        assert_e2fsck_clean(image)
        with loop_mount(image, work / "mnt"):
            problems = compare(expect_from_tar(tar), snapshot_dir(work / "mnt"))
        assert not problems, "\n".join(problems)


@settings(max_examples=_SCALE or 60, **_COMMON)  # type: ignore[arg-type]
@given(entries=layer_entries())
def test_roundtrip_through_dissect(entries: list[TarEntry]) -> None:
    with tempfile.TemporaryDirectory(prefix="lcow-prop-") as tmp:
        tar, image = _convert(entries, Path(tmp))
        problems = compare(expect_from_tar(tar), snapshot_image(image))
        assert not problems, "\n".join(problems)


@requires("root", "loop", "e2fsck")
@settings(max_examples=_SCALE or 25, **_COMMON)  # type: ignore[arg-type]
@given(entries=layer_entries(whiteouts=True))
def test_overlay_roundtrip_through_a_kernel_mount(entries: list[TarEntry]) -> None:
    with tempfile.TemporaryDirectory(prefix="lcow-prop-") as tmp:
        work = Path(tmp)
        tar, image = _convert(entries, work, overlay=True)
        assert_e2fsck_clean(image)
        with loop_mount(image, work / "mnt"):
            expected = expect_from_tar(tar, convert_whiteouts=True)
            problems = compare(expected, snapshot_dir(work / "mnt"))
        assert not problems, "\n".join(problems)
