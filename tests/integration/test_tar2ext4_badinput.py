"""Bad input is refused clearly and leaves nothing behind; compressed input is accepted.

Every malformed tar must raise the right category from :mod:`lcow.errors` with a message naming
the entry, and leave the output directory exactly as it was: no output, no temporary file, an older
output file untouched (SPEC §6.6-6.7, issue 2 "Bad input"). The same through the command line:
exit status 3 (4 for a missing hard-link target) and ``lcow: <message>`` on stderr. gzip and zstd
input, file objects, descriptors and pipes all give the same image as the plain tar file.

No root needed: these only run the converter (``e2fsck`` is used when present).
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard

from lcow import ConvertOptions, tar2ext4
from lcow.cli.main import main
from lcow.cli.status import ExitStatus
from lcow.errors import InvalidArgument, LcowError, LimitExceeded, NotFound
from tests.helpers import TarEntry as E
from tests.helpers import assert_e2fsck_clean, requires, write_tar

MiB = 1 << 20


def _tar(tmp: Path, entries: list[E]) -> bytes:
    return write_tar(tmp / "build.tar", entries).read_bytes()


def _offsets(data: bytes, name: str) -> tuple[int, int]:
    """(offset of the member's own ustar header, data offset) of member ``name``.

    ``TarInfo.offset`` points at a preceding PAX header; the ustar header is the block before
    the data.
    """
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        info = tf.getmember(name)
        return info.offset_data - 512, info.offset_data


def _set_header(data: bytes, header: int, field_offset: int, value: bytes, *, fix: bool) -> bytes:
    raw = bytearray(data)
    raw[header + field_offset : header + field_offset + len(value)] = value
    if fix:
        block = raw[header : header + 512]
        block[148:156] = b" " * 8
        raw[header + 148 : header + 156] = b"%06o\0 " % sum(block)
    return bytes(raw)


@dataclass
class Bad:
    """A malformed input and what must happen.

    Attributes:
        make: builds the input bytes in a scratch directory.
        error: the category the converter must raise.
        names: strings the message must contain (the entry, sometimes the type).
        options: conversion options.
    """

    make: Callable[[Path], bytes]
    error: type[LcowError] = InvalidArgument
    names: tuple[str, ...] = ()
    options: dict[str, object] = field(default_factory=dict)


def _truncated_in_data(tmp: Path) -> bytes:
    data = _tar(tmp, [E("ok", data=b"x" * 100), E("dir/truncated-file", data=b"t" * 10_000)])
    return data[: _offsets(data, "dir/truncated-file")[1] + 5000]


def _truncated_after_header(tmp: Path) -> bytes:
    data = _tar(tmp, [E("ok", data=b"x"), E("cut-at-data", data=b"t" * 3000)])
    return data[: _offsets(data, "cut-at-data")[1]]


def _truncated_in_header(tmp: Path) -> bytes:
    data = _tar(tmp, [E("ok", data=b"x"), E("second", data=b"t")])
    return data[: _offsets(data, "second")[0] + 300]


def _truncated_in_pax(tmp: Path) -> bytes:
    data = _tar(tmp, [E("ok", data=b"x"), E("p" * 150, data=b"long name via PAX")])
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        pax_header = tf.getmember("p" * 150).offset
    return data[: pax_header + 512 + 100]  # inside the PAX records of the second member


def _corrupt_checksum(tmp: Path) -> bytes:
    data = _tar(tmp, [E("first", data=b"fine"), E("victim-entry", data=b"v" * 700)])
    header, _ = _offsets(data, "victim-entry")
    return _set_header(data, header, 136, b"77777777777", fix=False)  # mtime changed, sum stale


def _bad_size_field(tmp: Path) -> bytes:
    data = _tar(tmp, [E("first", data=b"fine"), E("bad-size-entry", data=b"v" * 10)])
    header, _ = _offsets(data, "bad-size-entry")
    return _set_header(data, header, 124, b"zzzzzzzzzzz", fix=True)


def _raw_type(kind: bytes) -> Callable[[Path], bytes]:
    def make(tmp: Path) -> bytes:
        return _tar(tmp, [E("ok", data=b"x"), E("weird-entry", kind="raw", type=kind)])

    return make


def _entries(*entries: E) -> Callable[[Path], bytes]:
    return lambda tmp: _tar(tmp, list(entries))


def _garbage(tmp: Path) -> bytes:
    del tmp
    return bytes((i * 7919) % 256 for i in range(10_240))


def _compressed_truncated(compress: Callable[[bytes], bytes]) -> Callable[[Path], bytes]:
    def make(tmp: Path) -> bytes:
        entries = [E(f"f{i}", data=os.urandom(50_000)) for i in range(10)]
        packed = compress(_tar(tmp, entries))
        return packed[: len(packed) // 2]

    return make


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


BAD: dict[str, Bad] = {
    "truncated-in-data": Bad(_truncated_in_data, names=("dir/truncated-file",)),
    "truncated-after-header": Bad(_truncated_after_header, names=("cut-at-data",)),
    "truncated-in-header": Bad(_truncated_in_header),
    "truncated-in-pax-header": Bad(_truncated_in_pax),
    # A header with a bad checksum is no header: its name bytes are not quoted, the entry
    # before it and the offset are.
    "corrupt-header-checksum": Bad(
        _corrupt_checksum, names=("first", "invalid tar header at offset", "checksum")
    ),
    "bad-size-field": Bad(_bad_size_field, names=("bad-size-entry",)),
    "unknown-type-V": Bad(_raw_type(b"V"), names=("weird-entry", "type")),
    "unknown-type-Z": Bad(_raw_type(b"Z"), names=("weird-entry", "type")),
    "unknown-type-M": Bad(_raw_type(b"M"), names=("weird-entry", "type")),
    "unknown-type-D": Bad(_raw_type(b"D"), names=("weird-entry", "type")),
    "dotdot-leading": Bad(_entries(E("../escape", data=b"x")), names=("../escape",)),
    "dotdot-inside": Bad(_entries(E("a/../../b", data=b"x")), names=("a/../../b",)),
    "dotdot-harmless-still-refused": Bad(_entries(E("a/b/../c", data=b"x")), names=("a/b/../c",)),
    "dotdot-last": Bad(_entries(E("a/..", kind="dir")), names=("a/..",)),
    "dotdot-in-hardlink-target": Bad(
        _entries(E("ok"), E("hl", kind="hardlink", target="../ok")), names=("hl",)
    ),
    "dotdot-in-whiteout": Bad(
        _entries(E("../.wh.x")), names=("../.wh.x",), options={"convert_whiteouts": True}
    ),
    "hardlink-to-missing-target": Bad(
        _entries(E("present"), E("link-entry", kind="hardlink", target="missing-target")),
        error=NotFound,
        names=("link-entry",),
    ),
    "hardlink-to-directory": Bad(
        _entries(E("d", kind="dir"), E("link-to-dir", kind="hardlink", target="d")),
        error=LcowError,
        names=("link-to-dir",),
    ),
    "entry-over-max-size": Bad(
        _entries(E("small", data=b"x"), E("huge-entry", data=b"h" * (4 * MiB))),
        error=LimitExceeded,
        names=("huge-entry",),
        options={"max_size": MiB},
    ),
    "many-entries-over-max-size": Bad(
        _entries(*[E(f"file-{i:04d}", data=b"f" * 4096) for i in range(400)]),
        error=LimitExceeded,
        names=("file-",),
        options={"max_size": MiB},
    ),
    "name-component-over-255-bytes": Bad(
        _entries(E("d/" + "n" * 256, data=b"x")), names=("n" * 256,)
    ),
    "xattrs-too-big-for-a-block": Bad(
        _entries(E("fat-xattrs", xattrs={"user.huge": b"x" * 5000})), names=("fat-xattrs",)
    ),
    "not-a-tar": Bad(_garbage),
    "gzip-truncated": Bad(_compressed_truncated(_gzip)),
    "zstd-truncated": Bad(_compressed_truncated(_zstd)),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case: str, tmp_path: Path) -> None:
    bad = BAD[case]
    src = tmp_path / "in.tar"
    src.write_bytes(bad.make(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(bad.error) as caught:
        tar2ext4(src, out / "layer.img", ConvertOptions(**bad.options))  # type: ignore[arg-type]
    message = str(caught.value)
    for name in bad.names:
        assert name in message, f"message {message!r} does not name {name!r}"
    assert message.strip(), "empty error message"
    assert list(out.iterdir()) == [], "output or temporary file left behind"


@pytest.mark.parametrize(
    "options",
    [{"vhd_footer": True}, {"dm_verity": True, "vhd_footer": True}, {"convert_whiteouts": True}],
    ids=["vhd", "verity-vhd", "overlay"],
)
def test_failure_keeps_an_existing_output(options: dict[str, object], tmp_path: Path) -> None:
    src = tmp_path / "in.tar"
    src.write_bytes(_truncated_in_data(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    (out / "layer.vhd").write_bytes(b"previous layer")
    with pytest.raises(InvalidArgument):
        tar2ext4(src, out / "layer.vhd", ConvertOptions(**options))  # type: ignore[arg-type]
    assert [p.name for p in out.iterdir()] == ["layer.vhd"]
    assert (out / "layer.vhd").read_bytes() == b"previous layer"


def test_symlink_targets_may_contain_dotdot(tmp_path: Path) -> None:
    src = write_tar(tmp_path / "in.tar", [E("a/up", kind="symlink", target="../../../etc")])
    tar2ext4(src, tmp_path / "ok.img", ConvertOptions())


def test_small_entry_under_max_size_fits(tmp_path: Path) -> None:
    src = write_tar(tmp_path / "in.tar", [E("small", data=b"x" * 10_000)])
    result = tar2ext4(src, tmp_path / "ok.img", ConvertOptions(max_size=MiB))
    assert result.image_size <= MiB


def test_empty_archive_is_an_empty_layer(tmp_path: Path) -> None:
    src = tmp_path / "empty.tar"
    src.write_bytes(bytes(10_240))
    result = tar2ext4(src, tmp_path / "empty.img", ConvertOptions())
    assert result.entries == 0
    assert result.inodes >= 11  # reserved inodes and lost+found
    _maybe_fsck(tmp_path / "empty.img")


# --------------------------------------------------------------------------------------------
# the same through the command line


CLI_CASES = [
    ("truncated-in-data", ExitStatus.BAD_INPUT),
    ("corrupt-header-checksum", ExitStatus.BAD_INPUT),
    ("unknown-type-V", ExitStatus.BAD_INPUT),
    ("dotdot-leading", ExitStatus.BAD_INPUT),
    ("hardlink-to-missing-target", ExitStatus.NOT_FOUND),
    ("zstd-truncated", ExitStatus.BAD_INPUT),
]


@pytest.mark.parametrize(("case", "status"), CLI_CASES)
def test_bad_input_through_the_cli(
    case: str, status: ExitStatus, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = BAD[case]
    src = tmp_path / "in.tar"
    src.write_bytes(bad.make(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    assert main(["tar2ext4", "-i", str(src), "-o", str(out / "layer.vhd"), "-vhd"]) == status
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("lcow: ") and captured.err.count("\n") == 1, captured.err
    for name in bad.names:
        assert name in captured.err
    assert list(out.iterdir()) == []


def test_cli_size_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_tar(tmp_path / "in.tar", [E("huge-entry", data=b"h" * (3 * MiB))])
    out = tmp_path / "out"
    out.mkdir()
    argv = ["tar2ext4", "-i", str(src), "-o", str(out / "x.img"), "--max-size", "1M"]
    assert main(argv) == ExitStatus.BAD_INPUT
    assert "huge-entry" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_cli_missing_input_is_not_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such.tar"
    assert main(["tar2ext4", "-i", str(missing), "-o", str(tmp_path / "x")]) == (
        ExitStatus.NOT_FOUND
    )
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_missing_input_raises_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        tar2ext4(tmp_path / "no-such.tar", tmp_path / "x", ConvertOptions())


# --------------------------------------------------------------------------------------------
# accepted inputs: compression, file objects, descriptors, pipes


GOOD = [
    E("dir", kind="dir"),
    E("dir/file", data=os.urandom(300_000)),
    E("dir/link", kind="hardlink", target="dir/file"),
    E("sym", kind="symlink", target="dir/file"),
    E("sparse", kind="sparse", size=8 * MiB, sparse=[(MiB, b"s" * 4096)]),
]


@pytest.fixture(scope="module")
def good_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tar(tmp_path_factory.mktemp("good") / "good.tar", GOOD)


@pytest.fixture(scope="module")
def reference(good_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    image = tmp_path_factory.mktemp("ref") / "ref.img"
    tar2ext4(good_tar, image, ConvertOptions())
    _maybe_fsck(image)
    return image.read_bytes()


def _maybe_fsck(image: Path) -> None:
    from tests.helpers import tool

    if tool("e2fsck") is not None:
        assert_e2fsck_clean(image)


def _pipe(data: bytes) -> Iterator[int]:
    read, write = os.pipe()

    def feed() -> None:
        with os.fdopen(write, "wb") as f:
            f.write(data)

    thread = threading.Thread(target=feed)
    thread.start()
    try:
        yield read
    finally:
        os.close(read)
        thread.join()


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "plain": lambda d: d,
    "gzip": _gzip,
    "gzip-two-members": lambda d: _gzip(d[: len(d) // 2]) + _gzip(d[len(d) // 2 :]),
    "zstd": _zstd,
    "zstd-two-frames": lambda d: _zstd(d[: len(d) // 3]) + _zstd(d[len(d) // 3 :]),
    "zstd-streamed-no-size": lambda d: (
        zstandard.ZstdCompressor().compressobj().compress(d)
        + zstandard.ZstdCompressor().compressobj().flush()
    ),
}


@pytest.mark.parametrize("how", ["path", "str", "fileobj", "bytesio", "fd", "pipe"])
@pytest.mark.parametrize("compression", list(COMPRESSORS))
def test_inputs_give_identical_images(
    compression: str, how: str, good_tar: Path, reference: bytes, tmp_path: Path
) -> None:
    if compression == "zstd-streamed-no-size":
        cctx = zstandard.ZstdCompressor()
        payload = cctx.compressobj().compress(good_tar.read_bytes())
        obj = cctx.compressobj()
        payload = obj.compress(good_tar.read_bytes()) + obj.flush()
    else:
        payload = COMPRESSORS[compression](good_tar.read_bytes())
    src = tmp_path / "in"
    src.write_bytes(payload)
    image = tmp_path / "out.img"
    options = ConvertOptions()
    if how == "path":
        tar2ext4(src, image, options)
    elif how == "str":
        tar2ext4(str(src), image, options)
    elif how == "fileobj":
        with open(src, "rb") as f:
            tar2ext4(f, image, options)
    elif how == "bytesio":
        tar2ext4(io.BytesIO(payload), image, options)
    elif how == "fd":
        fd = os.open(src, os.O_RDONLY)
        try:
            tar2ext4(fd, image, options)
        finally:
            os.close(fd)
    else:
        for fd in _pipe(payload):
            tar2ext4(fd, image, options)
    assert image.read_bytes() == reference


def test_conversion_is_deterministic(good_tar: Path, reference: bytes, tmp_path: Path) -> None:
    for n in range(2):
        tar2ext4(good_tar, tmp_path / f"{n}.img", ConvertOptions(convert_whiteouts=True))
    assert (tmp_path / "0.img").read_bytes() == (tmp_path / "1.img").read_bytes()


@requires("tar")
def test_gnu_tar_gzip_and_zstd_through_the_cli(good_tar: Path, tmp_path: Path) -> None:
    from tests.helpers import run

    for flag in ("--gzip", "--zstd"):
        packed = tmp_path / f"x{flag}.tar"
        extract = tmp_path / f"tree{flag}"
        extract.mkdir()
        assert run(["tar", "-xf", good_tar, "-C", extract]).returncode == 0
        assert run(["tar", flag, "-cf", packed, "-C", extract, "."]).returncode == 0
        out = tmp_path / f"out{flag}.img"
        assert main(["tar2ext4", "-i", str(packed), "-o", str(out)]) == ExitStatus.OK
        _maybe_fsck(out)


# --------------------------------------------------------------------------------------------
# link-count limits (SPEC §6.1, §6.6: 65000 links)


def _links_tar(path: Path, links: int, subdirs: int) -> Path:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        info = tarfile.TarInfo("f")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
        for i in range(links - 1):
            info = tarfile.TarInfo(f"l{i}")
            info.type, info.linkname = tarfile.LNKTYPE, "f"
            tf.addfile(info)
        for i in range(subdirs):
            info = tarfile.TarInfo(f"d/{i}")
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
    return path


@pytest.mark.parametrize(
    ("links", "subdirs", "failing_entry"),
    [(65000, 0, None), (65001, 0, "l64999"), (1, 64998, None), (1, 64999, "d/64998")],
    ids=["65000-links", "65001-links", "65000-dir-links", "65001-dir-links"],
)
def test_link_limits(links: int, subdirs: int, failing_entry: str | None, tmp_path: Path) -> None:
    src = _links_tar(tmp_path / "links.tar", links, subdirs)
    out = tmp_path / "out"
    out.mkdir()
    if failing_entry is None:
        tar2ext4(src, out / "ok.img", ConvertOptions())
        _maybe_fsck(out / "ok.img")
        return
    with pytest.raises(LimitExceeded, match=failing_entry):
        tar2ext4(src, out / "bad.img", ConvertOptions())
    assert list(out.iterdir()) == []
