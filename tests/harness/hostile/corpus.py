"""The whole hostile corpus (:data:`CASES`, :data:`ALL_CASES` by name) and writing it out.

The cases come from :mod:`.cases_paths`, :mod:`.cases_sizes` and :mod:`.cases_structure`, in
that order; each gets its ``extract_archive`` expectation from :data:`.extract.EXTRACT_DIFFERENCES`.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from tests.harness.hostile import cases_paths, cases_sizes, cases_structure
from tests.harness.hostile.case import HostileCase
from tests.harness.hostile.extract import EXTRACT_DIFFERENCES
from tests.harness.hostile.tarbuild import MiB

__all__ = [
    "ALL_CASES",
    "CASES",
    "EXTRACT_DIFFERENCES",
    "CorpusInfo",
    "HostileCase",
    "case_path",
    "uncompressed_stream",
    "write_case",
    "write_corpus",
]

CASES: list[HostileCase] = [*cases_paths.CASES, *cases_sizes.CASES, *cases_structure.CASES]
for _i, _case in enumerate(CASES):
    if _case.name in EXTRACT_DIFFERENCES:
        _expect, _why = EXTRACT_DIFFERENCES[_case.name]
        CASES[_i] = replace(_case, extract=_expect, extract_why=_why)


ALL_CASES: dict[str, HostileCase] = {c.name: c for c in CASES}
assert len(ALL_CASES) == len(CASES), "hostile case names must be unique"


def case_path(directory: Path, hostile: HostileCase) -> Path:
    """Where :func:`write_case` puts a case: ``<name>.tar`` or ``<name>.tar.gz``."""
    return directory / (hostile.name + (".tar.gz" if hostile.gzip else ".tar"))


class _Counter(io.RawIOBase):
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.out.write(data)
        self.count += len(data)
        return len(data)


def write_case(directory: Path, hostile: HostileCase) -> Path:
    """Write one case's input (streamed; gzip level 1 when ``hostile.gzip``); return its path."""
    path = case_path(directory, hostile)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as raw:
        if hostile.gzip:
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
                hostile.build(gz)  # type: ignore[arg-type]
        else:
            hostile.build(raw)
        if hostile.cut:
            raw.truncate(raw.tell() - hostile.cut)
    os.replace(tmp, path)
    return path


def uncompressed_stream(path: Path) -> Iterator[bytes]:
    """The tar bytes of a corpus file, decompressed, in chunks (for digests)."""
    with open(path, "rb") as fh:
        if path.name.endswith(".gz"):
            dec = zlib.decompressobj(zlib.MAX_WBITS | 16)
            while chunk := fh.read(MiB):
                while chunk:
                    yield dec.decompress(chunk)
                    if dec.eof:
                        chunk = dec.unused_data
                        dec = zlib.decompressobj(zlib.MAX_WBITS | 16)
                    else:
                        chunk = b""
        else:
            while chunk := fh.read(MiB):
                yield chunk


@dataclass
class CorpusInfo:
    """The corpus written to a directory: each case's file."""

    directory: Path
    files: dict[str, Path] = field(default_factory=dict)


def write_corpus(directory: Path, names: Iterable[str] | None = None) -> CorpusInfo:
    """Write the cases named (default: all) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    info = CorpusInfo(directory)
    for name in names if names is not None else ALL_CASES:
        info.files[name] = write_case(directory, ALL_CASES[name])
    return info
