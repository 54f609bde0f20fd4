"""The tar-semantics cases and sample layers read back with dissect.extfs (no root needed).

A second oracle next to the kernel mount in test_tar2ext4_kernel.py, for machines without loop
devices: the image is parsed by a reader we did not write and compared with the moby model.
dissect cannot read inline data, so cases using ``-inline`` are left to the kernel tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lcow import ConvertOptions, tar2ext4
from tests.helpers import write_tar
from tests.integration.cases import CASES
from tests.treemodel import compare, expect_from_tar, snapshot_image


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.dissect])
def test_tar_semantics_read_by_dissect(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    tar = write_tar(tmp_path / "case.tar", case.entries)
    image = tmp_path / "case.img"
    options = ConvertOptions(convert_whiteouts=case.overlay, convert_slash=case.convert_slash)
    tar2ext4(tar, image, options)
    expected = expect_from_tar(
        tar, convert_whiteouts=case.overlay, convert_slash=case.convert_slash
    )
    problems = compare(expected, snapshot_image(image))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", [False, True], ids=["plain", "overlay"])
@pytest.mark.parametrize("index", [0, 1, 2], ids=["base", "whiteouts", "replace"])
def test_sample_layers_read_by_dissect(
    sample_layers: list[Path], index: int, overlay: bool, tmp_path: Path
) -> None:
    image = tmp_path / "layer.vhd"
    options = ConvertOptions(convert_whiteouts=overlay, vhd_footer=True, dm_verity=True)
    tar2ext4(sample_layers[index], image, options)
    problems = compare(
        expect_from_tar(sample_layers[index], convert_whiteouts=overlay), snapshot_image(image)
    )
    assert not problems, "\n".join(problems)
