"""bzip2 and xz through :func:`lcow._util.decompress.decompress` (their modules load on use),
and what the ``lcow tar2ext4`` start leaves unimported."""

from __future__ import annotations

import bz2
import io
import lzma
import subprocess
import sys
from collections.abc import Callable

import pytest

from lcow._util.decompress import decompress, detect
from lcow.errors import InvalidArgument

DATA = bytes(range(256)) * 4000

COMPRESS: dict[str, Callable[[bytes], bytes]] = {"bzip2": bz2.compress, "xz": lzma.compress}


def _run(kind: str, blob: bytes) -> bytes:
    return b"".join(decompress(kind, io.BytesIO(blob).read, name="layer.tar", chunk=1 << 16))


@pytest.mark.parametrize("kind", sorted(COMPRESS))
def test_whole_streams_and_concatenated_members(kind: str) -> None:
    blob = COMPRESS[kind](DATA)
    assert detect(blob[:10], kinds=(kind,)) == kind
    assert _run(kind, blob) == DATA
    assert _run(kind, blob + COMPRESS[kind](b"tail")) == DATA + b"tail"


@pytest.mark.parametrize("kind", sorted(COMPRESS))
def test_corrupt_stream_names_the_input(kind: str) -> None:
    blob = bytearray(COMPRESS[kind](DATA))
    blob[len(blob) // 2] ^= 0xFF
    with pytest.raises(InvalidArgument, match=f"layer.tar: corrupt {kind} stream"):
        _run(kind, bytes(blob))


@pytest.mark.parametrize("kind", sorted(COMPRESS))
def test_cut_stream_is_truncated(kind: str) -> None:
    blob = COMPRESS[kind](DATA)
    with pytest.raises(InvalidArgument, match=f"layer.tar: (truncated|corrupt) {kind} stream"):
        _run(kind, blob[: len(blob) - 7])


def test_tar2ext4_start_imports_no_unused_modules() -> None:
    """The command's start (issue 17) loads no decompressor it may not need, no JSON and no
    shell quoting; each costs every conversion start-up time."""
    code = (
        "import sys, lcow.cli.main, lcow.cli.tar2ext4_cmd, lcow.convert.tar2ext4;"
        "print(sorted({'bz2', 'lzma', 'json', 'shlex'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "[]"
