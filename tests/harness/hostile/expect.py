"""What a case expects: an error category whose message names the entry, or success with
properties of the finished layer (checks run through a :class:`~.probes.Probe`)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from lcow.errors import LcowError
from tests.harness.hostile.probes import Node, Probe

__all__ = [
    "Check",
    "CheckFailed",
    "Expect",
    "absent",
    "entry_count",
    "fails",
    "has_mode",
    "has_xattr",
    "is_device",
    "is_dir",
    "is_file",
    "is_symlink",
    "ok",
    "only",
    "owner_is",
    "same_inode",
    "size_is",
]


class CheckFailed(AssertionError):
    """A finished layer does not have the property its case promises."""


Check = Callable[[Probe], None]


def _need(probe: Probe, path: bytes) -> Node:
    node = probe.node(path)
    if node is None:
        raise CheckFailed(f"{path!r} is missing")
    return node


def is_file(path: bytes, data: bytes | None = None, *, mode: int | None = None) -> Check:
    """``path`` is a regular file (with these bytes and permission bits, when given)."""

    def check(probe: Probe) -> None:
        node = _need(probe, path)
        if not stat.S_ISREG(node.mode):
            raise CheckFailed(f"{path!r} is not a regular file (mode {node.mode:o})")
        if mode is not None and stat.S_IMODE(node.mode) != mode:
            raise CheckFailed(f"{path!r} has mode {stat.S_IMODE(node.mode):o}, not {mode:o}")
        if data is not None:
            got = probe.read(path, len(data) + 1)
            if got != data:
                raise CheckFailed(f"{path!r} holds {got[:40]!r}..., not {data[:40]!r}...")

    return check


def is_dir(path: bytes, *, mode: int | None = None, uid: int | None = None) -> Check:
    """``path`` is a directory (with this mode and owner, when given)."""

    def check(probe: Probe) -> None:
        node = _need(probe, path)
        if not stat.S_ISDIR(node.mode):
            raise CheckFailed(f"{path!r} is not a directory (mode {node.mode:o})")
        if mode is not None and stat.S_IMODE(node.mode) != mode:
            raise CheckFailed(f"{path!r} has mode {stat.S_IMODE(node.mode):o}, not {mode:o}")
        if uid is not None and node.uid != uid:
            raise CheckFailed(f"{path!r} is owned by {node.uid}, not {uid}")

    return check


def is_symlink(path: bytes, target: bytes) -> Check:
    """``path`` is a symlink to exactly ``target`` (never resolved)."""

    def check(probe: Probe) -> None:
        node = _need(probe, path)
        if not stat.S_ISLNK(node.mode) or node.target != target:
            raise CheckFailed(f"{path!r} is not a symlink to {target!r} ({node.target!r})")

    return check


def is_device(path: bytes, kind: int, major: int, minor: int) -> Check:
    """``path`` is a ``S_IFCHR``/``S_IFBLK`` device with these numbers."""

    def check(probe: Probe) -> None:
        node = _need(probe, path)
        if stat.S_IFMT(node.mode) != kind or node.rdev != os.makedev(major, minor):
            raise CheckFailed(
                f"{path!r}: mode {node.mode:o} rdev {os.major(node.rdev)}:{os.minor(node.rdev)}, "
                f"expected {kind:o} {major}:{minor}"
            )

    return check


def has_mode(path: bytes, mode: int) -> Check:
    """The permission and special bits of ``path`` are ``mode``."""

    def check(probe: Probe) -> None:
        node = _need(probe, path)
        if stat.S_IMODE(node.mode) != mode:
            raise CheckFailed(f"{path!r} has mode {stat.S_IMODE(node.mode):o}, not {mode:o}")

    return check


def absent(path: bytes) -> Check:
    """Nothing exists at ``path``."""

    def check(probe: Probe) -> None:
        if probe.node(path) is not None:
            raise CheckFailed(f"{path!r} exists")

    return check


def only(path: bytes, names: Iterable[bytes]) -> Check:
    """The directory ``path`` holds exactly ``names`` (``lost+found`` ignored at the root)."""
    wanted = sorted(names)

    def check(probe: Probe) -> None:
        got = [n for n in probe.names(path) if not (path == b"/" and n == b"lost+found")]
        if got != wanted:
            raise CheckFailed(f"{path!r} holds {got[:10]!r}, expected {wanted[:10]!r}")

    return check


def entry_count(path: bytes, count: int) -> Check:
    """The directory ``path`` holds ``count`` entries."""

    def check(probe: Probe) -> None:
        got = probe.count(path)
        if got != count:
            raise CheckFailed(f"{path!r} holds {got} entries, expected {count}")

    return check


def same_inode(a: bytes, b: bytes, nlink: int) -> Check:
    """``a`` and ``b`` are hard links of one inode with ``nlink`` names."""

    def check(probe: Probe) -> None:
        na, nb = _need(probe, a), _need(probe, b)
        if na.ino != nb.ino or na.nlink != nlink:
            raise CheckFailed(f"{a!r} and {b!r}: inodes {na.ino}/{nb.ino}, nlink {na.nlink}")

    return check


def size_is(path: bytes, size: int) -> Check:
    """``path`` has ``size`` bytes."""

    def check(probe: Probe) -> None:
        node = _need(probe, path)
        if node.size != size:
            raise CheckFailed(f"{path!r} has {node.size} bytes, not {size}")

    return check


def has_xattr(path: bytes, name: bytes, value: bytes | None) -> Check:
    """``path`` has the attribute ``name`` with ``value`` (``None``: it must not have it)."""

    def check(probe: Probe) -> None:
        got = _need(probe, path).xattrs.get(name)
        if got != value:
            raise CheckFailed(f"{path!r} xattr {name!r} is {got!r}, expected {value!r}")

    return check


def owner_is(path: bytes, uid: int, gid: int) -> Check:
    """``path`` is owned by ``uid:gid``."""

    def check(probe: Probe) -> None:
        node = _need(probe, path)
        if (node.uid, node.gid) != (uid, gid):
            raise CheckFailed(f"{path!r} is owned by {node.uid}:{node.gid}, not {uid}:{gid}")

    return check


@dataclass(frozen=True)
class Expect:
    """What every sink must do with a case.

    Attributes:
        error: the category raised (an import may wrap an ``InvalidArgument`` in an
            ``ImageError``, which is one); ``None`` for success.
        names: strings the error message must contain (the entry, the limit).
        checks: properties of the finished layer, for success.
        summary: one line for reports.
    """

    error: type[LcowError] | None
    names: tuple[str, ...] = ()
    checks: tuple[Check, ...] = ()
    summary: str = ""

    @property
    def outcome(self) -> str:
        """``ok`` or the error class name."""
        return "ok" if self.error is None else self.error.__name__

    def verify(self, probe: Probe) -> None:
        """Run every check (raises :class:`CheckFailed`)."""
        for check in self.checks:
            check(probe)


def ok(summary: str, *checks: Check) -> Expect:
    """Success with ``checks`` holding on the layer."""
    return Expect(None, (), checks, summary)


def fails(error: type[LcowError], *names: str, summary: str = "") -> Expect:
    """Failure with ``error``, the message naming each of ``names``."""
    return Expect(error, names, (), summary or f"{error.__name__} naming {', '.join(names)}")
