""":mod:`tarfile` made to read only whole archives.

``tarfile`` ends an iteration quietly at a damaged header past the first one, at the end of the
input without the end-of-archive marker, and at a single zero block: a cut or corrupted archive
then reads as a shorter, valid one. :class:`StrictTarInfo`, passed as ``tarinfo=`` to
``tarfile.open``, turns each of these into a :class:`tarfile.ReadError` whose text says where
(``not a tar archive`` when the very first block is no header), and accepts only the end marker
of POSIX: two zero blocks. Messages never quote a damaged header's bytes.
"""

from __future__ import annotations

import tarfile
from typing import Self

from lcow._util.paxrecords import MAX_META_SIZE, MalformedRecord, pax_records

__all__ = ["MAX_META_SIZE", "StrictTarInfo", "TooLarge"]

_META_TYPES = frozenset((b"x", b"g", b"X", b"L", b"K"))


class TooLarge(tarfile.ReadError):
    """An extended header (PAX records, a GNU long name) past :data:`MAX_META_SIZE`."""


_BLOCK = tarfile.BLOCKSIZE
_ZERO_BLOCK = bytes(_BLOCK)


class StrictTarInfo(tarfile.TarInfo):
    """A TarInfo whose reading fails on anything but a whole archive (see the module)."""

    def _proc_member(self, tarfile: tarfile.TarFile) -> Self:
        # Checked before tarfile reads the records into memory.
        if self.type in _META_TYPES and self.size > MAX_META_SIZE:
            kind = self.type.decode("ascii", "replace")
            raise TooLarge(
                f"{kind} records of {self.size} bytes exceed the limit of {MAX_META_SIZE}"
            )
        return super()._proc_member(tarfile)  # type: ignore[misc, no-any-return]

    def _proc_pax(self, tarfile: tarfile.TarFile) -> Self:
        # The records are checked as Go's reader checks them (tarfile before 3.11.10 takes a
        # record whose length runs past the block), then tarfile parses the same bytes.
        size = self._block(self.size)  # type: ignore[attr-defined]
        real = tarfile.fileobj
        assert real is not None
        buf = real.read(size)
        if len(buf) < self.size:
            raise _ReadError("unexpected end of data inside PAX records")
        _check_pax_records(buf[: self.size])
        tarfile.fileobj = _Replay(buf, real)  # type: ignore[assignment]
        try:
            return super()._proc_pax(tarfile)  # type: ignore[misc, no-any-return]
        finally:
            tarfile.fileobj = real

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> Self:
        offset = archive.offset
        try:
            return super().fromtarfile(archive)
        except _EOF_HEADER:  # one zero block: the second must follow
            second = archive.fileobj.read(_BLOCK)
            if second == _ZERO_BLOCK:
                raise
            if len(second) < _BLOCK:
                raise _ReadError(
                    f"truncated archive: the end-of-archive marker is one zero block at offset "
                    f"{offset}, not two"
                ) from None
            raise _ReadError(
                f"invalid tar header at offset {offset + _BLOCK}: a zero block followed by data"
            ) from None
        except _EMPTY_HEADER:
            if not offset:
                raise _ReadError("empty input, not a tar archive") from None
            raise _ReadError(
                f"truncated archive: no end-of-archive marker at offset {offset}"
            ) from None
        except _TRUNCATED_HEADER:
            raise _ReadError(
                f"unexpected end of input inside a header at offset {offset}"
            ) from None
        except _HEADER_ERROR as exc:  # bad checksum, a bad number, a damaged extended header
            if not offset:
                raise _ReadError(
                    f"not a tar archive (the first block is no tar header: {exc})"
                ) from None
            raise _ReadError(f"invalid tar header at offset {offset}: {exc}") from None


# tarfile's header errors are not in its __all__; looked up once.
_EOF_HEADER: type[Exception] = tarfile.EOFHeaderError  # type: ignore[attr-defined]
_EMPTY_HEADER: type[Exception] = tarfile.EmptyHeaderError  # type: ignore[attr-defined]
_TRUNCATED_HEADER: type[Exception] = tarfile.TruncatedHeaderError  # type: ignore[attr-defined]
_HEADER_ERROR: type[Exception] = tarfile.HeaderError
_ReadError = tarfile.ReadError


def _check_pax_records(data: bytes) -> None:
    """The records as Go's reader takes them (:mod:`lcow._util.paxrecords`)."""
    try:
        for _ in pax_records(data):
            pass
    except MalformedRecord as exc:
        raise _ReadError(str(exc)) from None


class _Replay:
    """The archive stream with a block already read put back: one read returns it, all else
    goes to the stream."""

    def __init__(self, block: bytes, stream: object) -> None:
        self._block: bytes | None = block
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        block, self._block = self._block, None
        if block is not None:
            return block
        return self._stream.read(size)  # type: ignore[attr-defined, no-any-return]

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)
