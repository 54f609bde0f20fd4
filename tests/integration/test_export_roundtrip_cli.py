"""The ``lcow vhd2tar`` command (issue 3, SPEC §5.3): to a pipe, a file or a redirected stdout,
its JSON summary, ``--top``, ``--no-whiteout-conversion``, its errors and a reader that goes
away.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import TarEntry, write_tar
from tests.integration.export_roundtrip import (
    KiB,
    convert,
    every_type,
    export,
    read_members,
    whiteout_entries,
)

# --------------------------------------------------------------------------------------------
# the lcow vhd2tar command


def _lcow(
    *args: str | os.PathLike[str], stdout: int | None = subprocess.PIPE
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "lcow", "vhd2tar", *(os.fspath(arg) for arg in args)],
        stdout=stdout,
        stderr=subprocess.PIPE,
        check=False,
    )


@pytest.fixture
def layer(tmp_path: Path) -> tuple[Path, Path]:
    src = write_tar(tmp_path / "layer.tar", [*every_type()[:14], *whiteout_entries()])
    return src, convert(src, tmp_path)


def test_cli_to_stdout_pipe(layer: tuple[Path, Path], tmp_path: Path) -> None:
    _, image = layer
    proc = _lcow("-i", image)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    out, _ = export(image, tmp_path)
    assert proc.stdout == out.read_bytes()


def test_cli_to_file_and_json(layer: tuple[Path, Path], tmp_path: Path) -> None:
    _, image = layer
    target = tmp_path / "out" / "layer.tar"
    target.parent.mkdir()
    proc = _lcow("-i", image, "-o", target, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["bytes"] == target.stat().st_size
    assert summary["entries"] == len(read_members(target))
    assert [p.name for p in target.parent.iterdir()] == ["layer.tar"]  # no temporaries left
    proc = _lcow("-i", image, "-o", target)
    assert proc.returncode == 0
    assert b"entries" in proc.stdout


def test_cli_json_goes_to_stderr_with_the_tar_on_stdout(layer: tuple[Path, Path]) -> None:
    _, image = layer
    proc = _lcow("-i", image, "--json")
    assert proc.returncode == 0
    summary = json.loads(proc.stderr)
    assert summary["bytes"] == len(proc.stdout)
    assert summary["output"] is None


def test_cli_to_a_regular_file_on_stdout(layer: tuple[Path, Path], tmp_path: Path) -> None:
    _, image = layer
    with open(tmp_path / "redirected.tar", "wb") as f:
        proc = _lcow("-i", image, stdout=f.fileno())
    assert proc.returncode == 0
    out, _ = export(image, tmp_path)
    assert (tmp_path / "redirected.tar").read_bytes() == out.read_bytes()


def test_cli_no_whiteout_conversion(layer: tuple[Path, Path]) -> None:
    _, image = layer
    proc = _lcow("-i", image, "--no-whiteout-conversion")
    assert proc.returncode == 0
    names = [n for n, _ in read_members(proc.stdout)]
    assert b"keep/gone" in names and not [n for n in names if b".wh." in n]


def test_cli_top(tmp_path: Path) -> None:
    src = write_tar(
        tmp_path / "sandbox.tar",
        [
            TarEntry("upper", kind="dir"),
            TarEntry("upper/f", data=b"f"),
            TarEntry("work", kind="dir"),
        ],
    )
    image = convert(src, tmp_path)
    proc = _lcow("-i", image, "--top", "/upper")
    assert proc.returncode == 0, proc.stderr
    assert [n for n, _ in read_members(proc.stdout)] == [b"f"]
    assert _lcow("-i", image, "--top", "/nope").returncode == 4
    assert _lcow("-i", image, "--top", "upper").returncode == 2


def test_cli_errors(tmp_path: Path) -> None:
    proc = _lcow("-i", tmp_path / "missing.vhd")
    assert proc.returncode == 4
    assert proc.stderr.startswith(b"lcow: ")
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(64 * KiB))
    proc = _lcow("-i", junk)
    assert proc.returncode == 3
    assert b"lcow: " in proc.stderr
    assert _lcow().returncode == 2  # -i is required


def test_cli_refuses_a_terminal(layer: tuple[Path, Path]) -> None:
    _, image = layer
    master, slave = os.openpty()
    try:
        proc = _lcow("-i", image, stdout=slave)
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 2
    assert b"terminal" in proc.stderr


@pytest.mark.skipif(shutil.which("cat") is None, reason="needs cat")
def test_cli_stops_quietly_when_the_reader_goes_away(layer: tuple[Path, Path]) -> None:
    """``lcow vhd2tar | head`` ends as other tools do: no message, status 141 (SIGPIPE's) when
    the reader left before the end, 0 if everything was written first."""
    _, image = layer
    cmd = f"{sys.executable} -m lcow vhd2tar -i {image} | head -c 100 > /dev/null"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, check=False)
    assert proc.returncode in (0, 141), proc.stderr
    assert proc.stderr == b""
