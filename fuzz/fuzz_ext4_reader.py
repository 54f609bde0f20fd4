#!/usr/bin/env python3
"""Fuzz the ext4 reader: a sparse-encoded image (see ``_common.materialize``) is opened and
everything in it is walked, mapped, read, scanned and summed.

Checksums are verified for inputs of odd length. Limits are tightened (64 levels, 16,384
entries per directory) so one input stays quick; every input must be read or raise an
``LcowError`` (``CorruptImage``, ``LimitExceeded``, ``NotSupported``...).
"""

from __future__ import annotations

import os
import stat
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import fuzz_main, guarded, instrumented, materialize, memfd

with instrumented():
    from lcow.formats.ext4.reader import Ext4Reader, ReadLimits
    from lcow.formats.source import FileSource

_FD = memfd("ext4-image")
_LIMITS = ReadLimits(max_depth=64, max_dir_size=1 << 22, max_dir_entries=1 << 14,
                     max_xattr_bytes=1 << 16)  # fmt: skip
_READ = 1 << 16
_MAX_ENTRIES = 4096


@guarded
def check(data: bytes) -> None:
    size = materialize(data, _FD)
    source = FileSource(_FD, size=size, name="fuzz.img")
    reader = Ext4Reader(source, verify_checksums=bool(len(data) & 1), limits=_LIMITS)
    for count, entry in enumerate(reader.walk()):
        if count >= _MAX_ENTRIES:
            break
        if stat.S_ISREG(entry.mode) or stat.S_ISDIR(entry.mode):
            for _ in reader.spans(entry.inode, path=entry.path):
                pass
            with reader.open_file(entry.inode, path=entry.path) as fh:
                fh.read(_READ)
    for count, _scanned in enumerate(reader.scan(capability=True, hide_lost_found=True)):
        if count >= _MAX_ENTRIES:
            break
    reader.content_size()
    reader.lookup(b"/lost+found/../etc/passwd")


one_input = check

if __name__ == "__main__":
    fuzz_main(one_input)
