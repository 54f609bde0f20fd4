"""The ``lcow`` command line: parsing, flag mapping, exit codes, output (no root, no converter).

The converter is replaced by a fake in ``lcow.cli.tar2ext4_cmd`` / ``lcow.cli.demo_cmd``, so these
tests pin the CLI contract on their own; the real conversion is covered in tests/integration.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lcow import errors
from lcow.cli import demo_cmd, tar2ext4_cmd
from lcow.cli._format import format_size, format_table, parse_size
from lcow.cli.main import COMMANDS, main
from lcow.cli.status import ExitStatus, UsageError, error_message, exit_status_for
from lcow.convert.options import DEFAULT_MAX_SIZE, ConvertOptions, ConvertResult
from lcow.formats.vhd.footer import read_footer

README = Path(__file__).resolve().parents[2] / "README.md"

RESULT = ConvertResult(
    entries=3, content_size=10, image_size=1 << 20, file_size=(1 << 20) + 512, inodes=13, blocks=9
)


class FakeConverter:
    """Records calls; writes a file at ``dst`` or raises ``error``."""

    def __init__(self, result: ConvertResult = RESULT, error: BaseException | None = None) -> None:
        self.calls: list[tuple[Any, Path, ConvertOptions]] = []
        self.result = result
        self.error = error

    def __call__(self, src: Any, dst: Any, options: ConvertOptions) -> ConvertResult:
        self.calls.append((src, Path(dst), options))
        if options.progress is not None:
            options.progress(100)
            options.progress(300)
        if self.error is not None:
            raise self.error
        Path(dst).write_bytes(b"image")
        return self.result


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeConverter:
    converter = FakeConverter()
    monkeypatch.setattr(tar2ext4_cmd, "tar2ext4", converter)
    monkeypatch.setattr(demo_cmd, "tar2ext4", converter)
    return converter


@pytest.fixture
def tar_in(tmp_path: Path) -> Path:
    path = tmp_path / "in.tar"
    path.write_bytes(b"\0" * 1024)
    return path


# ---------------------------------------------------------------------------------- statuses


def test_exit_status_values_are_fixed() -> None:
    assert {s.name: s.value for s in ExitStatus} == {
        "OK": 0,
        "ERROR": 1,
        "USAGE": 2,
        "BAD_INPUT": 3,
        "NOT_FOUND": 4,
        "NOT_SUPPORTED": 5,
        "INTERRUPTED": 130,
        "BROKEN_PIPE": 141,
    }


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (errors.InvalidArgument("x"), ExitStatus.BAD_INPUT),
        (errors.LimitExceeded("x"), ExitStatus.BAD_INPUT),
        (errors.CorruptImage("x"), ExitStatus.BAD_INPUT),
        (errors.NotFound("x"), ExitStatus.NOT_FOUND),
        (FileNotFoundError(2, "No such file or directory", "p"), ExitStatus.NOT_FOUND),
        (errors.NotSupported("x"), ExitStatus.NOT_SUPPORTED),
        (errors.AlreadyExists("x"), ExitStatus.ERROR),
        (errors.FailedPrecondition("x"), ExitStatus.ERROR),
        (errors.Busy("x"), ExitStatus.ERROR),
        (errors.Timeout("x"), ExitStatus.ERROR),
        (errors.NoSpace("x: no space left on device", entry="x"), ExitStatus.ERROR),
        (errors.LcowError("x"), ExitStatus.ERROR),
        (OSError(5, "Input/output error"), ExitStatus.ERROR),
        (RuntimeError("bug"), ExitStatus.ERROR),
        (UsageError("x"), ExitStatus.USAGE),
        (KeyboardInterrupt(), ExitStatus.INTERRUPTED),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.name,
)
def test_exit_status_for(exc: BaseException, status: ExitStatus) -> None:
    assert exit_status_for(exc) is status


def test_no_space_is_an_lcow_error_and_an_enospc_os_error() -> None:
    exc = errors.NoSpace("a/b: no space left on device", subject="a/b", entry="a/b")
    assert isinstance(exc, errors.LcowError) and isinstance(exc, OSError)
    assert exc.errno == errno.ENOSPC and exc.entry == "a/b" and exc.subject == "a/b"
    assert error_message(exc) == "a/b: no space left on device"
    quota = errors.NoSpace("q: disk quota exceeded", code=errno.EDQUOT)
    assert quota.errno == errno.EDQUOT and quota.entry is None


def _readme_table(heading: str) -> list[list[str]]:
    text = README.read_text()
    section = text[text.index(heading) :]
    rows = []
    for line in section.splitlines()[2:]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip("|"))])
        elif rows:
            break
    return rows[2:]  # after the header and its rule


def test_the_readme_exit_status_table_is_the_code_s() -> None:
    rows = _readme_table("### Exit status")
    assert [(int(code), name.strip("`")) for code, name, _ in rows] == [
        (status.value, status.name) for status in ExitStatus
    ]
    text = dict((name.strip("`"), when) for _, name, when in rows)
    for kind, status in [
        ("AlreadyExists", ExitStatus.ERROR), ("FailedPrecondition", ExitStatus.ERROR),
        ("Busy", ExitStatus.ERROR), ("Timeout", ExitStatus.ERROR),
        ("InvalidArgument", ExitStatus.BAD_INPUT), ("LimitExceeded", ExitStatus.BAD_INPUT),
        ("CorruptImage", ExitStatus.BAD_INPUT), ("NotFound", ExitStatus.NOT_FOUND),
        ("NotSupported", ExitStatus.NOT_SUPPORTED),
    ]:  # fmt: skip
        assert f"`{kind}`" in text[status.name], kind
        assert exit_status_for(getattr(errors, kind)("x")) is status


def test_error_message_forms() -> None:
    assert error_message(errors.InvalidArgument("a/b: bad")) == "a/b: bad"
    assert error_message(FileNotFoundError(2, "No such file or directory", "p")) == (
        "p: No such file or directory"
    )
    assert error_message(OSError(5, "Input/output error")) == "Input/output error"
    assert error_message(KeyboardInterrupt()) == "interrupted"


# ---------------------------------------------------------------------------------- top level


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == ExitStatus.OK
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == ExitStatus.OK
    assert "lcow 0." in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["no-such-command"], "unknown command 'no-such-command'"),
        (["tar2ext4"], "required: -o"),
        (["tar2ext4", "-o", "x", "--bogus"], "unrecognized arguments: --bogus"),
        (["tar2ext4", "-o", "x", "--max-size", "12Q"], "invalid size '12Q'"),
        (["tar2ext4", "-o", "x", "--max-size", "-1"], "invalid size"),
        (["tar2ext4", "-o", "x", "-i"], "expected one argument"),
        (["demo", "--nope"], "unrecognized arguments"),
    ],
)
def test_usage_errors(argv: list[str], text: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == ExitStatus.USAGE
    err = capsys.readouterr().err
    assert "usage: lcow" in err
    assert "lcow: " in err and text in err, err


def test_bare_lcow_shows_the_usage_and_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["--root", "/nowhere"], ["--json", "-v"]):
        assert main(argv) == ExitStatus.USAGE
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("usage: lcow ")
        width = max(len(name) for name in COMMANDS)
        for name, info in COMMANDS.items():
            assert f"\n  {name:<{width}}  {info.summary}\n" in captured.err
        assert captured.err.endswith("\nlcow: no command given\n")
        assert "args" not in captured.err and "required" not in captured.err


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["ls", "--root", "R"], "--root is a global option: put it before the command "
         "(lcow --root R ls)"),
        (["--root", "R", "tree", "X", "--backend", "host"], "--backend is a global option: put "
         "it before the command (lcow --root R --backend host tree X)"),
        (["--root", "R", "changes", "X", "-o", "lcow.globalmode=1", "-p", "P"], "-o is a global "
         "option: put it before the command (lcow --root R -o lcow.globalmode=1 changes X -p P)"),
        (["--root", "R", "status", "--opt=a=b", "-vv"], "--opt is a global option: put it before "
         "the command (lcow --root R --opt=a=b -vv status)"),
        (["--root=R", "ls", "--root", "has space"], "--root is a global option: put it before "
         "the command (lcow --root=R --root 'has space' ls)"),
        (["demo", "--out", "X", "-v"], "-v is a global option: put it before the command "
         "(lcow -v demo --out X)"),
    ],
)  # fmt: skip
def test_a_global_option_after_the_command_gets_a_hint(
    argv: list[str], hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == ExitStatus.USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: lcow ") and err.endswith(f"\nlcow: {hint}\n"), err


def test_the_hinted_command_line_works(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tmp_path / "root")
    assert main(["status", "--root", root]) == ExitStatus.USAGE
    fixed = capsys.readouterr().err.rsplit("(", 1)[1].rstrip(")\n")
    assert fixed == f"lcow --root {root} status"
    assert main(fixed.split()[1:]) == ExitStatus.OK


def test_a_command_s_own_option_is_not_taken_for_a_global_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # diff, tar2ext4 and vhd2tar have their own -o; plugin its own --root and --backend
    assert main(["--root", str(tmp_path), "diff", "x", "-o", str(tmp_path / "o")]) == 4
    assert "global option" not in capsys.readouterr().err
    assert main(["tar2ext4", "-o", str(tmp_path / "o"), "--nope"]) == ExitStatus.USAGE
    assert "unrecognized arguments: --nope" in capsys.readouterr().err
    assert main(["plugin", "serve", "--root", str(tmp_path), "--nope"]) == ExitStatus.USAGE
    assert "global option" not in capsys.readouterr().err


def test_command_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tar2ext4", "--help"]) == ExitStatus.OK
    out = capsys.readouterr().out
    for flag in ("-overlay", "-vhd", "-only-vhd", "-inline", "-convert-slash", "--max-size"):
        assert flag in out
    assert "--dm-verity" in out and "--json" in out


def test_python_dash_m_lcow() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lcow", "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "tar2ext4" in proc.stdout


# ---------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("4096", 4096),
        ("1K", 1024),
        ("1k", 1024),
        ("3M", 3 << 20),
        ("16G", 16 << 30),
        ("2T", 2 << 40),
        ("1GiB", 1 << 30),
        ("1MB", 1 << 20),
        (" 128G ", 128 << 30),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "G", "-1", "1.5G", "1Q", "0x10", "1KK", "1P"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_format_helpers() -> None:
    assert format_size(0) == "0 B"
    assert format_size(1023) == "1023 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(64 << 20) == "64.0 MiB"
    table = format_table(("name", "n"), [("a", "1"), ("bbb", "22")])
    assert table == ["name   n", "----  --", "a      1", "bbb   22"]


# ---------------------------------------------------------------------------------- tar2ext4


def _run(argv: list[str]) -> int:
    return main(["tar2ext4", *argv])


def test_defaults(fake: FakeConverter, tar_in: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.img"
    assert _run(["-i", str(tar_in), "-o", str(out)]) == ExitStatus.OK
    ((src, dst, opts),) = fake.calls
    assert src == str(tar_in)
    assert dst == out
    assert opts == ConvertOptions(max_size=DEFAULT_MAX_SIZE, progress=None)


@pytest.mark.parametrize("dash", ["-", "--"])
def test_every_flag(dash: str, fake: FakeConverter, tar_in: Path, tmp_path: Path) -> None:
    argv = [f"{dash}{f}" for f in ("overlay", "vhd", "inline", "convert-slash", "dm-verity")]
    argv += [f"{dash}max-size", "2G", f"{dash}input", str(tar_in), f"{dash}output", "o.img"]
    assert _run([*argv, "-o", str(tmp_path / "o.img")]) == ExitStatus.OK
    opts = fake.calls[0][2]
    assert opts.convert_whiteouts and opts.vhd_footer and opts.inline_data
    assert opts.convert_slash and opts.dm_verity
    assert opts.max_size == 2 << 30


def test_max_size_equals_form(fake: FakeConverter, tar_in: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "o")
    assert _run(["--max-size=1M", "-i", str(tar_in), "-o", out]) == ExitStatus.OK
    assert _run(["-max-size=3K", "-i", str(tar_in), "-o", out]) == ExitStatus.OK
    assert [c[2].max_size for c in fake.calls] == [1 << 20, 3 << 10]


@pytest.mark.parametrize("explicit", [True, False])
def test_stdin_input(
    explicit: bool,
    fake: FakeConverter,
    tar_in: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with open(tar_in) as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        argv = ["-i", "-"] if explicit else []
        assert _run([*argv, "-o", str(tmp_path / "o")]) == ExitStatus.OK
        assert fake.calls[0][0] == stdin.fileno()


def test_stdin_terminal_is_refused(
    fake: FakeConverter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Tty())
    assert _run(["-o", str(tmp_path / "o")]) == ExitStatus.USAGE
    assert "pipe a tar" in capsys.readouterr().err
    assert not fake.calls


def test_stdout_output_is_refused(fake: FakeConverter, tar_in: Path) -> None:
    assert _run(["-i", str(tar_in), "-o", "-"]) == ExitStatus.USAGE
    assert not fake.calls


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.InvalidArgument("etc/x: unknown tar entry type 'V'"), ExitStatus.BAD_INPUT),
        (
            errors.LimitExceeded("big: disk exceeded maximum size of 4096 bytes"),
            ExitStatus.BAD_INPUT,
        ),
        (errors.NotFound("link: file not found"), ExitStatus.NOT_FOUND),
        (errors.NotSupported("no"), ExitStatus.NOT_SUPPORTED),
        (OSError(28, "No space left on device"), ExitStatus.ERROR),
    ],
)
def test_errors_become_statuses(
    error: BaseException,
    status: ExitStatus,
    fake: FakeConverter,
    tar_in: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.error = error
    assert _run(["-i", str(tar_in), "-o", str(tmp_path / "o")]) == status
    captured = capsys.readouterr()
    assert captured.err == f"lcow: {error_message(error)}\n"
    assert captured.out == ""


def test_internal_error_shows_traceback(
    fake: FakeConverter, tar_in: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.error = ZeroDivisionError("boom")
    assert _run(["-i", str(tar_in), "-o", str(tmp_path / "o")]) == ExitStatus.ERROR
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.endswith("lcow: internal error: ZeroDivisionError: boom\n")


def test_json_output(
    fake: FakeConverter, tar_in: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.result = dataclasses.replace(RESULT, root_hash="ab" * 32, hash_offset=1 << 20)
    assert _run(["-i", str(tar_in), "-o", str(tmp_path / "o"), "--json"]) == ExitStatus.OK
    assert json.loads(capsys.readouterr().out) == dataclasses.asdict(fake.result)


def test_human_summary(
    fake: FakeConverter, tar_in: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.result = dataclasses.replace(RESULT, root_hash="cd" * 32, hash_offset=1 << 20)
    assert _run(["-i", str(tar_in), "-o", str(tmp_path / "o"), "--dm-verity"]) == ExitStatus.OK
    out = capsys.readouterr().out
    assert "3 entries" in out and "13 inodes" in out
    assert "root hash: " + "cd" * 32 in out


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal(
    fake: FakeConverter, tar_in: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _run(["-i", str(tar_in), "-o", str(tmp_path / "a")]) == ExitStatus.OK
    assert fake.calls[-1][2].progress is None
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert _run(["-i", str(tar_in), "-o", str(tmp_path / "b")]) == ExitStatus.OK
    assert callable(fake.calls[-1][2].progress)
    assert "tar2ext4" in terminal.getvalue()


# ---------------------------------------------------------------------------------- -only-vhd


def _fake_ext4(path: Path, size: int = 64 << 10) -> bytes:
    data = bytearray(os.urandom(size))
    data[1080:1082] = b"\x53\xef"
    path.write_bytes(data)
    return bytes(data)


def test_only_vhd_appends_a_footer(
    fake: FakeConverter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = tmp_path / "in.img", tmp_path / "out" / "layer.vhd"
    out.parent.mkdir()
    data = _fake_ext4(src)
    argv = ["-only-vhd", "-i", str(src), "-o", str(out), "-overlay", "--dm-verity", "--json"]
    assert _run(argv) == ExitStatus.OK
    assert not fake.calls, "-only-vhd must not convert"
    written = out.read_bytes()
    assert written[: len(data)] == data and len(written) == len(data) + 512
    footer = read_footer(out)
    assert footer is not None and footer.current_size == len(data) and footer.is_fixed
    assert json.loads(capsys.readouterr().out) == {
        "image_size": len(data),
        "file_size": len(data) + 512,
    }
    assert sorted(p.name for p in out.parent.iterdir()) == ["layer.vhd"]
    assert (out.stat().st_mode & 0o777) == 0o666 & ~_umask()


def test_only_vhd_from_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, out = tmp_path / "in.img", tmp_path / "layer.vhd"
    data = _fake_ext4(src, 8192)
    read, write = os.pipe()
    os.write(write, data)
    os.close(write)
    with os.fdopen(read, "r") as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        assert _run(["-only-vhd", "-o", str(out)]) == ExitStatus.OK
    assert out.read_bytes()[:8192] == data and out.stat().st_size == 8192 + 512


@pytest.mark.parametrize(
    ("content", "status", "text"),
    [
        (b"not an image" * 1000, ExitStatus.BAD_INPUT, "not an ext4 image"),
        (None, ExitStatus.NOT_FOUND, "No such file or directory"),
    ],
)
def test_only_vhd_bad_input_leaves_nothing(
    content: bytes | None,
    status: ExitStatus,
    text: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    src, outdir = tmp_path / "in.img", tmp_path / "out"
    outdir.mkdir()
    if content is not None:
        src.write_bytes(content)
    assert _run(["-only-vhd", "-i", str(src), "-o", str(outdir / "x.vhd")]) == status
    assert text in capsys.readouterr().err
    assert list(outdir.iterdir()) == []


def test_only_vhd_size_not_sector_aligned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.img"
    _fake_ext4(src, 4096 + 100)
    assert _run(["-only-vhd", "-i", str(src), "-o", str(tmp_path / "o")]) == ExitStatus.BAD_INPUT
    assert "multiple of 512" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------- demo


def test_demo_converts_every_sample_layer(
    fake: FakeConverter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == ExitStatus.OK
    assert [dst for _, dst, _ in fake.calls] == [out / str(n) / "layer.vhd" for n in (1, 2, 3)]
    assert all(o.convert_whiteouts and o.vhd_footer for _, _, o in fake.calls)
    assert [Path(src).parent for src, _, _ in fake.calls] == [out] * 3
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.startswith("layer"))
    for column in ("entries", "content", "image", "file", "inodes", "seconds"):
        assert column in header
    assert text.count("layer.vhd") == 3


def test_demo_default_out_dir(
    fake: FakeConverter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == ExitStatus.OK
    assert (tmp_path / "demo-out" / "1" / "layer.vhd").exists()


def test_command_modules_follow_the_protocol() -> None:
    import importlib

    for name, info in COMMANDS.items():
        module = importlib.import_module(info.module)
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        assert isinstance(module.SUMMARY, str) and module.SUMMARY, name
        run: Callable[[argparse.Namespace], int] = module.run
        assert callable(run)
