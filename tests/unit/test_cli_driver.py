"""The driver commands of ``lcow``: every subcommand against a temporary data root.

Each test runs :func:`lcow.cli.main.main` in-process on the userspace backend with small layer
tars built here, and checks the text output, the ``--json`` output and the exit status documented
in README.md ("Driver CLI").
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from lcow.cli.main import COMMANDS, main
from lcow.cli.status import ExitStatus
from lcow.samples import write_sample_image
from tests.helpers import TarEntry, write_tar

README = Path(__file__).resolve().parents[2] / "README.md"

DRIVER_COMMANDS = [name for name, info in COMMANDS.items() if info.needs_root]


class Cli:
    """Runs ``lcow --root <root> ...`` and captures its output."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root = root
        self._capsys = capsys
        self.out = ""
        self.err = ""

    def __call__(self, *argv: str, root: bool = True) -> int:
        self._capsys.readouterr()
        prefix = ["--root", str(self.root)] if root else []
        status = main([*prefix, *argv])
        captured = self._capsys.readouterr()
        self.out, self.err = captured.out, captured.err
        return status

    def json(self, *argv: str) -> Any:
        status = self("--json", *argv)
        assert status == ExitStatus.OK, self.err
        return json.loads(self.out)


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.delenv("LCOW_ROOT", raising=False)
    return Cli(tmp_path / "root", capsys)


@pytest.fixture
def tars(tmp_path: Path) -> list[Path]:
    """Three small layers: a base, whiteouts + opaque dir + hard link, a replacement."""
    folder = tmp_path / "tars"
    folder.mkdir()
    base = write_tar(
        folder / "base.tar",
        [
            TarEntry("etc", "dir", mode=0o755),
            TarEntry("etc/hostname", data=b"base\n"),
            TarEntry("etc/motd", data=b"hello\n", xattrs={"user.note": b"x"}),
            TarEntry("opt", "dir", mode=0o755),
            TarEntry("opt/old", data=b"old\n"),
            TarEntry("bin", "symlink", target="usr/bin"),
            TarEntry("usr", "dir", mode=0o755),
            TarEntry("usr/bin", "dir", mode=0o755),
            TarEntry("usr/bin/sh", data=b"#!shell\n", mode=0o755),
            TarEntry("usr/bin/dash", "hardlink", target="usr/bin/sh"),
        ],
    )
    second = write_tar(
        folder / "second.tar",
        [
            TarEntry("etc", "dir", mode=0o755),
            TarEntry("etc/.wh.hostname"),
            TarEntry("etc/motd", data=b"changed\n"),
            TarEntry("opt", "dir", mode=0o755),
            TarEntry("opt/.wh..wh..opq"),
            TarEntry("opt/new", data=b"new\n"),
        ],
    )
    third = write_tar(
        folder / "third.tar",
        [TarEntry("srv", "dir", mode=0o755), TarEntry("srv/data", data=b"d" * 5000)],
    )
    return [base, second, third]


def _unpack_size(tar: Path) -> int:
    with tarfile.open(tar) as tf:
        return sum(info.size for info in tf)


@pytest.fixture
def chain(cli: Cli, tars: list[Path]) -> list[str]:
    """Layers a <- b <- c applied from ``tars``."""
    parent: list[str] = []
    for layer, tar in zip("abc", tars, strict=True):
        assert cli("create", layer, *(["--parent", parent[-1]] if parent else [])) == 0, cli.err
        assert cli("apply-diff", layer, "-i", str(tar)) == 0, cli.err
        parent.append(layer)
    return parent


# ---------------------------------------------------------------------------------- top level


def test_help_groups_the_driver_commands(cli: Cli) -> None:
    assert cli("--help", root=False) == ExitStatus.OK
    assert "need --root DIR" in cli.out
    for name in DRIVER_COMMANDS:
        assert f"  {name} " in cli.out
    assert "--backend" in cli.out and "KEY=VALUE" in cli.out


_NO_ID = {"cleanup", "status", "ls", "images"}
_EXTRA = {"cat": ["/etc/motd"], "import": []}
_WHOLE = {"snapshotter": ["snapshotter", "serve", "--address", "x.sock"]}


@pytest.mark.parametrize("command", DRIVER_COMMANDS)
def test_driver_commands_need_a_root(command: str, cli: Cli) -> None:
    argv = [command] if command in _NO_ID else [command, "x", *_EXTRA.get(command, [])]
    argv = _WHOLE.get(command, argv)
    assert cli(*argv, root=False) == ExitStatus.USAGE
    assert "give --root DIR" in cli.err and "LCOW_ROOT" in cli.err


def test_root_from_environment(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LCOW_ROOT", str(cli.root))
    assert cli("create", "x", root=False) == ExitStatus.OK
    assert (cli.root / "x" / "layerchain.json").read_bytes() == b"null"


def test_tools_need_no_root(cli: Cli, tmp_path: Path, tars: list[Path]) -> None:
    out = tmp_path / "o.vhd"
    assert cli("tar2ext4", "-i", str(tars[2]), "-o", str(out), "-vhd", root=False) == 0, cli.err
    assert out.exists() and not cli.root.exists()


def test_every_command_is_documented_in_the_readme() -> None:
    text = README.read_text()
    section = text[text.index("## Driver CLI") :]
    for name in DRIVER_COMMANDS:
        assert f"`{name}" in section, name


def test_bad_driver_options(cli: Cli) -> None:
    assert cli("-o", "lcow.bogus=1", "status") == ExitStatus.BAD_INPUT
    assert "unknown option 'lcow.bogus'" in cli.err
    assert cli("-o", "lcow.globalmode=maybe", "status") == ExitStatus.BAD_INPUT
    assert cli("-o", "novalue", "status") == ExitStatus.USAGE
    assert "expected KEY=VALUE" in cli.err
    assert cli("--backend", "nope", "status") == ExitStatus.USAGE
    assert not cli.root.exists()


def test_options_reach_the_driver(cli: Cli) -> None:
    status = dict(
        cli.json("-o", "lcow.globalmode=true", "--backend", "userspace", "status")["Status"]
    )
    assert status["Mode"] == "global" and status["Backend"] == "userspace"


def test_json_flag_after_the_command(cli: Cli) -> None:
    assert cli("status", "--json") == ExitStatus.OK
    assert json.loads(cli.out)["Status"][0] == ["LCOW", ""]


# ---------------------------------------------------------------------------------- create


def test_create(cli: Cli) -> None:
    assert cli("create", "base") == ExitStatus.OK
    assert cli.out == "base\n"
    value = cli.json("create", "child", "--parent", "base")
    assert value == {"Id": "child", "Parent": "base", "Dir": str(cli.root / "child")}
    assert json.loads((cli.root / "child" / "layerchain.json").read_text()) == [
        str(cli.root / "base")
    ]


@pytest.mark.parametrize(
    ("argv", "status", "text"),
    [
        (["create", "x", "--parent", "missing"], ExitStatus.NOT_FOUND, "missing parent missing"),
        (["create", "a/b"], ExitStatus.BAD_INPUT, "invalid layer id"),
        (["create", ".."], ExitStatus.BAD_INPUT, "invalid layer id"),
    ],
)
def test_create_errors(cli: Cli, argv: list[str], status: ExitStatus, text: str) -> None:
    assert cli(*argv) == status
    assert cli.err.startswith("lcow: ") and text in cli.err
    assert cli.out == ""


def test_create_over_a_layer_with_content(cli: Cli, chain: list[str]) -> None:
    assert cli("create", "a") == ExitStatus.ERROR
    assert "already exists" in cli.err


def test_create_rw(cli: Cli) -> None:
    assert cli("create-rw", "rw") == ExitStatus.OK
    assert cli.out == "rw\n"
    assert (cli.root / "rw" / "sandbox.vhdx").is_file()
    value = cli.json("create-rw", "rw2", "--parent", "rw", "--storage-opt", "lcow.sandboxsize=20")
    assert value["Disk"] == str(cli.root / "rw2" / "sandbox.vhdx")
    assert value["Parent"] == "rw"


def test_create_rw_option_errors(cli: Cli) -> None:
    assert cli("create-rw", "x", "-s", "lcow.sandboxsize=19") == ExitStatus.BAD_INPUT
    assert "'lcow.sandboxsize' option cannot be less than 20" in cli.err
    assert cli("create-rw", "y", "-s", "lcow.sandboxsize=abc") == ExitStatus.BAD_INPUT
    assert "failed to parse value 'abc'" in cli.err
    assert cli("create-rw", "z", "-s", "nokey") == ExitStatus.USAGE


# ---------------------------------------------------------------------------------- content


def test_apply_diff_prints_the_unpack_size(cli: Cli, tars: list[Path]) -> None:
    cli("create", "a")
    assert cli("apply-diff", "a", "-i", str(tars[0])) == ExitStatus.OK
    assert cli.out == f"{_unpack_size(tars[0])}\n"
    assert (cli.root / "a" / "layer.vhd").is_file()
    cli("create", "b", "--parent", "a")
    value = cli.json("apply-diff", "b", "--parent", "a", "-i", str(tars[1]))
    assert value == {"Id": "b", "Parent": "a", "Size": _unpack_size(tars[1])}


def test_apply_diff_takes_the_tar_as_an_argument_or_with_i(cli: Cli, tars: list[Path]) -> None:
    cli("create", "a")
    assert cli("apply-diff", "a", str(tars[0])) == ExitStatus.OK, cli.err
    assert cli.out == f"{_unpack_size(tars[0])}\n"
    by_argument = (cli.root / "a" / "layer.vhd").read_bytes()
    cli("create", "b")
    assert cli("apply-diff", "b", "-i", str(tars[0])) == ExitStatus.OK, cli.err
    assert (cli.root / "b" / "layer.vhd").read_bytes()[:-512] == by_argument[:-512]
    cli("create", "c")
    assert cli("apply-diff", "c", str(tars[0]), "-i", str(tars[1])) == ExitStatus.USAGE
    assert "the tar is given twice" in cli.err
    # a name printed back is escaped once, where the message is printed
    assert cli("apply-diff", "c", "x\x1b[31m", "-i", "y") == ExitStatus.USAGE
    assert "'x\\x1b[31m' and -i 'y'" in cli.err
    assert not (cli.root / "c" / "layer.vhd").exists()


def test_apply_diff_from_stdin_gzip(
    cli: Cli, tars: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packed = tmp_path / "layer.tar.gz"
    packed.write_bytes(gzip.compress(tars[2].read_bytes()))
    cli("create", "a")
    with open(packed, "rb") as stdin:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stdin))
        assert cli("apply-diff", "a") == ExitStatus.OK, cli.err
    assert cli.out == f"{_unpack_size(tars[2])}\n"


@pytest.mark.parametrize(
    ("argv", "status"),
    [
        (["apply-diff", "nope", "-i", "IN"], ExitStatus.NOT_FOUND),
        (["apply-diff", "a", "-i", "MISSING"], ExitStatus.NOT_FOUND),
        (["apply-diff", "a", "-i", "GARBAGE"], ExitStatus.BAD_INPUT),
    ],
)
def test_apply_diff_errors(
    cli: Cli, tars: list[Path], tmp_path: Path, argv: list[str], status: ExitStatus
) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x01not a tar" * 100)
    cli("create", "a")
    paths = {"IN": str(tars[0]), "MISSING": str(tmp_path / "missing"), "GARBAGE": str(garbage)}
    assert cli(*[paths.get(a, a) for a in argv]) == status, cli.err
    assert not (cli.root / "a" / "layer.vhd").exists()
    assert not [p for p in (cli.root / "a").iterdir() if ".tmp-" in p.name]


def test_diff_to_a_file_and_stdout(
    cli: Cli, chain: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "b.tar"
    assert cli("diff", "b", "--parent", "a", "-o", str(out)) == ExitStatus.OK
    assert cli.out == ""
    with tarfile.open(out) as tf:
        names = tf.getnames()
    assert "etc/.wh.hostname" in names and "opt/.wh..wh..opq" in names and "opt/new" in names
    value = cli.json("diff", "b", "--parent", "a", "-o", str(tmp_path / "b2.tar"))
    assert value["Bytes"] == (tmp_path / "b2.tar").stat().st_size == out.stat().st_size
    # stdout without a descriptor (a replaced sys.stdout) ...
    stdout = io.TextIOWrapper(io.BytesIO())
    monkeypatch.setattr(sys, "stdout", stdout)
    assert main(["--root", str(cli.root), "diff", "b", "--parent", "a"]) == ExitStatus.OK
    assert stdout.buffer.getvalue() == out.read_bytes()
    # ... and a real one, redirected to a file
    with open(tmp_path / "b3.tar", "wb") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "lcow", "--root", str(cli.root), "diff", "b", "-p", "a"],
            stdout=f,
            stderr=subprocess.PIPE,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "b3.tar").read_bytes() == out.read_bytes()


def test_diff_refuses_json_on_stdout(cli: Cli, chain: list[str]) -> None:
    assert cli("--json", "diff", "b") == ExitStatus.USAGE
    assert "--json needs -o OUT" in cli.err


def test_diff_of_a_missing_layer(cli: Cli, chain: list[str], tmp_path: Path) -> None:
    assert cli("diff", "zz", "-o", str(tmp_path / "x.tar")) == ExitStatus.NOT_FOUND
    assert not (tmp_path / "x.tar").exists()
    assert not list(tmp_path.glob(".x.tar.tmp-*"))


def test_changes(cli: Cli, chain: list[str]) -> None:
    assert cli("changes", "b", "--parent", "a") == ExitStatus.OK
    lines = cli.out.splitlines()
    assert lines == sorted(lines, key=lambda line: line[2:])
    assert "D /etc/hostname" in lines and "C /etc/motd" in lines and "A /opt/new" in lines
    assert "D /opt" in lines  # an opaque directory
    value = cli.json("changes", "b", "--parent", "a")
    assert {"Path": "/etc/hostname", "Kind": 2} in value
    assert {"Path": "/opt/new", "Kind": 1} in value
    assert {"Path": "/etc/motd", "Kind": 0} in value
    assert len(value) == len(lines)


def test_changes_against_no_parent_lists_the_whole_view(cli: Cli, chain: list[str]) -> None:
    value = cli.json("changes", "c")
    assert {"Path": "/srv/data", "Kind": 1} in value
    assert {"Path": "/usr/bin/sh", "Kind": 1} in value
    assert all(c["Kind"] == 1 for c in value)


def test_diff_size(cli: Cli, chain: list[str]) -> None:
    assert cli("diff-size", "c", "--parent", "b") == ExitStatus.OK
    assert cli.out == "5000\n"
    assert cli.json("diff-size", "c", "--parent", "b") == {"Id": "c", "Parent": "b", "Size": 5000}
    assert cli("diff-size", "nope") == ExitStatus.NOT_FOUND


# ---------------------------------------------------------------------------------- queries


def test_exists(cli: Cli, chain: list[str]) -> None:
    assert cli("exists", "a") == ExitStatus.OK
    assert cli.out == "true\n" and cli.err == ""
    assert cli("exists", "nope") == ExitStatus.NOT_FOUND
    assert cli.out == "false\n" and cli.err == ""
    assert cli("--json", "exists", "nope") == ExitStatus.NOT_FOUND
    assert json.loads(cli.out) == {"Id": "nope", "Exists": False}
    assert cli.json("exists", "a") == {"Id": "a", "Exists": True}


def test_exists_without_a_root(cli: Cli) -> None:
    assert cli("exists", "a") == ExitStatus.NOT_FOUND
    assert cli.out == "false\n"
    assert not cli.root.exists()


def test_get_and_put(cli: Cli, chain: list[str]) -> None:
    assert cli("get", "b") == ExitStatus.OK
    lines = cli.out.splitlines()
    assert lines[0] == "/tmp/b-mount"
    assert "userspace" in lines[1] and "no host directory" in lines[1]
    assert lines[2] == "/: 4 entries: bin etc opt usr"
    value = cli.json("get", "b")
    assert value == {
        "Id": "b",
        "Dir": "/tmp/b-mount",
        "Backend": "userspace",
        "Held": False,
        "Entries": ["bin", "etc", "opt", "usr"],
    }
    assert cli("put", "b") == ExitStatus.OK and cli.out == "b\n"
    assert cli.json("put", "b") == {"Id": "b", "Released": False}
    assert cli("put", "unknown") == ExitStatus.OK
    assert cli("get", "unknown") == ExitStatus.NOT_FOUND


def test_get_of_a_create_only_layer(cli: Cli) -> None:
    cli("create", "empty")
    assert cli.json("get", "empty")["Entries"] == []


def test_layer_path_and_metadata(cli: Cli, chain: list[str]) -> None:
    assert cli("layer-path", "a") == ExitStatus.OK
    assert cli.out == f"{cli.root / 'a'}\n"
    assert cli.json("layer-path", "a") == {"Id": "a", "Path": str(cli.root / "a")}
    assert cli("metadata", "a") == ExitStatus.OK
    assert cli.out == f"dir: {cli.root / 'a'}\n"
    assert cli.json("metadata", "zz") == {"dir": str(cli.root / "zz")}  # no existence check
    assert cli("layer-path", "a/b") == ExitStatus.BAD_INPUT


def test_read_commands_need_an_existing_root(cli: Cli) -> None:
    for argv in (["ls"], ["layer-path", "a"], ["metadata", "a"], ["changes", "a"]):
        assert cli(*argv) == ExitStatus.NOT_FOUND
        assert "no such data root" in cli.err
    assert not cli.root.exists()


def test_status(cli: Cli, chain: list[str]) -> None:
    assert cli("status") == ExitStatus.OK
    lines = cli.out.splitlines()
    assert lines[0] == "LCOW:"
    assert "Backend: userspace" in lines and "Layers:  3" in lines
    pairs = cli.json("status")["Status"]
    assert pairs[0] == ["LCOW", ""]
    assert ["Root", str(cli.root)] in pairs


def test_status_initialises_the_root(cli: Cli) -> None:
    assert cli("status") == ExitStatus.OK
    assert (cli.root / "cache").is_dir() and (cli.root / "scratch").is_dir()


# ---------------------------------------------------------------------------------- removal


def test_remove(cli: Cli, chain: list[str]) -> None:
    assert cli("remove", "c") == ExitStatus.OK
    assert cli.out == "c\n" and not (cli.root / "c").exists()
    assert cli.json("remove", "b") == {"Id": "b", "Existed": True}
    assert cli.json("remove", "b") == {"Id": "b", "Existed": False}
    assert not list(cli.root.glob("*-removing"))


def test_remove_and_put_without_a_root(cli: Cli) -> None:
    assert cli("remove", "x") == ExitStatus.OK
    assert cli("put", "x") == ExitStatus.OK
    assert cli("cleanup") == ExitStatus.OK
    assert not cli.root.exists()


def test_cleanup_sweeps_removing_folders(cli: Cli, chain: list[str]) -> None:
    (cli.root / "old-removing" / "sub").mkdir(parents=True)
    (cli.root / "a" / ".layer.vhd.tmp-abc").write_bytes(b"partial")
    assert cli("cleanup") == ExitStatus.OK
    assert cli.out == ""
    assert not (cli.root / "old-removing").exists()
    assert not (cli.root / "a" / ".layer.vhd.tmp-abc").exists()
    (cli.root / "x-removing").mkdir()
    assert cli.json("cleanup") == {"Root": str(cli.root), "Swept": ["x-removing"]}


# ---------------------------------------------------------------------------------- ls


def test_ls(cli: Cli, chain: list[str], tars: list[Path]) -> None:
    cli("create-rw", "rw", "--parent", "c")
    cli("create", "empty")
    assert cli("ls") == ExitStatus.OK
    lines = cli.out.splitlines()
    assert lines[0].split() == ["ID", "PARENT", "DEPTH", "KIND", "CONTENT", "FILE", "DISK"]
    ids = [line.split()[0] for line in lines[2:]]
    assert ids == ["a", "b", "c", "rw", "empty"]
    rows = {row["Id"]: row for row in cli.json("ls")}
    assert rows["a"]["Parent"] is None and rows["c"]["Parent"] == "b"
    assert rows["c"]["Depth"] == 2 and rows["rw"]["Depth"] == 3
    assert rows["a"]["Kind"] == "layer.vhd" and rows["rw"]["Kind"] == "sandbox.vhdx"
    assert rows["empty"]["Kind"] is None and rows["empty"]["FileSize"] is None
    assert rows["a"]["ContentSize"] == _unpack_size(tars[0])
    assert rows["a"]["FileSize"] == (cli.root / "a" / "layer.vhd").stat().st_size
    assert rows["rw"]["ContentSize"] is None
    assert all(row["Error"] is None for row in rows.values())


def test_ls_survives_a_corrupt_chain(cli: Cli, chain: list[str]) -> None:
    (cli.root / "b" / "layerchain.json").write_text("{not json")
    rows = {row["Id"]: row for row in cli.json("ls")}
    assert rows["b"]["Parent"] == "?" and "unmarshall" in rows["b"]["Error"]


def test_ls_of_an_empty_root(cli: Cli) -> None:
    cli("status")
    assert cli("ls") == ExitStatus.OK and cli.out == "(no layers)\n"
    assert cli.json("ls") == []


# ---------------------------------------------------------------------------------- views


def test_cat_reads_through_the_union(cli: Cli, chain: list[str]) -> None:
    assert cli("cat", "c", "/etc/motd") == ExitStatus.OK
    assert cli.out == "changed\n"
    assert cli("cat", "a", "/etc/motd") == ExitStatus.OK and cli.out == "hello\n"
    assert cli("cat", "c", "/bin/sh") == ExitStatus.OK and cli.out == "#!shell\n"  # via symlink
    value = cli.json("cat", "c", "/opt/new")
    assert value == {
        "Id": "c",
        "Path": "/opt/new",
        "Size": 4,
        "Data": base64.b64encode(b"new\n").decode(),
    }


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/etc/hostname", ExitStatus.NOT_FOUND),  # whited out by b
        ("/opt/old", ExitStatus.NOT_FOUND),  # hidden by b's opaque /opt
        ("/etc", ExitStatus.BAD_INPUT),
    ],
)
def test_cat_errors(cli: Cli, chain: list[str], path: str, status: ExitStatus) -> None:
    assert cli("cat", "c", path) == status
    assert cli.err.startswith(f"lcow: {path}")


def test_tree(cli: Cli, chain: list[str]) -> None:
    assert cli("tree", "c") == ExitStatus.OK
    lines = cli.out.splitlines()
    assert lines[0] == "/"
    assert "├── bin -> usr/bin" in lines
    assert any(line.endswith("└── new") for line in lines)
    assert "hostname" not in cli.out and "old" not in cli.out
    assert lines[-1] == "5 directories, 6 files"
    records = cli.json("tree", "c")
    paths = [r["Path"] for r in records]
    assert paths == [
        "/bin", "/etc", "/etc/motd", "/opt", "/opt/new", "/srv", "/srv/data",
        "/usr", "/usr/bin", "/usr/bin/dash", "/usr/bin/sh",
    ]  # fmt: skip
    by_path = {r["Path"]: r for r in records}
    assert by_path["/bin"] == {
        "Path": "/bin", "Type": "symlink", "Mode": 0o777, "Size": 7, "Uid": 0, "Gid": 0,
        "Target": "usr/bin",
    }  # fmt: skip
    assert by_path["/srv/data"]["Size"] == 5000 and by_path["/srv"]["Type"] == "dir"


def test_tree_of_a_subdirectory_with_a_level(cli: Cli, chain: list[str]) -> None:
    assert [r["Path"] for r in cli.json("tree", "c", "/usr", "-L", "1")] == ["/usr/bin"]
    assert [r["Path"] for r in cli.json("tree", "c", "/bin")] == ["/bin/dash", "/bin/sh"]
    assert cli("tree", "c", "bin/") == ExitStatus.OK
    assert cli.out.splitlines()[:3] == ["bin/", "├── dash", "└── sh"]
    assert cli("tree", "c", "/nope") == ExitStatus.NOT_FOUND


# ---------------------------------------------------------------------------------- import


def _chain_ids(tars: list[Path]) -> list[str]:
    """Docker's chain IDs, computed here without lcow."""
    ids: list[str] = []
    previous = ""
    for tar in tars:
        diff_id = "sha256:" + hashlib.sha256(tar.read_bytes()).hexdigest()
        previous = (
            diff_id
            if not previous
            else "sha256:" + hashlib.sha256(f"{previous} {diff_id}".encode()).hexdigest()
        )
        ids.append(previous.removeprefix("sha256:"))
    return ids


@pytest.mark.parametrize("fmt", ["docker", "docker-oci", "oci"])
def test_import(cli: Cli, tars: list[Path], tmp_path: Path, fmt: str) -> None:
    image = write_sample_image(tmp_path / "image.tar", fmt, layers=tars)  # type: ignore[arg-type]
    expected = _chain_ids(tars)
    assert cli("import", str(image)) == ExitStatus.OK, cli.err
    assert cli.out.split() == expected
    assert "3 new, 0 already present" in cli.err
    value = cli.json("import", str(image))
    assert value["Format"] == ("oci-layout" if fmt == "oci" else "docker-archive")
    assert [layer["Id"] for layer in value["Layers"]] == expected
    assert [layer["Created"] for layer in value["Layers"]] == [False] * 3
    assert [layer["Parent"] for layer in value["Layers"]] == [None, *expected[:2]]
    (image_json,) = value["Images"]
    assert image_json["Layers"] == expected and image_json["Top"] == expected[-1]
    assert cli("cat", expected[-1], "/etc/motd") == ExitStatus.OK and cli.out == "changed\n"


def test_import_errors(cli: Cli, tmp_path: Path) -> None:
    assert cli("import", str(tmp_path / "missing.tar")) == ExitStatus.NOT_FOUND
    junk = tmp_path / "junk.tar"
    junk.write_bytes(os.urandom(4096))
    assert cli("import", str(junk)) == ExitStatus.BAD_INPUT
    assert "not a tar archive" in cli.err
    assert cli.json("ls") == []


# ---------------------------------------------------------------------------------- progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_only_on_a_terminal(
    cli: Cli, tars: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = write_sample_image(tmp_path / "image.tar", "oci", layers=tars)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["--root", str(cli.root), "import", str(image)]) == ExitStatus.OK
    assert "import" in terminal.getvalue() and "B/s" in terminal.getvalue()
    main(["--root", str(cli.root), "create", "x"])
    assert main(["--root", str(cli.root), "apply-diff", "x", "-i", str(tars[0])]) == 0
    assert "apply-diff" in terminal.getvalue()
    assert (cli.root / "x" / "layer.vhd").is_file()
