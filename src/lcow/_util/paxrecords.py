"""PAX extended-header records: the rules both tar readers apply (SPEC §6.6, §6.7).

lcow reads tars two ways, kept apart for measured reasons: the hand-written streaming reader of
the converter (:mod:`lcow.convert.tarstream`) and :mod:`tarfile` made strict for the
extractors (:mod:`lcow._util.stricttar`). Both take a PAX block as Go's reader does: records
``"<len> <key>=<value>\\n"`` whose decimal length counts the whole record, each inside the
block, NUL padding allowed after the last; and neither reads a block (or a GNU long name) past
:data:`MAX_META_SIZE`.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["MAX_META_SIZE", "MalformedRecord", "pax_records"]

#: Largest PAX record block or GNU long name read (Go's reader: 1 MiB); bigger is a "bomb".
MAX_META_SIZE = 1 << 20
_MAX_LENGTH_DIGITS = 24  # where the space after the length must be found


class MalformedRecord(ValueError):
    """A record that is not ``"<len> <key>=<value>\\n"`` inside the block. The message says
    where, never quoting the damaged bytes.

    Attributes:
        offset: the record's first byte in the block.
    """

    def __init__(self, offset: int, why: str = "") -> None:
        super().__init__(f"malformed PAX record at byte {offset}" + (f": {why}" if why else ""))
        self.offset = offset


def pax_records(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """``(key, value)`` of each record of the PAX block ``data``, in order (a key may repeat).

    Raises:
        MalformedRecord: a record without a valid length, running past the block, not ending in
            a newline, or without ``=``.
    """
    pos, end = 0, len(data)
    while pos < end and data[pos]:  # NUL padding may follow the last record
        space = data.find(b" ", pos, pos + _MAX_LENGTH_DIGITS)
        try:
            length = int(data[pos:space]) if space > pos else -1
        except ValueError:
            length = -1
        if length <= 0 or pos + length > end or data[pos + length - 1] != 0x0A:
            raise MalformedRecord(pos)
        key, eq, value = data[space + 1 : pos + length - 1].partition(b"=")
        if not eq:
            raise MalformedRecord(pos, "no '='")
        yield key, value
        pos += length
