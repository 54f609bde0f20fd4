"""Hostile cases about the archive itself: special files and modes, broken structure
(checksums, truncation, end blocks, compression) and AUFS whiteouts."""

from __future__ import annotations

import stat
from typing import BinaryIO

from lcow.errors import InvalidArgument, NotFound
from tests.harness.hostile.case import Builder, HostileCase, lazy, registry, tar_of
from tests.harness.hostile.expect import (
    absent,
    entry_count,
    fails,
    has_mode,
    has_xattr,
    is_device,
    is_dir,
    is_file,
    is_symlink,
    ok,
    only,
)
from tests.harness.hostile.tarbuild import (
    BLOCK,
    END,
    MiB,
    directory,
    file,
    hardlink,
    header,
    member,
    pax,
)

__all__ = ["CASES"]

CASES: list[HostileCase] = []
case = registry(CASES)
IA, NF = InvalidArgument, NotFound


# -- special files and modes -----------------------------------------------------------------

case(
    "device-nodes",
    "character device 1:3, block device 8:0 and device 259:65536 (large minor)",
    tar_of(
        member(b"null", type=b"3", major=1, minor=3),
        member(b"sda", type=b"4", major=8, minor=0),
        member(b"nvme", type=b"4", major=259, minor=65536),
    ),
    ok(
        "devices kept with their numbers",
        is_device(b"/null", stat.S_IFCHR, 1, 3),
        is_device(b"/sda", stat.S_IFBLK, 8, 0),
        is_device(b"/nvme", stat.S_IFBLK, 259, 65536),
    ),
)
case(
    "device-major-too-big",
    "a device with major 2^20 (ext4 and Linux keep 12 bits)",
    tar_of(member(b"bigdev", type=b"3", major=1 << 20, minor=0)),
    fails(IA, "bigdev", "device"),
)
case(
    "fifo",
    "a named pipe",
    tar_of(member(b"pipe", type=b"6", mode=0o600)),
    ok("fifo kept", has_mode(b"/pipe", 0o600)),
)
case(
    "setuid-setgid-sticky",
    "a setuid root file, a setgid file, a sticky world-writable directory and mode 7777",
    tar_of(
        file(b"suid", b"#!", mode=0o4755),
        file(b"sgid", b"#!", mode=0o2755),
        directory(b"tmp/", mode=0o1777),
        file(b"all", b"", mode=0o7777),
    ),
    ok(
        "special bits kept",
        is_file(b"/suid", mode=0o4755),
        is_file(b"/sgid", mode=0o2755),
        is_dir(b"/tmp", mode=0o1777),
        is_file(b"/all", mode=0o7777),
    ),
)
case(
    "mode-garbage-high-bits",
    "a mode field with bits above 07777 set (0o177777)",
    tar_of(file(b"modebits", b"m", mode=0o177777)),
    ok("only the permission bits are kept", is_file(b"/modebits", mode=0o7777)),
)
case(
    "contiguous-file",
    "type 7 (contiguous file), a regular file everywhere that matters",
    tar_of(member(b"contig", b"c", type=b"7")),
    ok("a regular file", is_file(b"/contig", b"c")),
)
case(
    "dir-and-symlink-with-data",
    "a directory and a symlink header that carry data blocks",
    tar_of(
        member(b"dd/", b"d" * 1000, type=b"5", mode=0o755),
        member(b"sl", b"s" * 600, type=b"2", linkname=b"target"),
        file(b"after", b"a"),
    ),
    ok(
        "data skipped",
        is_dir(b"/dd"),
        is_symlink(b"/sl", b"target"),
        is_file(b"/after", b"a"),
    ),
)
for _flag, _what in ((b"V", "volume label"), (b"N", "old GNU long name"), (b"X", "type X")):
    case(
        f"unknown-type-{_flag.decode()}",
        f"a member of type {_flag.decode()} ({_what})",
        tar_of(file(b"ok"), member(b"weird", b"w", type=_flag)),
        fails(IA, "weird", "type"),
    )

# -- archive structure -----------------------------------------------------------------------

case(
    "corrupt-checksum",
    "a header whose stored checksum is wrong: no header, so its name is not quoted",
    tar_of(file(b"first"), header(b"victim", size=0, checksum=1234)),
    fails(IA, "invalid tar header at offset 512", "checksum", "after entry first"),
)
case(
    "truncated-in-header",
    "the input ends 300 bytes into a header",
    tar_of(file(b"ok", b"x"), header(b"second")[:300], end=False),
    fails(IA, "end of input"),
)
case(
    "truncated-in-data",
    "the input ends in the middle of a member's data",
    tar_of(file(b"ok", b"x"), file(b"cut", b"t" * 10_000)[: BLOCK + 5000], end=False),
    fails(IA, "cut", "unexpected end"),
)
case(
    "truncated-in-pax",
    "the input ends inside a PAX header's records",
    tar_of(file(b"ok", b"x"), pax([(b"path", b"p" * 300)])[: BLOCK + 100], end=False),
    fails(IA, "unexpected end"),
)
case(
    "not-a-tar",
    "10 KiB of pseudo-random bytes",
    lazy(lambda: bytes((i * 7919 + (i >> 5)) % 256 for i in range(10_240))),
    fails(IA, "not a tar archive"),
)
case(
    "not-a-tar-text",
    "a text file (its first 100 bytes are no entry name to quote)",
    lazy(lambda: b"# Network services, Internet style\n#\n" + b"ftp 21/tcp\n" * 900),
    fails(IA, "not a tar archive"),
)
case(
    "empty-input",
    "zero bytes: a tar cut at offset 0",
    tar_of(end=False),
    fails(IA, "empty input"),
)
case(
    "no-end-marker",
    "two members, then the input ends at a header boundary (a tar cut at a block boundary)",
    tar_of(file(b"a", b"x"), file(b"b", b"y"), end=False),
    fails(IA, "no end-of-archive marker", "after entry b"),
)
case(
    "one-zero-block",
    "a member and a single zero block: half an end-of-archive marker",
    tar_of(file(b"a", b"x"), bytes(BLOCK), end=False),
    fails(IA, "one zero block"),
)
case(
    "zero-block-then-member",
    "a member, one zero block, then another member (Go's reader: ErrHeader)",
    tar_of(file(b"a", b"x"), bytes(BLOCK), file(b"b", b"y")),
    fails(IA, "invalid tar header at offset 1536", "zero block followed by data"),
)
case(
    "gzip-cut-trailer",
    "a whole tar, gzip-compressed, without the 8-byte trailer (CRC-32 and length)",
    tar_of(file(b"a", b"x" * 5000)),
    fails(IA, "truncated gzip stream"),
    gzip=True,
    cut=8,
)
case(
    "gzip-cut-mid-stream",
    "a gzip-compressed tar cut in the middle of its deflate data",
    lazy(lambda: file(b"a", bytes(range(256)) * 4000) + END),
    fails(IA, "truncated gzip stream"),
    gzip=True,
    cut=600,
)
case(
    "entries-after-end-marker",
    "a member, the end-of-archive marker, then another member",
    tar_of(file(b"before", b"b"), END, file(b"after", b"a")),
    ok("what follows the marker is ignored", is_file(b"/before"), absent(b"/after")),
)


def _zeros(total: int) -> Builder:
    def build(out: BinaryIO) -> None:
        chunk = bytes(MiB)
        for _ in range(total // MiB):
            out.write(chunk)

    return build


case(
    "zeros-bomb",
    "256 MiB of zero bytes (gzip: about 250 KB): an end marker, then padding to drain",
    _zeros(256 * MiB),
    ok("an empty layer, memory flat", only(b"/", [])),
    gzip=True,
    slow=True,
)


case(
    "many-long-names",
    "20,000 files with 255-byte names in one directory",
    lambda out: _many_long_names(out, 20_000),
    ok("all 20,000 names", entry_count(b"/long", 20_000)),
    gzip=True,
    slow=True,
)


def _many_long_names(out: BinaryIO, count: int) -> None:
    out.write(directory(b"long/"))
    for i in range(count):
        name = b"long/" + (b"%08d" % i).ljust(255, b"n")
        out.write(file(name))
    out.write(END)


def _million(out: BinaryIO) -> None:
    out.write(directory(b"big/"))
    batch = []
    for i in range(1_000_000):
        batch.append(header(b"big/f%07d" % i))
        if len(batch) == 4096:
            out.write(b"".join(batch))
            batch.clear()
    out.write(b"".join(batch) + END)


case(
    "million-entries-one-dir",
    "1,000,000 empty files in one directory (512 MB of headers, 9 MB gzip)",
    _million,
    ok("all 1,000,000 entries", entry_count(b"/big", 1_000_000)),
    gzip=True,
    slow=True,
    rss_mib=450,
)

# -- AUFS whiteouts (converted, as ApplyDiff does) --------------------------------------------

case(
    "whiteout-dotdot",
    "a/.wh... : a whiteout of '..' (would create a '..' device entry)",
    tar_of(directory(b"a/"), file(b"a/.wh...")),
    fails(IA, "a/.wh...", "whiteout"),
)
case(
    "whiteout-dot",
    "a/.wh.. : a whiteout of '.'",
    tar_of(directory(b"a/"), file(b"a/.wh..")),
    fails(IA, "a/.wh..", "whiteout"),
)
case(
    "whiteout-empty",
    "a/.wh. : a whiteout of an empty name",
    tar_of(directory(b"a/"), file(b"a/.wh.")),
    fails(IA, "a/.wh.", "whiteout"),
)
case(
    "whiteout-escape",
    "../.wh.x : a whiteout outside the layer",
    tar_of(file(b"../.wh.x")),
    fails(IA, "../.wh.x"),
)
case(
    "opaque-under-file",
    "f as a file, then f/.wh..wh..opq",
    tar_of(file(b"f", b"x"), file(b"f/.wh..wh..opq")),
    fails(IA, "f/.wh..wh..opq", "not a directory"),
)
case(
    "whiteout-ok",
    "a/.wh.gone and a/.wh..wh..opq: the regular whiteouts",
    tar_of(directory(b"a/"), file(b"a/.wh.gone"), file(b"a/.wh..wh..opq")),
    ok(
        "overlay whiteout and opaque xattr",
        is_device(b"/a/gone", stat.S_IFCHR, 0, 0),
        has_xattr(b"/a", b"trusted.overlay.opaque", b"y"),
    ),
)
case(
    "plnk-missing-source",
    "a hard link to .wh..wh.plnk/missing (an AUFS link source that is not there)",
    tar_of(hardlink(b"h", b".wh..wh.plnk/missing")),
    fails(NF, "h"),
)
