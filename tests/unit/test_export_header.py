"""The export's fast tar header path equals the general encoder byte for byte (issue 3).

:mod:`lcow.convert.export` builds the common member header (short name, ids and size in octal
range, non-negative time, at most a nanosecond ``mtime`` PAX record, no link, device or
xattr) itself, for speed; everything else goes to :meth:`TarHeader.encode`. The two must never
differ, and Python's tarfile must read what they write.
"""

from __future__ import annotations

import io
import tarfile
from decimal import Decimal
from typing import TypedDict

from hypothesis import given, settings
from hypothesis import strategies as st

from lcow.convert.export import _header
from lcow.convert.tarwriter import TarHeader

NS = 1_000_000_000


class _Fields(TypedDict):
    """The header fields both encoders take for every member."""

    typeflag: bytes
    mode: int
    uid: int
    gid: int
    size: int


class _Extras(TypedDict, total=False):
    """The fields that send a member to the general encoder."""

    linkname: bytes
    devmajor: int
    devminor: int
    xattrs: dict[bytes, bytes]


names = st.binary(min_size=1, max_size=260).filter(lambda n: b"\0" not in n)
ids = st.one_of(st.integers(0, 0o7777777), st.integers(0o7777777, 2**32 - 1))
sizes = st.one_of(st.integers(0, 1 << 20), st.integers(0o77777777777 - 5, 0o77777777777 + 5))
times = st.one_of(
    st.integers(0, 2**33 * NS),
    st.integers(0, 2**33).map(lambda s: s * NS),
    st.integers(-(2**31) * NS, 0),
    st.integers(0o77777777777 * NS - 5 * NS, 0o77777777777 * NS + 5 * NS),
)


@settings(max_examples=500)
@given(
    name=names,
    typeflag=st.sampled_from([b"0", b"5", b"6", b"x"]),
    mode=st.integers(0, 0o177777),
    uid=ids,
    gid=ids,
    size=sizes,
    mtime_ns=times,
)
def test_fast_header_equals_the_general_encoder(
    name: bytes, typeflag: bytes, mode: int, uid: int, gid: int, size: int, mtime_ns: int
) -> None:
    fields = _Fields(typeflag=typeflag, mode=mode, uid=uid, gid=gid, size=size)
    assert _header(name, mtime_ns=mtime_ns, **fields) == TarHeader.encode(
        name, mtime_ns=mtime_ns, **fields
    )


@settings(max_examples=200)
@given(name=names.filter(lambda n: n.strip(b"/") == n), mtime_ns=times, size=st.integers(0, 5000))
def test_tarfile_reads_the_fast_header(name: bytes, mtime_ns: int, size: int) -> None:
    data = _header(name, typeflag=b"0", mode=0o640, uid=7, gid=8, size=size, mtime_ns=mtime_ns)
    data += bytes(size) + bytes(-size % 512) + bytes(1024)
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as tf:
        (info,) = tf.getmembers()
    assert info.name.encode("utf-8", "surrogateescape") == name
    assert (info.mode, info.uid, info.gid, info.size) == (0o640, 7, 8, size)
    text = info.pax_headers.get("mtime")
    assert (int(Decimal(text) * NS) if text is not None else int(info.mtime) * NS) == mtime_ns


def test_other_members_use_the_general_encoder() -> None:
    extras: list[_Extras] = [
        {"linkname": b"target"},
        {"devmajor": 1, "devminor": 3},
        {"xattrs": {b"user.a": b"1"}},
    ]
    for kwargs in extras:
        fields = _Fields(typeflag=b"0", mode=0o644, uid=0, gid=0, size=0)
        assert _header(b"n", mtime_ns=NS, **fields, **kwargs) == TarHeader.encode(
            b"n", mtime_ns=NS, **fields, **kwargs
        )
