"""Layer ids on the command line: the 12 characters ``lcow ls`` prints name a layer.

An id that must name an existing layer (commands that fail for a missing one, and ``--parent``) is
taken as it is when that layer exists, else as the unique prefix of one (as ``docker`` does); a
prefix of several is refused with exit 3, listing them. The id ``create``/``create-rw`` make is
new; ``exists``, ``remove``, ``put``, ``layer-path`` and ``metadata`` answer for a missing id
too, so they take it whole and only warn about layers it is the start of.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lcow.cli.main import main
from lcow.cli.status import ExitStatus
from tests.helpers import TarEntry, write_tar

LONG_A = "a1b2c3d4e5f6" + "0" * 52
LONG_B = "a1b2c3d4e5f7" + "1" * 52


class Cli:
    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root = root
        self._capsys = capsys
        self.out = self.err = ""

    def __call__(self, *argv: str) -> int:
        self._capsys.readouterr()
        status = main(["--root", str(self.root), *argv])
        self.out, self.err = self._capsys.readouterr()
        return status


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    """Two layers with 64-character ids sharing 11 characters, the second on the first."""
    cli = Cli(tmp_path / "root", capsys)
    base = write_tar(tmp_path / "a.tar", [TarEntry("etc", "dir"), TarEntry("etc/a", data=b"A")])
    top = write_tar(tmp_path / "b.tar", [TarEntry("etc", "dir"), TarEntry("etc/b", data=b"B")])
    assert cli("create", LONG_A) == 0 and cli("apply-diff", LONG_A, "-i", str(base)) == 0
    assert cli("create", LONG_B, "--parent", LONG_A) == 0
    assert cli("apply-diff", LONG_B, "-i", str(top)) == 0
    return cli


def _short_ids(cli: Cli) -> list[str]:
    assert cli("ls") == ExitStatus.OK
    return [line.split()[0] for line in cli.out.splitlines()[2:]]


def test_the_ids_ls_prints_work_everywhere(cli: Cli, tmp_path: Path) -> None:
    short_a, short_b = _short_ids(cli)
    assert (short_a, short_b) == (LONG_A[:12], LONG_B[:12])
    assert cli("cat", short_b, "/etc/a") == 0 and cli.out == "A"
    assert cli("tree", short_b, "/etc") == 0 and "├── a" in cli.out
    assert cli("changes", short_b, "--parent", short_a) == 0
    assert cli.out.splitlines() == ["C /etc", "A /etc/b"]
    assert cli("diff-size", short_b, "-p", short_a) == 0 and cli.out == "1\n"
    assert cli("diff", short_b, "-p", short_a, "-o", str(tmp_path / "d.tar")) == 0
    assert cli("get", short_b) == 0 and cli.out.startswith(f"/tmp/{LONG_B}-mount\n")
    assert cli("--json", "get", short_b) == 0 and json.loads(cli.out)["Id"] == LONG_B


def test_a_prefix_as_parent_records_the_full_parent(cli: Cli) -> None:
    assert cli("create", "child", "--parent", LONG_B[:12]) == ExitStatus.OK
    chain = json.loads((cli.root / "child" / "layerchain.json").read_text())
    assert chain == [str(cli.root / LONG_B), str(cli.root / LONG_A)]
    assert cli("create-rw", "rw", "-p", LONG_B[:12]) == ExitStatus.OK
    assert json.loads((cli.root / "rw" / "layerchain.json").read_text())[0] == str(
        cli.root / LONG_B
    )


def test_apply_diff_by_prefix(cli: Cli, tmp_path: Path) -> None:
    tar = write_tar(tmp_path / "c.tar", [TarEntry("c", data=b"C")])
    assert cli("create", "layer-c") == 0 and cli("apply-diff", "layer-", "-i", str(tar)) == 0
    assert cli.out == "1\n" and (cli.root / "layer-c" / "layer.vhd").is_file()
    assert cli("--json", "apply-diff", "layer", "-i", str(tar)) == 0
    assert json.loads(cli.out)["Id"] == "layer-c"


@pytest.mark.parametrize("command", ["exists", "remove", "put", "layer-path", "metadata"])
def test_commands_that_answer_for_a_missing_id_take_it_whole(cli: Cli, command: str) -> None:
    short = LONG_B[:12]
    status = cli(command, short)
    assert status == (ExitStatus.NOT_FOUND if command == "exists" else ExitStatus.OK)
    assert str(cli.root / LONG_B) not in cli.out and LONG_B not in cli.out
    assert cli.err == (
        f"lcow: WARNING: {short}: no layer has this id; {command} takes a whole id, and 1 "
        f"start with it: {LONG_B}\n"
    )
    assert (cli.root / LONG_B / "layer.vhd").is_file()
    assert cli(command, "ffff") == status and cli.err == ""  # the start of nothing: no warning


def test_a_retried_remove_does_not_delete_a_longer_id(cli: Cli, tmp_path: Path) -> None:
    for layer in ("a", "a-b"):
        assert cli("create", layer) == ExitStatus.OK
    for _ in range(2):
        assert cli("remove", "a") == ExitStatus.OK and cli.out == "a\n"
    assert "a-b" in cli.err  # the second one warns ...
    assert (cli.root / "a-b").is_dir() and not (cli.root / "a").exists()  # ... and keeps it
    assert cli("exists", "a") == ExitStatus.NOT_FOUND and cli.out == "false\n"


def test_an_ambiguous_prefix_is_refused_listing_the_layers(cli: Cli) -> None:
    for argv in (["cat", "a1b2", "/etc/a"], ["diff-size", "a1b2c3d4e5f"], ["tree", "a"]):
        assert cli(*argv) == ExitStatus.BAD_INPUT
        assert cli.out == ""
        assert cli.err == (
            f"lcow: {argv[1]}: ambiguous layer id prefix, 2 layers start with it: "
            f"{LONG_A}, {LONG_B}\n"
        )
    assert (cli.root / LONG_A).is_dir() and (cli.root / LONG_B).is_dir()
    assert cli("create", "x", "--parent", "a1b2") == ExitStatus.BAD_INPUT
    assert not (cli.root / "x").exists()


def test_an_exact_id_wins_over_a_prefix(cli: Cli) -> None:
    assert cli("create", "a1b2") == ExitStatus.OK  # a new id may be a prefix of others
    assert cli("--json", "tree", "a1b2") == 0 and json.loads(cli.out) == []
    assert cli("get", "a1b2") == 0 and cli.out.startswith("/tmp/a1b2-mount\n")
    assert cli("remove", "a1b2") == 0 and cli.out == "a1b2\n"
    assert (cli.root / LONG_A).is_dir() and (cli.root / LONG_B).is_dir()


def test_a_prefix_of_no_layer_is_not_found(cli: Cli) -> None:
    assert cli("cat", "ffff", "/etc/a") == ExitStatus.NOT_FOUND
    assert cli("changes", LONG_B, "--parent", "ffff") == ExitStatus.NOT_FOUND
