"""Hostile cases about sizes: huge or lying size fields, metadata bombs (entry counts, long
names, PAX records) and extended attributes."""

from __future__ import annotations

from lcow.errors import InvalidArgument, LimitExceeded
from tests.harness.hostile.case import HostileCase, lazy, registry, tar_of
from tests.harness.hostile.expect import fails, has_xattr, is_file, ok, owner_is, size_is
from tests.harness.hostile.tarbuild import (
    END,
    GiB,
    MiB,
    TiB,
    file,
    gnu_long,
    gnu_old_sparse,
    header,
    member,
    padded,
    pax,
    sparse_v1,
    symlink,
)

__all__ = ["CASES"]

CASES: list[HostileCase] = []
case = registry(CASES)
IA, LE = InvalidArgument, LimitExceeded


# -- sizes -----------------------------------------------------------------------------------

case(
    "declared-1tib-truncated",
    "a file header declaring 1 TiB followed by 4 KiB and the end of input",
    tar_of(file(b"huge", size=TiB) + b"h" * 4096, end=False),
    fails(LE, "huge", "maximum size"),
)
case(
    "declared-100gib-truncated",
    "a file header declaring 100 GiB (under max-size) followed by 4 KiB",
    tar_of(file(b"big", size=100 * GiB) + b"b" * 4096, end=False),
    fails(IA, "big", "unexpected end"),
)
case(
    "size-base256-2p80",
    "a GNU base-256 size field of 2^80 bytes",
    tar_of(file(b"enormous", size=1 << 80)),
    fails(LE, "enormous"),
)
case(
    "size-negative",
    "a base-256 size field holding -1",
    tar_of(file(b"negative", size=-1)),
    fails(IA, "negative"),
)
case(
    "size-field-garbage",
    "a size field of letters (checksum fixed)",
    tar_of(header(b"garbage-size", fields={124: b"zzzzzzzzzzz\x00"})),
    fails(IA, "garbage-size", "size"),
)
case(
    "pax-size-huge",
    "a PAX size record of 10^20 bytes",
    tar_of(file(b"paxhuge", records=[(b"size", b"100000000000000000000")]), end=False),
    fails(LE, "paxhuge"),
)
case(
    "pax-size-not-a-number",
    "a PAX size record that is not a number",
    tar_of(file(b"paxnan", b"x", records=[(b"size", b"12abc")])),
    fails(IA, "paxnan", "size"),
)
case(
    "pax-size-negative",
    "a PAX size record of -1024 (would move the reader backwards)",
    tar_of(file(b"paxneg", b"x", records=[(b"size", b"-1024")])),
    fails(IA, "paxneg", "size"),
)
case(
    "pax-uid-huge",
    "a PAX uid of 2^40 (ext4 owners are 32-bit)",
    tar_of(file(b"bigowner", b"x", records=[(b"uid", b"1099511627776")])),
    fails(IA, "bigowner", "uid"),
)
case(
    "owner-max",
    "uid and gid 4294967294, the largest 32-bit ids short of -1",
    tar_of(file(b"maxowner", b"x", records=[(b"uid", b"4294967294"), (b"gid", b"4294967294")])),
    ok("owner kept", owner_is(b"/maxowner", 4294967294, 4294967294)),
)
case(
    "pax-times-extreme",
    "PAX mtime -10^15.5 and atime 10^15 seconds: clamped to what ext4 stores",
    tar_of(
        file(b"old", b"o", records=[(b"mtime", b"-1000000000000000.5")]),
        file(b"new", b"n", records=[(b"atime", b"1000000000000000")]),
    ),
    ok("both files kept", is_file(b"/old", b"o"), is_file(b"/new", b"n")),
)
case(
    "pax-time-garbage",
    "a PAX mtime written in exponent notation (9e9)",
    tar_of(file(b"when", b"n", records=[(b"mtime", b"9e9")])),
    fails(IA, "when", "mtime"),
)
case(
    "sparse-1tib-realsize",
    "a GNU sparse 1.0 file of 1 TiB logical size holding 4 KiB at its end",
    tar_of(sparse_v1(b"holey", TiB, [(TiB - 4096, b"z" * 4096)])),
    ok("1 TiB sparse file", size_is(b"/holey", TiB)),
)
case(
    "sparse-map-beyond-file",
    "a sparse map with a segment past the file's logical size",
    tar_of(sparse_v1(b"beyond", 8192, [(0, b"a" * 512), (16384, b"b" * 512)])),
    fails(IA, "beyond", "sparse map"),
)
case(
    "sparse-map-more-than-stored",
    "an old GNU sparse member whose map describes more bytes than it stores",
    tar_of(gnu_old_sparse(b"short", 65536, [(0, 8192), (32768, 8192)], b"s" * 4096)),
    fails(IA, "short", "sparse map"),
)
case(
    "sparse-count-bomb",
    "a GNU sparse 1.0 map announcing 10^12 segments",
    tar_of(
        member(
            b"GNUSparseFile.0/bomb",
            padded(b"1000000000000\n0\n1\n") + b"x",
            records=[
                (b"GNU.sparse.major", b"1"),
                (b"GNU.sparse.minor", b"0"),
                (b"GNU.sparse.name", b"bomb"),
                (b"GNU.sparse.realsize", b"1"),
            ],
        )
    ),
    fails(LE, "bomb", "sparse map"),
)
case(
    "sparse-overlapping",
    "an old GNU sparse member with overlapping segments",
    tar_of(gnu_old_sparse(b"overlap", 16384, [(4096, 4096), (0, 8192)], b"o" * 12288)),
    fails(IA, "overlap", "sparse map"),
)

# -- metadata bombs --------------------------------------------------------------------------

case(
    "pax-record-bomb",
    "one PAX header of 2 MiB (a 2 MiB comment record)",
    lazy(lambda: pax([(b"comment", b"c" * (2 * MiB))]) + file(b"after", b"x") + END),
    fails(LE, "limit"),
)
case(
    "pax-chain-bomb",
    "2500 PAX headers of 512 bytes each (1.2 MiB) before one member",
    lazy(
        lambda: (
            b"".join(pax([(b"comment", b"c" * 480)]) for _ in range(2500))
            + file(b"after", b"x")
            + END
        )
    ),
    fails(LE, "limit"),
)
case(
    "pax-declared-1tib",
    "a PAX header declaring 1 TiB of records, then the end of input",
    tar_of(header(b"PaxHeader", type=b"x", size=TiB), b"9 a=bcd\n", end=False),
    fails(LE, "limit"),
)
case(
    "gnu-longname-bomb",
    "a GNU long name record of 2 MiB",
    lazy(lambda: gnu_long(b"n" * (2 * MiB)) + file(b"after", b"x") + END),
    fails(LE, "limit"),
)
case(
    "gnu-longlink-bomb",
    "a GNU long link record of 2 MiB",
    lazy(lambda: gnu_long(b"l" * (2 * MiB), b"K") + symlink(b"after", b"x") + END),
    fails(LE, "limit"),
)
case(
    "pax-global-bomb",
    "a PAX global header of 2 MiB",
    lazy(lambda: pax([(b"comment", b"g" * (2 * MiB))], type=b"g") + file(b"after") + END),
    fails(LE, "limit"),
)
case(
    "pax-many-small-records",
    "one PAX header of 30,000 unknown records (900 KB, under the limit)",
    lazy(
        lambda: (
            file(b"manyrec", b"ok", records=[(b"LCOW.x%d" % i, b"v" * 16) for i in range(30_000)])
            + END
        )
    ),
    ok("the member arrives", is_file(b"/manyrec", b"ok")),
)
case(
    "pax-bad-record-length",
    "a PAX record whose length runs past the header",
    lazy(
        lambda: (
            header(b"PaxHeader", type=b"x", size=16)
            + padded(b"99999 path=abc\n\n")
            + file(b"after")
            + END
        )
    ),
    fails(IA, "PAX record"),
)

# -- extended attributes ---------------------------------------------------------------------

case(
    "xattr-value-over-block",
    "a 5000-byte user xattr (more than one ext4 block)",
    tar_of(file(b"fat", b"x", xattrs={b"user.big": b"v" * 5000})),
    fails(LE, "fat"),
)
case(
    "xattr-value-over-64k",
    "a 70,000-byte xattr value (more than XATTR_SIZE_MAX)",
    tar_of(file(b"fatter", b"x", xattrs={b"user.huge": b"v" * 70_000})),
    fails(LE, "fatter", "max_xattr_value_len"),
)
case(
    "xattr-name-over-255",
    "an xattr name of 305 bytes (ext4 stores at most 255)",
    tar_of(file(b"longattr", b"x", xattrs={b"user." + b"n" * 300: b"1"})),
    fails(LE, "longattr", "max_xattr_name_len"),
)
case(
    "xattr-many-small",
    "300 xattrs of 20 bytes on one file (more than the inode and a block hold)",
    tar_of(file(b"many", b"x", xattrs={b"user.a%03d" % i: b"v" * 20 for i in range(300)})),
    fails(LE, "many"),
)
case(
    "xattr-unknown-namespace",
    "an xattr in a namespace ext4 has no prefix for (foo.bar), beside a user one",
    tar_of(file(b"odd", b"x", xattrs={b"foo.bar": b"1", b"user.ok": b"2"})),
    ok(
        "unknown namespace skipped",
        has_xattr(b"/odd", b"user.ok", b"2"),
        has_xattr(b"/odd", b"foo.bar", None),
    ),
)
case(
    "xattr-malformed-acl",
    "a system.posix_acl_access value that is not an ACL",
    tar_of(file(b"badacl", b"x", xattrs={b"system.posix_acl_access": b"\x02\x00\x00\x00zz"})),
    fails(IA, "badacl", "ACL"),
)
case(
    "xattr-capability",
    "a file carrying security.capability (file capabilities are layer content)",
    tar_of(
        file(
            b"ping",
            b"x",
            mode=0o755,
            xattrs={b"security.capability": b"\x01\x00\x00\x02" + bytes(16)},
        )
    ),
    ok(
        "capability kept",
        has_xattr(b"/ping", b"security.capability", b"\x01\x00\x00\x02" + bytes(16)),
    ),
)
