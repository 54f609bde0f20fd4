"""PAX records: one parser (lcow._util.paxrecords), the same verdict from both tar readers."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from lcow._util.paxrecords import MalformedRecord, pax_records
from lcow._util.stricttar import StrictTarInfo
from lcow.convert.tarstream import TarReader
from lcow.errors import InvalidArgument


def _record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length).encode()) + len(body) != length:
        length += 1
    return str(length).encode() + body


@pytest.mark.parametrize(
    ("block", "records"),
    [
        (_record(b"path", b"a"), [(b"path", b"a")]),
        (_record(b"k", b"") + _record(b"k", b"2"), [(b"k", b""), (b"k", b"2")]),  # repeats kept
        (_record(b"k", b"v=w") + bytes(100), [(b"k", b"v=w")]),  # NUL padding after the last
        (_record(b"k", b"new\nline"), [(b"k", b"new\nline")]),  # the length decides, not "\n"
        (b"", []),
    ],
)
def test_well_formed_blocks(block: bytes, records: list[tuple[bytes, bytes]]) -> None:
    assert list(pax_records(block)) == records


_MALFORMED = [
    (b"0 k=v\n", 0, ""),  # a zero length
    (b"x k=v\n", 0, ""),  # not a number
    (b"99 k=v\n", 0, ""),  # runs past the block
    (b"6 k=vv", 0, ""),  # does not end in a newline
    (b"6 kvv\n", 0, "no '='"),
    (_record(b"a", b"1") + b"7 k=v!!", 6, ""),  # the second record
    (b"12345678901234567890123456 k=v\n", 0, ""),  # no space within 24 bytes
]


@pytest.mark.parametrize(("block", "offset", "why"), _MALFORMED)
def test_malformed_blocks_say_where(block: bytes, offset: int, why: str) -> None:
    with pytest.raises(MalformedRecord) as caught:
        list(pax_records(block))
    assert caught.value.offset == offset
    suffix = f": {why}" if why else ""
    assert str(caught.value) == f"malformed PAX record at byte {offset}{suffix}"


def _archive(block: bytes) -> bytes:
    """A member ``f`` preceded by the PAX header ``block``, and the end marker."""
    pax = tarfile.TarInfo("PaxHeaders/f")
    pax.type, pax.size = tarfile.XHDTYPE, len(block)
    member = tarfile.TarInfo("f")
    pad = bytes(-len(block) % 512)
    return (
        pax.tobuf(tarfile.USTAR_FORMAT)
        + block
        + pad
        + member.tobuf(tarfile.USTAR_FORMAT)
        + bytes(1024)
    )


def _stricttar_verdict(data: bytes) -> str:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|", tarinfo=StrictTarInfo) as tar:
            list(tar)
    except tarfile.ReadError as exc:
        return str(exc)
    return "ok"


def _tarstream_verdict(data: bytes, tmp_path: Path) -> str:
    path = tmp_path / "t.tar"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = TarReader(fd, name="t.tar")
        reader.native = None  # the Python parser (the C one declines unusual records to it)
        for entry in reader.entries():
            reader.skip_data(entry.size, entry)
            reader.finish_data(entry)
    except InvalidArgument as exc:
        return str(exc).removeprefix("PaxHeaders/f: ")  # the reader names the PAX member
    finally:
        os.close(fd)
    return "ok"


@pytest.mark.parametrize(
    "block",
    [_record(b"comment", b"fine"), _record(b"k", b"v") + bytes(7)] + [m[0] for m in _MALFORMED],
)
def test_both_tar_readers_judge_a_pax_block_alike(block: bytes, tmp_path: Path) -> None:
    data = _archive(block)
    assert _tarstream_verdict(data, tmp_path) == _stricttar_verdict(data)
