"""Directory loops and very deep trees through every reader of a layer image.

The hostile images are lcow's own layers with one or two directory entries patched
(:mod:`tests.ext4_patch`): an entry pointing at an ancestor, at its own directory, at the root,
a second name of a directory (a hard-linked directory), a cycle through two directories; and
trees deeper than the reader's depth limit. Every reader must answer ``CorruptImage`` (exit 3
from the command line) naming the image and the path, or ``LimitExceeded`` for depth: never a
traceback, a ``RecursionError`` or a hang.

Tests marked *guard* passed before this work too (those readers walked with a set of visited
directories already); the others failed on the starting commit: ``lcow tree`` died with
``RecursionError`` (exit 1) or listed a hard-linked directory twice, ``lcow cat`` and the
userspace and fsspec views read straight through loops, and the archive and fsspec walks
recursed once per level.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from lcow import ConvertOptions, tar2ext4
from lcow.backends.fsspec_view import ViewFileSystem
from lcow.cli.main import main
from lcow.cli.status import ExitStatus
from lcow.errors import CorruptImage, LimitExceeded
from lcow.formats.ext4.layout import ROOT_INO
from lcow.formats.ext4.reader import Ext4Reader
from lcow.graphdriver.driver import Driver
from tests.ext4_patch import point_entry

LAYOUT = [("a", None), ("a/b", None), ("a/b/x", b"x\n"), ("a/b/y", b"hello\n"), ("c", None)]
LAYOUT += [("c/z", b"z\n"), ("top.txt", b"top\n")]


def _tar(entries: list[tuple[str, bytes | None]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def _ancestor(image: Path) -> None:
    point_entry(image, b"/a/b", b"x", b"/a")


def _itself(image: Path) -> None:
    point_entry(image, b"/a/b", b"x", b"/a/b")


def _root(image: Path) -> None:
    point_entry(image, b"/a/b", b"x", ROOT_INO)


def _hard_linked(image: Path) -> None:
    point_entry(image, b"/c", b"z", b"/a")


def _two_dir_cycle(image: Path) -> None:
    point_entry(image, b"/a/b", b"x", b"/c")
    point_entry(image, b"/c", b"z", b"/a/b")


# case -> (patch, a path that exists only by going through the bad entry)
CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "entry-to-ancestor": (_ancestor, "/a/b/x/b/y"),
    "entry-to-itself": (_itself, "/a/b/x/y"),
    "entry-to-root": (_root, "/a/b/x/top.txt"),
    "hard-linked-directory": (_hard_linked, "/c/z/b/y"),
    "cycle-through-two-directories": (_two_dir_cycle, "/a/b/x/z/y"),
}


@pytest.fixture(params=sorted(CASES))
def looped(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Driver, Path, str]:
    """A data root whose layer ``l`` is a patched image, and a layer ``top`` above it."""
    patch, through = CASES[request.param]
    driver = Driver(tmp_path / "root")
    driver.create("l")
    driver.apply_diff("l", None, _tar(LAYOUT))
    image = tmp_path / "root" / "l" / "layer.vhd"
    patch(image)
    driver.create("top", "l")
    driver.apply_diff("top", "l", _tar([("a", None), ("a/b", None), ("a/b/new", b"n")]))
    return driver, image, through


def _cli(root: Path, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = main(["--root", str(root), *argv])
    return status, capsys.readouterr().err


def _assert_corrupt_line(status: int, err: str, image: Path) -> None:
    assert status == ExitStatus.BAD_INPUT, err
    assert err.startswith("lcow: ") and err.count("\n") == 1, err
    assert str(image) in err and "loop" in err, err
    assert "Traceback" not in err and "internal error" not in err


def test_tree_reports_the_loop(
    looped: tuple[Driver, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    driver, image, _ = looped
    for layer in ("l", "top"):
        status, err = _cli(driver.root.root, "tree", layer, capsys=capsys)
        _assert_corrupt_line(status, err, image)


def test_cat_does_not_read_through_the_loop(
    looped: tuple[Driver, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    driver, image, through = looped
    status, err = _cli(driver.root.root, "cat", "l", through, capsys=capsys)
    _assert_corrupt_line(status, err, image)
    assert _cli(driver.root.root, "cat", "l", "/a/b/y", capsys=capsys)[0] == ExitStatus.OK


def test_userspace_view_refuses_paths_through_the_loop(looped: tuple[Driver, Path, str]) -> None:
    driver, image, through = looped
    view = driver.get("top")
    try:
        parent = through.rsplit("/", 1)[0]
        calls: list[tuple[Callable[[str], object], str]] = [
            (view.readdir, parent),
            (view.lstat, through),
            (view.stat, through),
            (view.open, through),
        ]
        for op, target in calls:
            with pytest.raises(CorruptImage, match="loop") as caught:
                op(target)
            assert str(image) in str(caught.value)
        with pytest.raises(CorruptImage, match="loop"):
            view.archive_path("/", lambda _data: None)
        assert view.readfile("/a/b/y") == b"hello\n"  # the sound part still reads
    finally:
        driver.put("top")


def test_fsspec_view_reports_the_loop(looped: tuple[Driver, Path, str]) -> None:
    driver, image, through = looped
    fs = ViewFileSystem(driver.get("l"))
    try:
        with pytest.raises(CorruptImage, match="loop") as caught:
            fs.find("/")
        assert str(image) in str(caught.value)
        with pytest.raises(CorruptImage, match="loop"):
            list(fs.walk("/"))
        with pytest.raises(CorruptImage, match="loop"):
            fs.ls(through.rsplit("/", 1)[0])
    finally:
        driver.put("l")


def test_reader_lookup_refuses_paths_through_the_loop(looped: tuple[Driver, Path, str]) -> None:
    _, image, through = looped
    with Ext4Reader.open(image) as reader:
        with pytest.raises(CorruptImage, match="loop") as caught:
            reader.lookup(through.encode())
        assert str(image) in str(caught.value)
        assert reader.lookup(b"/a/b/y").is_reg


def test_exports_and_comparisons_report_the_loop(
    looped: tuple[Driver, Path, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Guard: vhd2tar, Diff, Changes and DiffSize (own content and merged views)."""
    driver, image, _ = looped
    status = main(["vhd2tar", "-i", str(image), "-o", str(tmp_path / "out.tar")])
    _assert_corrupt_line(status, capsys.readouterr().err, image)
    for layer in ("l", "top"):
        for command in ("diff", "changes", "diff-size"):
            argv = [command, layer, *(["-o", str(tmp_path / "d.tar")] if command == "diff" else [])]
            status, err = _cli(driver.root.root, *argv, capsys=capsys)
            _assert_corrupt_line(status, err, image)
    for compare in (driver.changes, driver.diff_size):  # against None: whole merged views
        with pytest.raises(CorruptImage, match="loop"):
            compare("top", None)


# -- very deep trees ---------------------------------------------------------------------------


def _deep_layer(tmp_path: Path, depth: int) -> Driver:
    """A layer holding one chain of ``depth`` directories ``d`` and a file ``f`` at the end."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("/".join(["d"] * depth) + "/f")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"end"))
    buf.seek(0)
    driver = Driver(tmp_path / "root")
    driver.create("deep")
    options = ConvertOptions(
        max_depth=depth + 1, max_path_len=2 * depth + 2, convert_whiteouts=True, vhd_footer=True
    )
    tar2ext4(buf, tmp_path / "root" / "deep" / "layer.vhd", options)
    return driver


def test_deep_tree_within_the_limit_reads_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """1,500 levels: deeper than the interpreter's recursion limit, within the reader's."""
    depth = 1500
    driver = _deep_layer(tmp_path, depth)
    deepest = "/" + "/".join(["d"] * depth) + "/f"
    status, err = _cli(driver.root.root, "tree", "deep", capsys=capsys)
    assert status == ExitStatus.OK, err
    view = driver.get("deep")
    try:
        fs = ViewFileSystem(view)
        assert fs.find("/") == [deepest]
        assert len(list(fs.walk("/"))) == depth + 1
        tar = io.BytesIO()
        view.archive_path("/", tar.write)
        tar.seek(0)
        with tarfile.open(fileobj=tar) as archive:
            names = archive.getnames()
        assert len(names) == depth + 1 and names[-1] == deepest.lstrip("/")
        assert view.readfile(deepest) == b"end"
    finally:
        driver.put("deep")


def test_deep_tree_past_the_limit_is_refused_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """3,000 levels: every reader stops at the 2,048-level limit with a LimitExceeded."""
    depth = 3000
    driver = _deep_layer(tmp_path, depth)
    deepest = "/" + "/".join(["d"] * depth) + "/f"
    status, err = _cli(driver.root.root, "tree", "deep", capsys=capsys)
    assert status == ExitStatus.BAD_INPUT and "nesting deeper than 2048" in err, err[-300:]
    assert err.startswith("lcow: deep: /d/d/")
    status, err = _cli(driver.root.root, "cat", "deep", deepest, capsys=capsys)
    assert status == ExitStatus.BAD_INPUT and "nesting deeper than 2048" in err, err[-300:]
    view = driver.get("deep")
    try:
        fs = ViewFileSystem(view)
        with pytest.raises(LimitExceeded, match="nesting deeper than 2048"):
            fs.find("/")
        with pytest.raises(LimitExceeded, match="nesting deeper than 2048"):
            view.archive_path("/", lambda _data: None)
    finally:
        driver.put("deep")
    for command in ("changes", "diff-size"):  # guard: these walks were bounded already
        status, err = _cli(driver.root.root, command, "deep", capsys=capsys)
        assert status == ExitStatus.BAD_INPUT and "nesting deeper than 2048" in err
