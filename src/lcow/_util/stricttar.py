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

__all__ = ["StrictTarInfo"]

_BLOCK = tarfile.BLOCKSIZE
_ZERO_BLOCK = bytes(_BLOCK)


class StrictTarInfo(tarfile.TarInfo):
    """A TarInfo whose reading fails on anything but a whole archive (see the module)."""

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
