"""Hostile cases about where entries land: names that try to leave the layer, symbolic
and hard links, and a name that changes type."""

from __future__ import annotations

from typing import BinaryIO

from lcow.convert.options import DEFAULT_MAX_DEPTH
from lcow.errors import InvalidArgument, LimitExceeded, NotFound
from tests.harness.hostile.case import HostileCase, lazy, registry, tar_of
from tests.harness.hostile.expect import fails, is_dir, is_file, is_symlink, ok, only, same_inode
from tests.harness.hostile.tarbuild import END, directory, file, gnu_long, hardlink, symlink

__all__ = ["CASES"]

CASES: list[HostileCase] = []
case = registry(CASES)
IA, LE, NF = InvalidArgument, LimitExceeded, NotFound


# -- names that try to leave the layer ------------------------------------------------------

case(
    "dotdot-leading",
    "a member named ../escape",
    tar_of(file(b"ok", b"x"), file(b"../escape", b"evil")),
    fails(IA, "../escape"),
)
case(
    "dotdot-climb-to-canary",
    "members ../canary/pwned, ../../canary/pwned ... eight levels up",
    tar_of(*(file(b"../" * n + b"canary/pwned", b"evil") for n in range(1, 9))),
    fails(IA, "canary/pwned"),
)
case(
    "dotdot-inside",
    "a/b/../../../etc/passwd: climbs out through a path that starts inside",
    tar_of(directory(b"a/b/"), file(b"a/b/../../../etc/passwd", b"root::0:0")),
    fails(IA, "etc/passwd"),
)
case(
    "dotdot-pax-path",
    "an innocent ustar name overridden by a PAX path ../../escape",
    tar_of(file(b"innocent", b"x", records=[(b"path", b"../../escape")])),
    fails(IA, "../../escape"),
)
case(
    "dotdot-gnu-longname",
    "a GNU long name (L record) of forty ../ then escape",
    tar_of(gnu_long(b"../" * 40 + b"escape"), file(b"short", b"x")),
    fails(IA, "escape"),
)
case(
    "dotdot-ustar-prefix",
    "the ustar prefix field ../.. joined to the name escape",
    tar_of(file(b"escape", b"x", prefix=b"../..")),
    fails(IA, "../../escape"),
)
case(
    "absolute-name",
    "/etc/abs-file: absolute names are relative to the layer root, as in moby",
    tar_of(file(b"/etc/abs-file", b"inside")),
    ok("/etc/abs-file inside the layer", is_dir(b"/etc"), is_file(b"/etc/abs-file", b"inside")),
)
case(
    "absolute-dotdot",
    "/../escape: an absolute name that climbs",
    tar_of(file(b"/../escape", b"x")),
    fails(IA, "/../escape"),
)
case(
    "dot-segments",
    "./a/./b/.//c: dots and doubled slashes collapse",
    tar_of(file(b"./a/./b/.//c", b"c")),
    ok("/a/b/c is a file", is_file(b"/a/b/c", b"c"), only(b"/", [b"a"])),
)
case(
    "nul-in-pax-path",
    "a PAX path with a NUL byte inside (a\\0b)",
    tar_of(file(b"placeholder", b"x", records=[(b"path", b"a\x00b")])),
    fails(IA, "NUL"),
)
case(
    "backslash-name",
    "..\\..\\evil: backslashes are ordinary name bytes without -convert-slash",
    tar_of(file(b"..\\..\\evil", b"x")),
    ok("one file named ..\\..\\evil at the root", is_file(b"/..\\..\\evil", b"x")),
)
case(
    "newline-names",
    "names with newlines and carriage returns (evil\\nname, dir\\r/x)",
    tar_of(file(b"evil\nname", b"1"), file(b"dir\r/x", b"2")),
    ok(
        "names kept byte for byte",
        is_file(b"/evil\nname", b"1"),
        is_file(b"/dir\r/x", b"2"),
    ),
)
case(
    "invalid-utf8-names",
    "names that are not UTF-8 (\\xff\\xfe, \\xc3\\x28/x, a lone surrogate encoding)",
    tar_of(file(b"\xff\xfe", b"1"), file(b"\xc3\x28/x", b"2"), file(b"\xed\xa0\x80", b"3")),
    ok(
        "names kept byte for byte",
        is_file(b"/\xff\xfe", b"1"),
        is_file(b"/\xc3\x28/x", b"2"),
        is_file(b"/\xed\xa0\x80", b"3"),
    ),
)
case(
    "control-char-names",
    "names with terminal escapes and a bell",
    tar_of(file(b"\x1b[31mred\x07", b"r"), file(b"tab\there", b"t")),
    ok("names kept", is_file(b"/\x1b[31mred\x07", b"r"), is_file(b"/tab\there", b"t")),
)
case(
    "name-component-256",
    "a name component of 256 bytes (ext4 allows 255)",
    tar_of(file(b"d/" + b"n" * 256, b"x")),
    fails(LE, "n" * 256, "max_name_len"),
)
case(
    "path-over-4096",
    "a path of twenty 250-byte components (5020 bytes > PATH_MAX)",
    tar_of(file(b"/".join([b"p" * 250] * 20), b"x")),
    fails(LE, "max_path_len"),
)
case(
    "deep-10k-one-entry",
    "one file 10,000 directories deep (d/d/.../d/f, a 20 KB PAX path)",
    tar_of(file(b"d/" * 10_000 + b"f", b"deep")),
    fails(LE, "max_depth"),
)


def _deep_every_level(out: BinaryIO) -> None:
    path = b""
    for _ in range(10_000):
        path += b"d/"
        out.write(directory(path))
    out.write(END)


case(
    "deep-10k-every-level",
    "10,000 directory entries, each one level deeper than the last (100 MB of PAX paths)",
    _deep_every_level,
    fails(LE, "max_depth"),
    gzip=True,
)
case(
    "deep-at-limit",
    f"a file exactly {DEFAULT_MAX_DEPTH} levels deep (the default max_depth)",
    tar_of(file(b"d/" * (DEFAULT_MAX_DEPTH - 1) + b"f", b"deep")),
    ok(
        f"/d/.../f at depth {DEFAULT_MAX_DEPTH}",
        is_file(b"/" + b"d/" * (DEFAULT_MAX_DEPTH - 1) + b"f", b"deep"),
    ),
)
case(
    "root-as-file",
    "a regular file named . (the root)",
    tar_of(file(b".", b"x")),
    fails(IA, "root"),
)
case(
    "empty-name",
    "a regular file with an empty name",
    tar_of(file(b"", b"x")),
    fails(IA, "root"),
)

# -- symlinks --------------------------------------------------------------------------------

case(
    "symlink-abs-write-through",
    "etc -> /etc, then a file etc/passwd written through the link",
    tar_of(symlink(b"etc", b"/etc"), file(b"etc/passwd", b"root::0:0")),
    fails(IA, "etc/passwd", "not a directory"),
)
case(
    "symlink-rel-write-through",
    "up -> ../../../../.., then up/canary/pwned",
    tar_of(symlink(b"up", b"../../../../.."), file(b"up/canary/pwned", b"evil")),
    fails(IA, "up/canary/pwned"),
)
case(
    "symlink-chain-write-through",
    "a -> b -> c -> /, then a/tmp/x through the chain",
    tar_of(symlink(b"a", b"b"), symlink(b"b", b"c"), symlink(b"c", b"/"), file(b"a/tmp/x")),
    fails(IA, "a/tmp/x"),
)
case(
    "symlink-replaces-dir-then-write",
    "dir d, then d -> /etc replacing it, then d/shadow",
    tar_of(directory(b"d/"), symlink(b"d", b"/etc"), file(b"d/shadow", b"x")),
    fails(IA, "d/shadow"),
)
case(
    "symlinks-pointing-outside",
    "symlinks to /etc/passwd, ../../../../etc/shadow and ../../canary, stored only",
    tar_of(
        symlink(b"abs", b"/etc/passwd"),
        symlink(b"rel", b"../../../../etc/shadow"),
        symlink(b"sub/canary", b"../../canary"),
    ),
    ok(
        "stored verbatim, never followed",
        is_symlink(b"/abs", b"/etc/passwd"),
        is_symlink(b"/rel", b"../../../../etc/shadow"),
        is_symlink(b"/sub/canary", b"../../canary"),
    ),
)
case(
    "symlink-loops",
    "a -> b, b -> a, self -> self",
    tar_of(symlink(b"a", b"b"), symlink(b"b", b"a"), symlink(b"self", b"self")),
    ok("loops stored", is_symlink(b"/a", b"b"), is_symlink(b"/self", b"self")),
)
case(
    "symlink-target-4096",
    "a symlink target of 4096 bytes (PATH_MAX with its NUL)",
    tar_of(symlink(b"long", b"t" * 4096)),
    fails(IA, "long", "4095"),
)
case(
    "symlink-empty-target",
    "a symlink with an empty target",
    tar_of(symlink(b"empty", b"")),
    fails(IA, "empty", "empty target"),
)
case(
    "hardlink-through-symlink",
    "lnk -> /etc, then a hard link h to lnk/passwd",
    tar_of(symlink(b"lnk", b"/etc"), hardlink(b"h", b"lnk/passwd")),
    fails(NF, "h", "lnk/passwd"),
)

# -- hard links ------------------------------------------------------------------------------

case(
    "hardlink-missing-target",
    "a hard link to a name the layer never had",
    tar_of(file(b"present"), hardlink(b"link", b"missing")),
    fails(NF, "link", "missing"),
)
case(
    "hardlink-dotdot-target",
    "a hard link to ../../etc/passwd",
    tar_of(hardlink(b"pw", b"../../etc/passwd")),
    fails(IA, "pw", ".."),
)
case(
    "hardlink-absolute-missing",
    "a hard link to /etc/shadow, absent from the layer",
    tar_of(hardlink(b"sh", b"/etc/shadow")),
    fails(NF, "sh", "/etc/shadow"),
)
case(
    "hardlink-absolute-inside",
    "etc/shadow, then x linked to /etc/shadow (absolute targets are layer-relative)",
    tar_of(file(b"etc/shadow", b"s"), hardlink(b"x", b"/etc/shadow")),
    ok("x and /etc/shadow share an inode", same_inode(b"/x", b"/etc/shadow", 2)),
)
case(
    "hardlink-to-directory",
    "a hard link to a directory",
    tar_of(directory(b"d/"), hardlink(b"dl", b"d")),
    fails(IA, "dl", "directory"),
)
case(
    "hardlink-to-itself",
    "h linked to h before h exists",
    tar_of(hardlink(b"h", b"h")),
    fails(NF, "h"),
)
case(
    "hardlink-to-symlink",
    "s -> /etc/passwd, then h hard-linked to the symlink itself",
    tar_of(symlink(b"s", b"/etc/passwd"), hardlink(b"h", b"s")),
    ok(
        "h is the same symlink inode",
        is_symlink(b"/h", b"/etc/passwd"),
        same_inode(b"/h", b"/s", 2),
    ),
)
case(
    "hardlink-before-target",
    "a hard link whose target comes later in the archive",
    tar_of(hardlink(b"h", b"later"), file(b"later", b"x")),
    fails(NF, "h", "later"),
)

# -- a name that changes type ----------------------------------------------------------------

case(
    "file-dir-file",
    "x as a file, then a directory with a child, then a file again",
    tar_of(file(b"x", b"one"), directory(b"x/"), file(b"x/y", b"child"), file(b"x", b"three")),
    ok("x is the last file", is_file(b"/x", b"three"), only(b"/", [b"x"])),
)
case(
    "dir-file-dir",
    "d as a directory with a child, then a file, then a directory again",
    tar_of(directory(b"d/"), file(b"d/a", b"a"), file(b"d", b"f"), directory(b"d/", mode=0o700)),
    ok("d is an empty 0700 directory", is_dir(b"/d", mode=0o700), only(b"/d", [])),
)
case(
    "file-then-child",
    "f as a file, then f/child as if f were a directory",
    tar_of(file(b"f", b"x"), file(b"f/child", b"y")),
    fails(IA, "f/child", "not a directory"),
)
case(
    "duplicate-1000",
    "one name written 1000 times with different contents",
    lazy(lambda: b"".join(file(b"dup", b"%d" % i * 100) for i in range(1000)) + END),
    ok("the last copy wins", is_file(b"/dup", b"999" * 100), only(b"/", [b"dup"])),
)
case(
    "root-entry-metadata",
    "./ with mode 0777 and owner 12345: the root takes it",
    tar_of(directory(b"./", mode=0o777, uid=12345, gid=54321), file(b"a")),
    ok("root is 0777, owned by 12345", is_dir(b"/", mode=0o777, uid=12345)),
)
case(
    "lost-found-replaced",
    "lost+found replaced by a regular file",
    tar_of(file(b"lost+found", b"not a directory")),
    ok("lost+found is the file", is_file(b"/lost+found", b"not a directory")),
)
