"""Every hostile case through ``lcow.backends.untar`` directly (item D, the quick half).

The ``extract_archive`` sink of the corpus runs through a host-backend view (a second a case);
this runs the same reader on every non-slow case in-process, into a plain directory on the
test's file system, and judges it by the case's ``extract_expect``: the error category with a
message naming what it must name, or the case's property through the kernel (``lstat``,
``readlink``, xattrs of what was written). It also checks that nothing appeared beside the
destination.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lcow.backends.untar import untar
from lcow.errors import LcowError
from tests.harness.hostile.corpus import ALL_CASES, write_case
from tests.harness.hostile.probes import MountProbe
from tests.helpers import requires

pytestmark = requires("root")

QUICK = [name for name, case in ALL_CASES.items() if not case.slow]


@pytest.fixture
def tmp_path(tmp_path: Path) -> Iterator[Path]:
    """pytest's ``tmp_path``, emptied afterwards by ``rm -rf``: a tree 1,000+ levels deep
    would make pytest's own (recursive) clean-up of old runs fail."""
    yield tmp_path
    subprocess.run(["rm", "-rf", "--", str(tmp_path)], check=True)


@pytest.mark.parametrize("name", QUICK)
def test_untar_meets_the_case(name: str, tmp_path: Path) -> None:
    case = ALL_CASES[name]
    expect = case.extract_expect
    layer = write_case(tmp_path, case)
    work = tmp_path / "work"
    dest = work / "dest"
    dest.mkdir(parents=True)
    (work / "canary").mkdir()
    fd = os.open(dest, os.O_PATH | os.O_DIRECTORY)
    try:
        with open(layer, "rb") as stream:
            if expect.error is None:
                untar(fd, stream)
            else:
                with pytest.raises(LcowError) as info:
                    untar(fd, stream)
                assert isinstance(info.value, expect.error), repr(info.value)
                for needed in expect.names:
                    assert needed in str(info.value), (needed, str(info.value))
    finally:
        os.close(fd)
    assert sorted(os.listdir(work)) == ["canary", "dest"]
    assert os.listdir(work / "canary") == []
    if expect.error is None:
        expect.verify(MountProbe(dest))
