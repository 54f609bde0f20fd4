"""Where ``extract_archive`` (Docker's ``Untar`` into a view) legitimately differs from the
converter's sinks: each case name with what extract must do instead, and why."""

from __future__ import annotations

from lcow.errors import InvalidArgument, LimitExceeded, NotFound
from tests.harness.hostile.expect import Expect, fails, is_file, ok

__all__ = ["EXTRACT_DIFFERENCES"]

IA, LE, NF = InvalidArgument, LimitExceeded, NotFound

# -- where extract_archive legitimately differs ------------------------------------------------
#
# extract_archive is Docker's Untar (docker cp, the plugin's view): a tree written file by file
# in a chroot at the destination, not a layer image. So it applies no converter limits (names,
# paths, depth, image size, xattr sizes: the kernel's own limits answer, as they answer Docker),
# keeps AUFS whiteouts as the files they are (no WhiteoutFormat given), lets a symlink inside
# the tree lead a later entry elsewhere inside it (the chroot keeps it in), and reads headers as
# Go's reader does where that differs from lcow's converter. Each difference, and why:

_FNTL = "file name too long"
_NO_CONVERTER_LIMITS = "no converter limits in extract_archive: the kernel refuses the name"
_NO_SIZE_LIMIT = "no image size limit: the member's data runs past the end of the input"
_AUFS_KEPT = "whiteouts are not converted by extract (no WhiteoutFormat): a plain file"
_CHROOT = "a symlink is followed inside the destination, as in Docker's chroot: stays inside"
EXTRACT_DIFFERENCES: dict[str, tuple[Expect, str]] = {
    "absolute-dotdot": (
        ok("lands at /escape", is_file(b"/escape")),
        "Docker cleans /../escape to /escape, inside the destination (the converter refuses)",
    ),
    "name-component-256": (fails(LE, "n" * 256, _FNTL), _NO_CONVERTER_LIMITS),
    "path-over-4096": (fails(LE, _FNTL), _NO_CONVERTER_LIMITS),
    "deep-10k-one-entry": (fails(LE, "d/d/d/d", _FNTL), _NO_CONVERTER_LIMITS),
    "deep-10k-every-level": (fails(LE, "d/d/d/d", _FNTL), _NO_CONVERTER_LIMITS),
    "symlink-abs-write-through": (
        fails(IA, "etc/passwd", "symbolic links"),
        "etc -> /etc is etc itself in the chroot: the kernel reports a symlink loop",
    ),
    "symlink-rel-write-through": (
        ok("written inside the view", is_file(b"/canary/pwned", b"evil")),
        _CHROOT,
    ),
    "symlink-chain-write-through": (ok("written inside the view", is_file(b"/tmp/x")), _CHROOT),
    "symlink-replaces-dir-then-write": (
        fails(NF, "d/shadow"),
        "d -> /etc leads to the view's /etc, which does not exist (Docker: ENOENT too)",
    ),
    "symlink-target-4096": (
        fails(LE, "long", _FNTL),
        "the kernel refuses a 4096-byte symlink target (ENAMETOOLONG), as it does for Docker",
    ),
    "symlink-empty-target": (
        fails(NF, "empty"),
        "the kernel refuses an empty symlink target (ENOENT), as it does for Docker",
    ),
    "declared-1tib-truncated": (fails(IA, "huge", "unexpected end"), _NO_SIZE_LIMIT),
    "size-base256-2p80": (fails(IA, "enormous", "unexpected end"), _NO_SIZE_LIMIT),
    "pax-size-huge": (fails(IA, "paxhuge", "unexpected end"), _NO_SIZE_LIMIT),
    "size-field-garbage": (
        fails(IA, "not a tar archive"),
        "tarfile cannot parse the only header: nothing precedes it to name (Go: ErrHeader)",
    ),
    "sparse-count-bomb": (
        fails(IA, "malformed header data"),
        "tarfile reads the announced map line by line and fails when the data ends: it never "
        "allocates for the count, so no limit is passed (Go: ErrHeader)",
    ),
    "xattr-value-over-64k": (
        fails(LE, "fatter", "user.huge"),
        "no converter xattr limits: the kernel refuses the value (E2BIG)",
    ),
    "xattr-name-over-255": (
        fails(LE, "longattr", "user.nnn"),
        "no converter xattr limits: the kernel refuses the name (ERANGE)",
    ),
    "xattr-malformed-acl": (
        fails(IA, "badacl", "posix_acl_access"),
        "the kernel judges the ACL (EINVAL); the converter's message says 'ACL' itself",
    ),
    "device-major-too-big": (
        fails(IA, "bigdev", "invalid argument"),
        "mknod refuses the device number (EINVAL); the converter checks it itself",
    ),
    "dir-and-symlink-with-data": (
        fails(IA, "invalid tar header", "after entry dd"),
        "Go's reader and tarfile read no data for a directory: its data block is read as the "
        "next header (Docker fails too); the converter skips it",
    ),
    "unknown-type-X": (
        fails(IA, "malformed PAX record", "after entry ok"),
        "type X is a Solaris extended header to tarfile (and GNU tar), not an entry",
    ),
    "whiteout-dotdot": (ok("kept as a file", is_file(b"/a/.wh...")), _AUFS_KEPT),
    "whiteout-dot": (ok("kept as a file", is_file(b"/a/.wh..")), _AUFS_KEPT),
    "whiteout-empty": (ok("kept as a file", is_file(b"/a/.wh.")), _AUFS_KEPT),
    "whiteout-ok": (
        ok("kept as files", is_file(b"/a/.wh.gone"), is_file(b"/a/.wh..wh..opq")),
        _AUFS_KEPT,
    ),
}
