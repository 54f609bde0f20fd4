"""lcow._util.atomic: temp-then-rename output, temporary names, durable renames."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from lcow._util.atomic import (
    atomic_output,
    fsync_dir,
    is_temporary,
    output_to,
    replace_durably,
    temporary_path,
)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("fsync", [False, True])
def test_atomic_output_commits_the_whole_file(tmp_path: Path, fsync: bool) -> None:
    dst = tmp_path / "out"
    dst.write_bytes(b"old")
    with atomic_output(dst, fsync=fsync, mode=0o600) as fd:
        os.write(fd, b"new contents")
        assert dst.read_bytes() == b"old"  # not visible until the block ends
        (tmp,) = [n for n in _names(tmp_path) if n != "out"]
        assert re.fullmatch(r"\.out\.tmp-[0-9a-f]{12}", tmp) and is_temporary(tmp)
    assert dst.read_bytes() == b"new contents"
    assert stat.S_IMODE(dst.stat().st_mode) == 0o600
    assert _names(tmp_path) == ["out"]


def test_atomic_output_failure_keeps_the_old_file(tmp_path: Path) -> None:
    dst = tmp_path / "out"
    dst.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(dst, fsync=True) as fd:
        os.write(fd, b"half")
        raise RuntimeError("stop")
    assert dst.read_bytes() == b"old"
    assert _names(tmp_path) == ["out"]


def test_a_fixed_temporary_name_overwrites_a_leftover(tmp_path: Path) -> None:
    dst, tmp = tmp_path / "state.json", tmp_path / ".state.json.tmp"
    tmp.write_bytes(b"a longer leftover of a killed writer")
    with atomic_output(dst, temporary=tmp) as fd:
        os.write(fd, b"{}")
    assert dst.read_bytes() == b"{}"
    assert _names(tmp_path) == ["state.json"]


def test_output_to_a_descriptor_writes_in_place(tmp_path: Path) -> None:
    path = tmp_path / "mine"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with output_to(fd, fsync=True) as out:
            assert out == fd
            os.write(out, b"data")
        os.fstat(fd)  # still open: the caller's
        assert path.read_bytes() == b"data"
        assert _names(tmp_path) == ["mine"]
    finally:
        os.close(fd)


def test_output_to_a_path_is_atomic(tmp_path: Path) -> None:
    dst = tmp_path / "out"
    with pytest.raises(RuntimeError), output_to(dst) as fd:
        os.write(fd, b"half")
        raise RuntimeError("stop")
    assert _names(tmp_path) == []
    with output_to(dst) as fd:
        os.write(fd, b"whole")
    assert dst.read_bytes() == b"whole"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (".layer.vhd.tmp-0123456789ab", True),
        (".abc.tmp-x", True),
        (".layer.vhd", False),
        ("layer.vhd.tmp-0123456789ab", False),  # not hidden: a name a user may choose
        ("layer.vhd", False),
    ],
)
def test_is_temporary(name: str, expected: bool) -> None:
    assert is_temporary(name) is expected


def test_temporary_paths_are_beside_the_destination_and_fresh(tmp_path: Path) -> None:
    first, second = temporary_path(tmp_path / "x"), temporary_path(tmp_path / "x")
    assert first != second
    assert os.path.dirname(first) == str(tmp_path)
    assert is_temporary(os.path.basename(first))
    assert temporary_path("x").startswith(".x.tmp-")  # a bare name stays relative


def test_replace_durably_across_directories(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"x")
    replace_durably(tmp_path / "a" / "f", tmp_path / "b" / "g")
    assert _names(tmp_path / "a") == [] and (tmp_path / "b" / "g").read_bytes() == b"x"


def test_fsync_dir_wants_a_directory(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        fsync_dir(tmp_path / "f")
