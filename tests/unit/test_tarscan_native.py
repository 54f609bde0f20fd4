"""The C header scanner (``lcow._tarscan``) reads every archive as the Python reader does.

The scanner may decline any member (the Python reader then parses it), but whatever it accepts
must come out field for field as the Python parser has it, and errors must be the same. These
tests run both on the hostile corpus, the fuzzing corpus, archives written by Python's tarfile
and GNU tar in every format, and randomly damaged archives, over a regular file (kernel copy
path) and a pipe (where the buffer fills in odd pieces).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lcow.convert import tarstream
from lcow.convert.tarstream import MAX_META_SIZE, TarReader
from tests.harness.hostile import corpus
from tests.harness.hostile.case import HostileCase
from tests.harness.hostile.tarbuild import (
    END,
    GNU_MAGIC,
    POSIX_MAGIC,
    file,
    gnu_long,
    header,
    member,
    padded,
    pax,
)
from tests.harness.tarscan_diff import Outcome, outcome, outcome_of_bytes, tarscan

REPO = Path(__file__).resolve().parents[2]
FUZZ_CORPUS = REPO / "fuzz" / "corpus" / "tar_reader"


def _tarscan() -> ModuleType:
    """The accelerator itself, whatever LCOW_NATIVE says (these tests compare both paths)."""
    module = tarscan()
    if module is None:
        if os.environ.get("CI") == "true":
            pytest.fail("lcow._tarscan is not built: the C accelerator must be present in CI")
        pytest.skip("lcow._tarscan is not built (no C compiler at install?)")
    return module


def test_the_reader_uses_the_accelerator() -> None:
    module = _tarscan()
    disabled = os.environ.get("LCOW_NATIVE") == "0"
    assert tarstream.TARSCAN is (None if disabled else module)


def _read_file(data: bytes, accelerate: bool) -> Outcome:
    return outcome_of_bytes(data, _tarscan() if accelerate else None)


def _read_pipe(data: bytes, accelerate: bool) -> Outcome:
    rfd, wfd = os.pipe()

    def feed() -> None:  # odd-sized writes, so the reader's buffer fills in pieces
        view = memoryview(data)
        step = 7777
        try:
            while view:
                os.write(wfd, view[:step])
                view = view[step:]
        except BrokenPipeError:
            pass
        finally:
            os.close(wfd)

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        return outcome(rfd, _tarscan() if accelerate else None)
    finally:
        os.close(rfd)  # a reader that stopped early makes the feeder see EPIPE
        writer.join()


def assert_same(data: bytes) -> Outcome:
    """Both parsers agree over a file and over a pipe; returns the outcome."""
    _tarscan()
    python = _read_file(data, accelerate=False)
    assert _read_file(data, accelerate=True) == python
    assert _read_pipe(data, accelerate=True) == _read_pipe(data, accelerate=False)
    return python


# -- corpora -------------------------------------------------------------------------------


def _hostile_inputs() -> Iterator[Any]:
    for case in corpus.CASES:
        if case.slow or case.gzip:
            continue
        yield pytest.param(case, id=case.name)


@pytest.mark.parametrize("case", list(_hostile_inputs()))
def test_hostile_corpus(case: HostileCase) -> None:
    out = io.BytesIO()
    case.build(out)
    assert_same(out.getvalue())


def test_fuzz_corpus() -> None:
    inputs = sorted(FUZZ_CORPUS.iterdir())
    assert len(inputs) > 20
    for path in inputs:
        assert_same(path.read_bytes())


def _tarfile_archive(fmt: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:

        def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **kw: Any) -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            for key, value in kw.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if data else None)

        add("dir/", tarfile.DIRTYPE, mode=0o755, mtime=1_700_000_000)
        add("dir/file", data=b"hello", uid=1000, gid=1000, mtime=1_700_000_000.25)
        add("dir/" + "long-name-" * 20, data=b"x" * 700)
        add("dir/link", tarfile.SYMTYPE, linkname="../" + "t" * 150)
        add("dir/hard", tarfile.LNKTYPE, linkname="dir/file")
        add("dev", tarfile.CHRTYPE, devmajor=4, devminor=64)
        add("blk", tarfile.BLKTYPE, devmajor=8, devminor=1)
        add("fifo", tarfile.FIFOTYPE)
        add("old", data=b"o", mtime=-86_400)
        add("big-ids", data=b"i", uid=3_000_000, gid=70_000)
        if fmt == tarfile.PAX_FORMAT:
            add("xattrs", data=b"x", pax_headers={"SCHILY.xattr.user.a": "1", "comment": "c"})
            add("unicode-é", data=b"u")
    return out.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["gnu", "pax"])
def test_python_tarfile_formats(fmt: int) -> None:
    members = assert_same(_tarfile_archive(fmt))[0]
    assert len(members) >= 10


@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar", "oldgnu", "v7"])
def test_gnu_tar_formats_use_the_fast_path(tmp_path: Path, fmt: str) -> None:
    """GNU tar's own archives: identical results, and no member declined to Python."""
    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "file").write_bytes(b"data" * 300)
    (tree / "empty").write_bytes(b"")
    (tree / "sub" / "link").symlink_to("file")
    os.link(tree / "sub" / "file", tree / "hard")
    os.setxattr(tree / "empty", "user.note", b"kept")
    archive = tmp_path / "a.tar"
    xattrs = ["--xattrs", "--xattrs-include=*"] if fmt == "posix" else []
    subprocess.run(
        ["tar", f"--format={fmt}", *xattrs, "-cf", archive, "-C", tree, "."],
        check=True,
        capture_output=True,
    )
    data = archive.read_bytes()
    members = assert_same(data)[0]
    assert len(members) == 6  # ., empty, sub, sub/file, sub/link, hard
    if fmt == "posix":
        assert {b"user.note": b"kept"} in [fields[13] for fields in members]

    scanner = _tarscan()
    declined = 0

    class Counting:
        def scan_entry(self, *args: Any) -> Any:
            nonlocal declined
            result = scanner.scan_entry(*args)
            declined += result == scanner.SLOW
            return result

    fd = os.memfd_create("tar")
    try:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
        reader = TarReader(fd)
        reader.native = Counting()  # type: ignore[assignment]
        for entry in reader.entries():
            reader.skip_data(entry.size, entry)
            reader.finish_data(entry)
    finally:
        os.close(fd)
    assert declined == 0


# -- what the scanner accepts and declines ----------------------------------------------------


def _scan(data: bytes, start: int = 0) -> Any:
    buf = bytearray(data)
    return _tarscan().scan_entry(buf, start, len(buf), MAX_META_SIZE)


def test_scan_end_marker_and_partial_input() -> None:
    scanner = _tarscan()
    assert _scan(END) == scanner.END
    assert _scan(b"") == 512  # a header's worth is needed first
    one = file(b"a", b"data")
    assert _scan(one[:300]) == 512
    record = pax([(b"path", b"x" * 600)])
    assert _scan(record) == len(record) + 512  # the records, then the member's own header


def test_scan_reads_a_member() -> None:
    one = member(
        b"dir/file",
        b"abc",
        records=[(b"mtime", b"1700000000.5"), (b"atime", b"-1.25"), (b"uid", b"70000")],
        xattrs={b"user.k": b"v"},
        mode=0o4755,
    )
    fields = _scan(one + END)
    assert fields[:13] == (
        b"dir/file",
        b"0",
        0o4755,
        70000,
        0,
        3,
        1_700_000_000_500_000_000,
        -1_250_000_000,
        None,
        b"",
        0,
        0,
        {b"user.k": b"v"},
    )
    assert fields[14] == len(one) - 512  # the data is next


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(header(b"f", checksum=1), id="bad-checksum"),
        pytest.param(header(b"f", uid=1 << 30), id="base-256-uid"),
        pytest.param(header(b"f", fields={100: b"0o644\x00\x00\x00"}), id="0o-prefix-mode"),
        pytest.param(header(b"f", fields={108: b"1_000\x00\x00\x00"}), id="underscore-uid"),
        pytest.param(pax([(b"GNU.sparse.major", b"1")]) + header(b"f"), id="gnu-sparse-pax"),
        pytest.param(pax([(b"size", b"12abc")]) + header(b"f"), id="pax-size-not-digits"),
        pytest.param(pax([(b"mtime", b" 5")]) + header(b"f"), id="pax-time-space"),
        pytest.param(pax([(b"mtime", b"99999999999")]) + header(b"f"), id="pax-time-far"),
        pytest.param(pax([(b"uid", b"1" * 19)]) + header(b"f"), id="pax-uid-19-digits"),
        pytest.param(header(b"f", type=b"S", magic=GNU_MAGIC), id="old-gnu-sparse"),
        pytest.param(gnu_long(b"n") + END, id="end-after-records"),
    ],
)
def test_scan_declines_the_unusual(data: bytes) -> None:
    assert _scan(data + bytes(1024)) == _tarscan().SLOW
    assert_same(data + END)


# -- random damage ---------------------------------------------------------------------------

_BASE = (
    member(b"a/" + b"n" * 120, b"x" * 1000, xattrs={b"user.x": b"1" * 40}, uid=5)
    + gnu_long(b"b/" + b"l" * 200)
    + file(b"short", b"y" * 10)
    + member(b"c", records=[(b"mtime", b"-12.000000001"), (b"ctime", b"3")], type=b"5")
    + header(b"dev", type=b"3", major=1, minor=3)
    + END
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(_BASE) - 1), st.integers(0, 255)), max_size=4))
def test_damaged_archives(flips: list[tuple[int, int]]) -> None:
    data = bytearray(_BASE)
    for offset, value in flips:
        data[offset] = value
    assert_same(bytes(data))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, len(_BASE)))
def test_truncated_archives(length: int) -> None:
    assert_same(_BASE[:length])


# -- random archives with valid checksums: the fields themselves are odd ---------------------

_NUMERIC_FIELDS = {100: 8, 108: 8, 116: 8, 124: 12, 136: 12, 329: 8, 337: 8}
_ODD_NUMBERS = [
    b"",
    b"0",
    b"-",
    b"-.5",
    b".",
    b"5.",
    b"1_0",
    b" 5",
    b"+5",
    b"5 ",
    b"-0",
    b"--1.5",
    b"0" * 20 + b"1",
    b"1" * 19,
    b"1.1234567890123",
    b"1.12a",
    b"9000000000.5",
    b"9000000001",
    b"-9000000000.999999999",
    b"1700000000.000000001",
]
_PAX_KEYS = [
    b"path",
    b"linkpath",
    b"size",
    b"uid",
    b"gid",
    b"mtime",
    b"atime",
    b"ctime",
    b"SCHILY.devmajor",
    b"SCHILY.devminor",
    b"SCHILY.xattr.user.a",
    b"SCHILY.xattr.",
    b"comment",
    b"GNU.sparse.name",
]
_field_text = st.lists(st.sampled_from(list(b"01234567 \x00\x80\xff-+_8")), max_size=12).map(bytes)
_records = st.lists(
    st.tuples(st.sampled_from(_PAX_KEYS), st.sampled_from(_ODD_NUMBERS) | st.binary(max_size=8)),
    max_size=3,
)
_member = st.tuples(
    st.sampled_from([b"0", b"\x00", b"5", b"2", b"3", b"4", b"6", b"1", b"g", b"S"]),
    _records,
    st.dictionaries(st.sampled_from(sorted(_NUMERIC_FIELDS)), _field_text, max_size=2),
    st.booleans(),  # a GNU long name first
    st.booleans(),  # GNU magic instead of POSIX
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_member, min_size=1, max_size=3))
def test_odd_fields_with_valid_checksums(members: list[Any]) -> None:
    parts = []
    for i, (kind, records, fields, long_name, gnu) in enumerate(members):
        if long_name:
            parts.append(gnu_long(b"long/" + b"n" * 120 + str(i).encode()))
        if records:
            parts.append(pax(records))
        raw = {
            offset: text.ljust(_NUMERIC_FIELDS[offset], b"\x00")[: _NUMERIC_FIELDS[offset]]
            for offset, text in fields.items()
        }
        magic = GNU_MAGIC if gnu else POSIX_MAGIC
        parts.append(header(b"m%d" % i, type=kind, size=3, fields=raw, magic=magic))
        parts.append(padded(b"abc"))
    assert_same(b"".join(parts) + END)
