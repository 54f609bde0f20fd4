"""Shared plumbing of the atheris harnesses in this directory.

Each harness defines ``one_input(data: bytes) -> None``, which must return normally or raise an
:class:`~lcow.errors.LcowError` (the documented failure of every lcow reader) for *any* input;
anything else — another exception, a hang, runaway memory — is a finding. Running a harness as a
script fuzzes it with atheris/libFuzzer (flags such as ``-runs=N`` pass through); importing it
(the regression tests do) needs no atheris.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import sys
from collections.abc import Callable

__all__ = [
    "MAX_IMAGE",
    "fuzz_main",
    "guarded",
    "instrumented",
    "materialize",
    "memfd",
    "pack_sparse",
]

#: Largest virtual file a sparse-encoded input may describe.
MAX_IMAGE = 64 << 20
_HEAD = struct.Struct("<I")
_RECORD = struct.Struct("<IH")


def memfd(name: str) -> int:
    """An anonymous in-memory regular file (reused across inputs)."""
    return os.memfd_create(name, os.MFD_CLOEXEC)


def reset(fd: int, data: bytes = b"") -> None:
    """Make ``fd`` hold exactly ``data``, offset 0."""
    os.ftruncate(fd, 0)
    if data:
        os.pwrite(fd, data, 0)
    os.lseek(fd, 0, os.SEEK_SET)


def materialize(data: bytes, fd: int) -> int:
    """Write a sparse-encoded image into ``fd``; return its size.

    Encoding: ``<u32 size>`` then records ``<u32 offset><u16 length><bytes>``; the file is
    ``size % MAX_IMAGE`` bytes of zeros with each record written at its offset (records past
    the end are clipped). Lets the fuzzer mutate megabyte images through kilobyte inputs.
    """
    os.ftruncate(fd, 0)
    if len(data) < _HEAD.size:
        return 0
    size = _HEAD.unpack_from(data)[0] % MAX_IMAGE
    os.ftruncate(fd, size)
    pos = _HEAD.size
    while pos + _RECORD.size <= len(data):
        offset, length = _RECORD.unpack_from(data, pos)
        pos += _RECORD.size
        chunk = data[pos : pos + length]
        pos += length
        if offset < size and chunk:
            os.pwrite(fd, chunk[: size - offset], offset)
    return size


def pack_sparse(image: bytes, *, chunk: int = 512) -> bytes:
    """The sparse encoding of ``image``: its non-zero ``chunk``-byte pieces (for seeds)."""
    out = [_HEAD.pack(len(image))]
    zero = bytes(chunk)
    pos = 0
    while pos < len(image):
        piece = image[pos : pos + chunk]
        if piece != zero[: len(piece)]:
            end = pos + len(piece)  # merge neighbouring non-zero pieces
            while end < len(image):
                piece = image[end : end + chunk]
                if piece == zero[: len(piece)]:
                    break
                end += chunk
                if end - pos >= 0xFFFF - chunk:
                    break
            block = image[pos:end]
            out.append(_RECORD.pack(pos, len(block)) + block)
            pos = end
        else:
            pos += chunk
    return b"".join(out)


def guarded(check: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """``check`` with every :class:`LcowError` swallowed: only other failures escape.

    (lcow is imported here, not at the top, so a harness's own imports are the first ones and
    get instrumented.)
    """
    from lcow.errors import LcowError

    def one_input(data: bytes) -> None:
        with contextlib.suppress(LcowError):
            check(data)

    one_input.__name__ = check.__name__
    return one_input


def _fuzzing() -> bool:
    main = sys.modules.get("__main__")
    return os.path.basename(getattr(main, "__file__", "") or "").startswith("fuzz_")


def instrumented() -> contextlib.AbstractContextManager[object]:
    """Around a harness's lcow imports: atheris coverage of the lcow modules they load, when
    the harness runs as a fuzzer; nothing when it is imported (regression tests)."""
    if not _fuzzing():
        return contextlib.nullcontext()
    import atheris

    return atheris.instrument_imports(include=["lcow"])  # type: ignore[no-any-return]


def fuzz_main(one_input: Callable[[bytes], None]) -> None:
    """Fuzz ``one_input`` with atheris/libFuzzer (``sys.argv`` holds libFuzzer's flags)."""
    import atheris

    # Readers warn about odd input; a fuzzer needs no log. Only here: importing a harness
    # (the regression tests do) must not silence logging for the whole process.
    logging.disable(logging.CRITICAL)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
