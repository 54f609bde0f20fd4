"""Conversion limits (hardening, part 5): each is an option with a safe default, and passing it
is a ``LimitExceeded`` naming the entry and the limit, with nothing left behind.

Covers ``ConvertOptions.max_entries``, ``max_name_len``, ``max_path_len``, ``max_depth``,
``max_xattr_name_len``, ``max_xattr_value_len`` (``max_size`` has its own tests), their range
checks, their ``lcow tar2ext4`` flags, and the process-wide cap on concurrent conversions
(:mod:`lcow.convert.limits`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lcow import ConvertOptions, tar2ext4
from lcow.cli.main import main
from lcow.cli.status import ExitStatus
from lcow.convert import limits
from lcow.errors import Busy, InvalidArgument, LimitExceeded
from lcow.formats.ext4.reader import Ext4Reader
from tests.harness.hostile.tarbuild import END, directory, file
from tests.helpers import assert_e2fsck_clean, requires


def _tar(tmp: Path, *members: bytes) -> Path:
    path = tmp / "in.tar"
    path.write_bytes(b"".join(members) + END)
    return path


def _refused(src: Path, out: Path, options: ConvertOptions, *names: str) -> None:
    out.mkdir(exist_ok=True)
    with pytest.raises(LimitExceeded) as caught:
        tar2ext4(src, out / "layer.vhd", options)
    for name in names:
        assert name in str(caught.value), str(caught.value)
    assert list(out.iterdir()) == []


# ------------------------------------------------------------------------------ each limit


def test_defaults_are_documented_values() -> None:
    opts = ConvertOptions()
    assert (opts.max_entries, opts.max_name_len, opts.max_path_len, opts.max_depth) == (
        1 << 21,
        255,
        4096,
        1024,
    )
    assert (opts.max_xattr_name_len, opts.max_xattr_value_len) == (255, 65536)
    assert opts.max_size == 128 << 30 and opts.slot_timeout is None


def test_max_entries(tmp_path: Path) -> None:
    src = _tar(tmp_path, *(file(b"f%d" % i) for i in range(10)))
    tar2ext4(src, tmp_path / "ok.img", ConvertOptions(max_entries=10))
    _refused(src, tmp_path / "out", ConvertOptions(max_entries=9), "f9", "max_entries=9")


def test_max_name_len(tmp_path: Path) -> None:
    src = _tar(tmp_path, file(b"dir/" + b"n" * 20))
    tar2ext4(src, tmp_path / "ok.img", ConvertOptions(max_name_len=20))
    _refused(src, tmp_path / "out", ConvertOptions(max_name_len=19), "n" * 20, "max_name_len=19")


def test_max_path_len_counts_the_normalised_path(tmp_path: Path) -> None:
    # "/aaaa/bbbb" is 10 bytes however the entry spells it
    src = _tar(tmp_path, file(b"./aaaa//bbbb"))
    tar2ext4(src, tmp_path / "ok.img", ConvertOptions(max_path_len=10))
    _refused(src, tmp_path / "out", ConvertOptions(max_path_len=9), "max_path_len=9")


def test_max_path_len_applies_to_hard_link_targets(tmp_path: Path) -> None:
    """A target too long to exist is a limit, not a missing file."""
    from tests.harness.hostile.tarbuild import hardlink

    src = _tar(tmp_path, hardlink(b"l", b"a" * 40))
    _refused(src, tmp_path / "out", ConvertOptions(max_path_len=20), "l", "hard link target")


def test_max_depth(tmp_path: Path) -> None:
    src = _tar(tmp_path, directory(b"a/b/c/"), file(b"a/b/c/d"))
    tar2ext4(src, tmp_path / "ok.img", ConvertOptions(max_depth=4))
    _refused(src, tmp_path / "out", ConvertOptions(max_depth=3), "a/b/c/d", "max_depth=3")


def test_xattr_limits(tmp_path: Path) -> None:
    src = _tar(tmp_path, file(b"x", xattrs={b"user.abcdef": b"v" * 100}))
    tar2ext4(
        src, tmp_path / "ok.img", ConvertOptions(max_xattr_name_len=11, max_xattr_value_len=100)
    )
    _refused(src, tmp_path / "o1", ConvertOptions(max_xattr_name_len=10), "x", "max_xattr_name_len")
    small = ConvertOptions(max_xattr_value_len=99)
    _refused(src, tmp_path / "o2", small, "x", "max_xattr_value_len")


@pytest.mark.parametrize(
    "bad",
    [
        {"max_name_len": 256},
        {"max_name_len": 0},
        {"max_xattr_name_len": 256},
        {"max_entries": -1},
        {"max_depth": 0},
        {"max_path_len": 0},
        {"max_xattr_value_len": -5},
        {"slot_timeout": -1.0},
    ],
)
def test_out_of_range_limits_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument, match=next(iter(bad))):
        ConvertOptions(**bad)  # type: ignore[arg-type]


@requires("e2fsck")
def test_ten_thousand_levels_with_the_limits_raised(tmp_path: Path) -> None:
    """Past the defaults the converter still copes (time and memory linear in the depth), but
    lcow's own reader stops at 2048 levels: why the default is 1024."""
    src = _tar(tmp_path, file(b"d/" * 10_000 + b"f", b"deep"))
    image = tmp_path / "deep.img"
    started = time.monotonic()
    tar2ext4(src, image, ConvertOptions(max_depth=20_000, max_path_len=1 << 20))
    assert time.monotonic() - started < 20
    assert_e2fsck_clean(image)
    with Ext4Reader.open(image) as reader, pytest.raises(LimitExceeded):
        for _ in reader.walk_inodes():
            pass


# ------------------------------------------------------------------------------ command line


def test_cli_limit_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _tar(tmp_path, *(file(b"f%d" % i) for i in range(3)))
    out = tmp_path / "out"
    out.mkdir()
    argv = ["tar2ext4", "-i", str(src), "-o", str(out / "x.img"), "--max-entries", "2"]
    assert main(argv) == ExitStatus.BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("lcow: f2: ") and "max_entries=2" in err
    assert list(out.iterdir()) == []
    argv = ["tar2ext4", "-i", str(src), "-o", str(out / "x.img"), "-max-name", "300"]
    assert main(argv) == ExitStatus.BAD_INPUT
    assert "max_name_len" in capsys.readouterr().err
    argv = ["tar2ext4", "-i", str(src), "-o", str(out / "x.img"), "--max-depth", "1"]
    assert main(argv) == ExitStatus.OK


# ------------------------------------------------------------------------------ concurrency


@pytest.fixture
def cap_of_one() -> Iterator[None]:
    old = limits.max_conversions()
    limits.set_max_conversions(1)
    try:
        yield
    finally:
        limits.set_max_conversions(old)


def test_default_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(limits.ENV_MAX_CONVERSIONS, raising=False)
    assert limits.default_max_conversions() == max(2, os.cpu_count() or 1)
    monkeypatch.setenv(limits.ENV_MAX_CONVERSIONS, "3")
    assert limits.default_max_conversions() == 3
    monkeypatch.setenv(limits.ENV_MAX_CONVERSIONS, "zero")
    with pytest.raises(InvalidArgument, match=limits.ENV_MAX_CONVERSIONS):
        limits.default_max_conversions()
    with pytest.raises(InvalidArgument):
        limits.set_max_conversions(0)


def test_a_full_cap_waits_then_times_out(cap_of_one: None, tmp_path: Path) -> None:
    """A conversion reading from a pipe holds the only slot; a second one gives up with Busy
    after its slot_timeout, and gets through once the first is done."""
    read_fd, write_fd = os.pipe()
    first_error: list[BaseException] = []

    def first() -> None:
        try:
            tar2ext4(read_fd, tmp_path / "first.img", ConvertOptions())
        except BaseException as exc:  # reported below
            first_error.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while limits.active_conversions() < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert limits.active_conversions() == 1
        src = _tar(tmp_path, file(b"second"))
        started = time.monotonic()
        with pytest.raises(Busy, match="max_conversions=1"):
            tar2ext4(src, tmp_path / "second.img", ConvertOptions(slot_timeout=0.3))
        assert 0.25 < time.monotonic() - started < 5
        assert not (tmp_path / "second.img").exists()
    finally:
        os.write(write_fd, file(b"first") + END)
        os.close(write_fd)
        thread.join(30)
        os.close(read_fd)
    assert not first_error, first_error
    tar2ext4(src, tmp_path / "second.img", ConvertOptions(slot_timeout=0.3))


def test_at_most_the_cap_run_at_once(tmp_path: Path) -> None:
    old = limits.max_conversions()
    limits.set_max_conversions(2)
    seen: list[int] = []
    src = _tar(tmp_path, *(file(b"f%d" % i, b"x" * 5000) for i in range(200)))

    def progress(done: int) -> None:
        del done
        seen.append(limits.active_conversions())
        time.sleep(0.01)

    def convert(n: int) -> None:
        tar2ext4(src, tmp_path / f"{n}.img", ConvertOptions(progress=progress))

    try:
        threads = [threading.Thread(target=convert, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        limits.set_max_conversions(old)
    assert seen and max(seen) <= 2
    assert len(list(tmp_path.glob("*.img"))) == 6
    assert limits.active_conversions() == 0


def test_whiteout_prefix_does_not_count(tmp_path: Path) -> None:
    """``.wh.`` + a 255-byte name hides a 255-byte name: within max_name_len (found by the
    export round-trip property test)."""
    name = b"n" * 255
    src = _tar(tmp_path, directory(b"d/"), file(b"d/.wh." + name))
    tar2ext4(src, tmp_path / "ok.img", ConvertOptions(convert_whiteouts=True))
    _refused(src, tmp_path / "out", ConvertOptions(), "max_name_len=255")  # a plain name: too long
