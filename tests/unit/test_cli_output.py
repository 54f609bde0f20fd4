"""What ``lcow`` prints when names are hostile, and how it ends when its reader goes away.

Layers are built here with member names holding a newline followed by a forged ``lcow:`` line,
terminal escapes (a title change, a screen clear), a carriage return, a tab, a bidi override and
bytes that are not UTF-8, applied with the driver's API, then every command that prints a name
is run. Each line of stdout and stderr must be printable (one line per line lcow meant to
print), every error must be exactly one ``lcow:`` line, and ``--json`` must stay exact JSON.
Then the pipes: ``lcow … | head`` ends with status 141 and prints nothing on stderr.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from lcow._util.escape import printable
from lcow.cli import _progress, tar2ext4_cmd
from lcow.cli._output import write_json, write_lines
from lcow.cli.main import main
from lcow.cli.status import ExitStatus
from lcow.graphdriver.driver import Driver
from lcow.samples import write_sample_image
from tests.helpers import TarEntry, write_tar

#: A member name that would retitle the terminal, clear it and forge a second ``lcow:`` line.
EVIL = "x\x1b]0;PWNED\x07\x1b[2J\nlcow: all good"
#: A carriage return rewinds the line on a terminal; \x1c-\x1e and U+2028 split str.splitlines.
EVIL_ROOT_ENTRY = "r\rlcow: forged\x1c\u2028"
NOT_UTF8 = b"bad\xff\xfe"
BIDI = "tab\there\u202eevil"
FORGED = ("lcow: all good", "lcow: forged")


def check_lines(text: str, *, errors: int = 0) -> None:
    """Every line is printable, nothing forges a line, and there are ``errors`` error lines."""
    lines = text.split("\n")  # not splitlines(): it would hide \r, \x1c, U+2028 ... in a line
    for line in lines:
        assert line.isprintable(), f"unprintable line {line!r} in {text!r}"
        assert not line.startswith(FORGED), f"forged line {line!r}"
    reported = [
        line for line in lines if line.startswith("lcow: ") and not line.startswith("lcow: WARN")
    ]
    assert len(reported) == errors, text


class Run:
    """Runs ``lcow`` in-process and checks what it printed."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root = root
        self._capsys = capsys
        self.out = ""
        self.err = ""

    def __call__(self, *argv: str, status: int = ExitStatus.OK, root: bool = True) -> str:
        self._capsys.readouterr()
        got = main([*(["--root", str(self.root)] if root else []), *argv])
        self.out, self.err = self._capsys.readouterr()
        assert got == status, (got, self.out, self.err)
        check_lines(self.out)
        check_lines(self.err, errors=0 if status == ExitStatus.OK else 1)
        return self.out


def _layer_tars(folder: Path) -> tuple[Path, Path]:
    base = write_tar(
        folder / "base.tar",
        [
            TarEntry("d", "dir", mode=0o755),
            TarEntry("d/" + EVIL, data=b"evil\n"),
            TarEntry(b"d/" + NOT_UTF8, data=b"x"),
            TarEntry("d/" + BIDI, data=b""),
            TarEntry("d/l", "symlink", target=EVIL),
            TarEntry(EVIL_ROOT_ENTRY, data=b"r"),
            TarEntry("plain", data=b"p" * 10),
        ],
    )
    top = write_tar(
        folder / "top.tar",
        [TarEntry("d", "dir", mode=0o755), TarEntry("d/.wh." + EVIL), TarEntry("d/new" + EVIL)],
    )
    return base, top


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    monkeypatch.delenv("LCOW_ROOT", raising=False)
    root = tmp_path / "root"
    base, top = _layer_tars(tmp_path)
    driver = Driver(root, ["lcow.backend=userspace"])
    driver.create("base", None)
    driver.apply_diff("base", None, base)
    driver.create("top", "base")
    driver.apply_diff("top", "base", top)
    return Run(root, capsys)


# ---------------------------------------------------------------------------------- listings


def test_tree_escapes_names_and_link_targets(run: Run) -> None:
    out = run("tree", "base")
    assert f"{printable(EVIL)} " not in out  # the file and the symlink target, each escaped:
    assert out.count(printable(EVIL)) == 2
    assert printable(NOT_UTF8) in out and "bad\\xff\\xfe" in out
    assert printable(BIDI) in out and "\\u202e" in out
    assert printable(EVIL_ROOT_ENTRY) in out
    lines = out.split("\n")
    assert lines[-3:] == ["", "1 directories, 6 files", ""]


def test_changes_escape_paths(run: Run) -> None:
    out = run("changes", "top", "--parent", "base")
    assert f"D /d/{printable(EVIL)}" in out.split("\n")
    assert f"A /d/new{printable(EVIL)}" in out.split("\n")
    out = run("changes", "base")
    assert f"A /d/{printable(NOT_UTF8)}" in out.split("\n")


def test_get_escapes_root_entries(run: Run) -> None:
    out = run("get", "base")
    assert printable(EVIL_ROOT_ENTRY) in out.split("\n")[2]


def test_ls_with_a_hand_made_hostile_folder(run: Run) -> None:
    # New ids are refused unless plain, but a folder and a chain can still be made by hand: the
    # folder is no layer, the chain naming it is an error, shown exactly in JSON only.
    name = "p\nlcow: forged\x1b[31m"
    (run.root / name).mkdir()
    (run.root / "base" / "layerchain.json").write_text(json.dumps([str(run.root / name)]))
    for argv in (["ls"], ["ls", "--no-trunc"]):
        rows = [line.split() for line in run(*argv).split("\n")[2:-1]]
        assert [row[:3] for row in rows] == [["base", "?", "?"], ["top", "base", "1"]]
    rows = json.loads(run("--json", "ls"))
    assert f"invalid layer id '{name}'" in rows[0]["Error"]


def test_a_hostile_data_root_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = Run(tmp_path / "root\nlcow: forged\x1b]0;x\x07", capsys)
    assert run("create", "a") == "a\n"
    for argv in (["status"], ["layer-path", "a"], ["metadata", "a"]):
        assert printable(str(run.root)) in run(*argv)
    assert json.loads(run("--json", "layer-path", "a"))["Path"] == str(run.root / "a")
    run("cat", "a", "/x", status=ExitStatus.NOT_FOUND)
    Run(tmp_path / "missing\x1b[2J\nlcow: forged", capsys)("ls", status=ExitStatus.NOT_FOUND)


# ---------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/d/" + EVIL, ExitStatus.NOT_FOUND),  # whited out in top
        ("/d/" + EVIL + "/below", ExitStatus.NOT_FOUND),
        ("/d/l", ExitStatus.NOT_FOUND),  # a dangling link to the hostile name
        ("/nope\x00\x1b[2J\nlcow: forged", ExitStatus.NOT_FOUND),
    ],
)
def test_cat_errors_are_one_line(run: Run, path: str, status: ExitStatus) -> None:
    run("cat", "top", path, status=status)
    assert run.out == ""


def test_cat_output_is_the_raw_bytes(run: Run) -> None:
    assert run("cat", "base", "/d/" + EVIL) == "evil\n"


@pytest.mark.parametrize("command", ["exists", "remove", "put", "get", "create", "tree"])
def test_hostile_ids_are_refused_on_one_line(run: Run, command: str) -> None:
    run(command, EVIL, status=ExitStatus.BAD_INPUT)
    assert printable(EVIL) in run.err


def test_usage_errors_are_one_line(run: Run) -> None:
    run("tar2ext4", "-o", "x", "--bo\ngus\x1b[2J", status=ExitStatus.USAGE, root=False)
    run("no\nsuch\x1b[2J", status=ExitStatus.USAGE)
    run("--backend", "ho\nst", "ls", status=ExitStatus.USAGE)


def test_an_internal_error_escapes_its_text(
    run: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def explode(*_: Any, **__: Any) -> Any:
        raise RuntimeError(EVIL)

    monkeypatch.setattr(tar2ext4_cmd, "tar2ext4", explode)
    tar = write_tar(tmp_path / "t.tar", [TarEntry("a")])
    run("tar2ext4", "-i", str(tar), "-o", str(tmp_path / "o"), status=ExitStatus.ERROR)
    assert "Traceback" in run.err and f"internal error: RuntimeError: {printable(EVIL)}" in run.err


# ---------------------------------------------------------------------------------- converters


def _hostile_layer_tars(folder: Path) -> dict[str, Path]:
    """Tars whose conversion warns or fails naming a hostile entry."""
    return {
        "warning": write_tar(
            folder / "xattr.tar", [TarEntry(EVIL, data=b"x", xattrs={"foo.bar": b"1"})]
        ),
        "link": write_tar(folder / "link.tar", [TarEntry("a", "hardlink", target=EVIL)]),
        "pax-nul": write_tar(folder / "nul.tar", [TarEntry("n", pax={"path": "a\x00b" + EVIL})]),
        "junk-type": _raw_tar(folder / "type.tar", EVIL.encode(), typ=b"\x01"),
        "junk-size": _raw_tar(folder / "size.tar", EVIL.encode(), size=b"zz\x1b[2J\nzzzzz"),
    }


def _raw_tar(path: Path, name: bytes, *, typ: bytes = b"0", size: bytes = b"0" * 11) -> Path:
    """One hand-made ustar header (valid checksum) with junk in a field, then the end blocks."""
    header = bytearray(512)
    header[0 : len(name)] = name
    header[100:108] = b"0000644\0"
    header[108:116] = header[116:124] = b"0000000\0"
    header[124:136] = size + b"\0"
    header[136:148] = b"00000000000\0"
    header[156:157] = typ
    header[257:265] = b"ustar\x0000"
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    path.write_bytes(bytes(header) + bytes(1024))
    return path


@pytest.mark.parametrize("case", ["warning", "link", "pax-nul", "junk-type", "junk-size"])
def test_apply_diff_and_tar2ext4_messages(run: Run, tmp_path: Path, case: str) -> None:
    tar = _hostile_layer_tars(tmp_path)[case]
    status = ExitStatus.OK if case == "warning" else None
    run("create", "x")
    out_file = tmp_path / "out.vhd"
    for argv in (
        ["apply-diff", "x", "-i", str(tar)],
        ["tar2ext4", "-i", str(tar), "-o", str(out_file)],
    ):
        if status is None:
            run(*argv, status=ExitStatus.NOT_FOUND if case == "link" else ExitStatus.BAD_INPUT)
        else:
            run(*argv)
            assert "lcow: WARNING: " in run.err  # the warning, escaped, on one line
            assert printable(EVIL) in run.err


def test_verbose_logging_is_escaped(run: Run, tmp_path: Path) -> None:
    tar = _hostile_layer_tars(tmp_path)["warning"]
    handlers, level = list(logging.getLogger().handlers), logging.getLogger().level
    run("-vv", "tar2ext4", "-i", str(tar), "-o", str(tmp_path / "o.vhd"))
    assert f"lcow: WARNING: lcow.convert.tar2ext4: {printable(EVIL)}" in run.err
    # logging is left as it was found (main() is also called in-process)
    assert logging.getLogger().handlers == handlers and logging.getLogger().level == level


def test_vhd2tar_messages(run: Run, tmp_path: Path) -> None:
    out = tmp_path / ("o\x1b]0;t\x07\nlcow: forged.tar")
    image = str(run.root / "base" / "layer.vhd")
    assert printable(str(out)) in run("vhd2tar", "-i", image, "-o", str(out), root=False)
    summary = json.loads(run("vhd2tar", "-i", image, "-o", str(out), "--json", root=False))
    assert summary["output"] == str(out)
    run("vhd2tar", "-i", str(tmp_path / "no\nne\x1b[2J"), "-o", str(out), status=4, root=False)


# ---------------------------------------------------------------------------------- import


def _rewrite(image: Path, out: Path, *, tags: Sequence[str] | None = None, extra: str = "") -> Path:
    """A copy of a docker-save tarball with other RepoTags or one more member."""
    with tarfile.open(image) as src, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as dst:
        for member in src:
            data = src.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if member.name == "manifest.json" and tags is not None and data is not None:
                manifest = json.loads(data)
                manifest[0]["RepoTags"] = list(tags)
                data = json.dumps(manifest).encode()
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
        if extra:
            info = tarfile.TarInfo(extra)
            info.size = 1
            dst.addfile(info, io.BytesIO(b"x"))
    return out


def test_import_escapes_tags_and_member_names(run: Run, tmp_path: Path) -> None:
    base, _ = _layer_tars(tmp_path)
    image = write_sample_image(tmp_path / "image.tar", "docker", layers=[base])
    tagged = _rewrite(image, tmp_path / "tagged.tar", tags=[EVIL + ":latest"])
    run("import", str(tagged))
    assert f"  {printable(EVIL)}:latest: top layer " in run.err
    value = json.loads(run("--json", "import", str(tagged)))
    assert value["Images"][0]["Tags"] == [EVIL + ":latest"]  # JSON stays exact
    run("import", str(_rewrite(image, tmp_path / "m.tar", extra="../" + EVIL)), status=3)
    assert "escapes the image archive" in run.err


# ---------------------------------------------------------------------------------- progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_labels_are_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with _progress.byte_progress("apply " + EVIL, 100) as bar:
        assert bar is not None
        bar.add(10)
        bar.set_description("then " + EVIL)
        bar.add(10)
    drawn = terminal.getvalue()
    assert printable(EVIL) in drawn and "\x1b]0;" not in drawn and "\x07" not in drawn


# ---------------------------------------------------------------------------------- JSON


def test_write_json_is_ascii_and_exact_for_names_that_are_not_utf8() -> None:
    name = os.fsdecode(b"/d/" + NOT_UTF8 + b"/\xc3\xa9" + EVIL.encode())
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    write_json({"Path": name}, stream)
    raw = stream.buffer.getvalue()
    assert raw.isascii()
    assert os.fsencode(json.loads(raw)["Path"]) == os.fsencode(name)
    # and the text form of the same name is one escaped line
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    write_lines(["x", name], stream)
    assert stream.buffer.getvalue().decode("utf-8").split("\n") == [
        "x",
        printable(name),
        "",
    ]


def _lcow(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.run([sys.executable, "-m", "lcow", *argv], check=False, **kwargs)


def test_json_on_a_real_stdout_is_valid_utf8(run: Run) -> None:
    for argv in (["tree", "base"], ["changes", "base"], ["ls"]):
        proc = _lcow("--root", str(run.root), "--json", *argv)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.isascii() and proc.stderr == b""
        value = json.loads(proc.stdout.decode("utf-8", "strict"))
        if argv[0] != "ls":
            paths = {os.fsencode(r["Path"]) for r in value}
            assert b"/d/" + NOT_UTF8 in paths and ("/d/" + EVIL).encode() in paths
    proc = _lcow("--root", str(run.root), "tree", "base")  # the text form, through a real pipe
    assert proc.returncode == 0
    check_lines(proc.stdout.decode("utf-8", "strict"))


# ---------------------------------------------------------------------------------- pipes


@pytest.fixture
def big(run: Run, tmp_path: Path) -> str:
    """A layer with a 4 MiB file and 5000 names: more than a pipe holds."""
    tar = write_tar(
        tmp_path / "big.tar",
        [TarEntry("big", data=os.urandom(4 << 20))]
        + [TarEntry(f"many/file-{n:05d}", data=b"") for n in range(5000)],
    )
    run("create", "big")
    run("apply-diff", "big", "-i", str(tar))
    return str(run.root)


@contextmanager
def closed_pipe() -> Iterator[int]:
    """The write end of a pipe whose reader is already gone."""
    read, write = os.pipe()
    os.close(read)
    try:
        yield write
    finally:
        os.close(write)


@pytest.mark.parametrize(
    "argv",
    [
        ["ls"],
        ["tree", "big"],
        ["changes", "big"],
        ["cat", "big", "/big"],
        ["diff", "big"],
        ["--json", "tree", "big"],
        ["--help"],
        ["tree", "--help"],
    ],
)
def test_a_closed_stdout_ends_quietly_with_141(big: str, argv: list[str]) -> None:
    with closed_pipe() as stdout:
        proc = _lcow("--root", big, *argv, stdout=stdout, stderr=subprocess.PIPE)
    assert (proc.returncode, proc.stderr) == (ExitStatus.BROKEN_PIPE, b"")


def test_vhd2tar_into_a_closed_pipe(big: str) -> None:
    with closed_pipe() as stdout:
        proc = _lcow("vhd2tar", "-i", f"{big}/big/layer.vhd", stdout=stdout, stderr=subprocess.PIPE)
    assert (proc.returncode, proc.stderr) == (ExitStatus.BROKEN_PIPE, b"")


@pytest.mark.parametrize(
    ("command", "head"),
    [
        ("tree big", "head -n 2"),  # 125 KB: more than head reads and the pipe holds
        ("--json tree big", "head -n 2"),
        ("cat big /big", "head -c 10"),
        ("diff big -o -", "head -c 10"),
    ],
)
def test_piped_into_head(big: str, tmp_path: Path, command: str, head: str) -> None:
    err = tmp_path / "err"
    script = (
        f'"{sys.executable}" -m lcow --root "{big}" {command} 2>"{err}" | {head} >/dev/null;'
        ' echo "${PIPESTATUS[0]} ${PIPESTATUS[1]}"'
    )
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["141", "0"]
    assert err.read_bytes() == b""


def test_a_closed_stderr(big: str, tmp_path: Path) -> None:
    image = write_sample_image(tmp_path / "i.tar", "oci", layers=[_layer_tars(tmp_path)[1]])
    warning = _hostile_layer_tars(tmp_path)["warning"]
    with closed_pipe() as stderr:
        failed = _lcow("--root", big, "cat", "big", "/missing", stderr=stderr)
        imported = _lcow("--root", big, "import", str(image), stderr=stderr)
        warned = _lcow("tar2ext4", "-i", str(warning), "-o", str(tmp_path / "o"), stderr=stderr)
    # the error could not be told, its status still is
    assert failed.returncode == ExitStatus.NOT_FOUND and failed.stdout == b""
    # the ids went out; the summary on stderr could not
    assert imported.returncode == ExitStatus.BROKEN_PIPE and len(imported.stdout.split()) == 1
    # a log record that cannot be written is dropped: the conversion itself succeeded
    assert warned.returncode == ExitStatus.OK and b"1 entries" in warned.stdout


@pytest.mark.parametrize(
    ("member", "shown"),
    [
        ("\x1b]0;T\x07dir/.wh..", "\\x1b]0;T\\x07dir/.wh.."),
        (b"bad\xff/.wh..".decode("utf-8", "surrogateescape"), "bad\\xff/.wh.."),
    ],
)
def test_error_names_are_escaped_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], member: str, shown: str
) -> None:
    """Messages carry raw names and the CLI escapes them once: a control byte shows as
    ``\\x1b``, not ``\\\\x1b`` (the converter used to pre-escape names with
    ``backslashreplace`` and ``repr``)."""
    layer = tmp_path / "bad.tar"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:  # fmt: skip
        tar.addfile(tarfile.TarInfo(member))
    layer.write_bytes(buf.getvalue())
    status = main(["tar2ext4", "-i", str(layer), "-o", str(tmp_path / "out.img"), "-overlay"])
    err = capsys.readouterr().err
    assert status == ExitStatus.BAD_INPUT, err
    check_lines(err, errors=1)
    assert err.startswith(f"lcow: {shown}: whiteout of '.' is not a name"), err
