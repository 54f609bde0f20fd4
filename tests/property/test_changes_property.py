"""Hypothesis: Changes and DiffSize over layer images against real directory trees (issue 3).

A random lower tree and random upper changes — files added, rewritten, re-owned, deleted,
directories added, deleted, re-moded, made opaque, files turned into directories and back,
``security.capability`` set or changed — become two layer tars (the upper one in AUFS form,
copied-up parents included as overlay2 would leave them) and two images. Our results:

* :func:`overlay_changes` of the upper layer over the lower view, and :func:`own_diff_size`;
* :func:`tree_changes` of the merged upper view against the lower view, and
  :func:`change_size` over it.

The reference never reads an image. A tiny applier in this file extracts tars into real
directories: the lower view (lower tar), the new view (lower tar, then the upper tar with AUFS
whiteout semantics) and the upper layer's own content the way overlayfs keeps an upper
directory (whiteouts as 0/0 character devices, ``trusted.overlay.opaque``). Walking those with
``lstat`` and SPEC's rules gives the expected lists: §5.6 over (upper content, lower view),
§5.7 over (lower view, new view), §5.8 for the sizes.

Directory sizes: every generated directory fits one block, so its size is one block in both
images (asserted), while the host file system may report anything (tmpfs does); the §5.6
reference therefore treats directory sizes as equal. Needs root (chown, mknod, trusted and
security xattrs).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lcow import ConvertOptions, tar2ext4
from lcow.formats.ext4.reader import Ext4Reader
from lcow.layerdiff.changes import (
    Change,
    ChangeKind,
    LayerContent,
    MergedView,
    change_size,
    overlay_changes,
    own_diff_size,
    tree_changes,
)
from tests.helpers import TarEntry, requires, write_tar

_NS = 1_000_000_000
_SCALE = int(os.environ.get("LCOW_PROPERTY_EXAMPLES", "0"))
_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
OPAQUE = "trusted.overlay.opaque"
CAPABILITY = "security.capability"
# Valid VFS capability blobs (revision 2): the kernel refuses malformed ones.
CAPS = [
    bytes.fromhex("0100000200040000000000000000000000000000"),  # cap_net_bind_service+ep
    bytes.fromhex("0000000200200000000000000000000000000000"),  # cap_sys_admin+p
    bytes.fromhex("0100000201000000000000000000000000000000"),  # cap_chown+ep
]
IDS = [0, 1, 1000, 65536]
MODES = [0o755, 0o700, 0o644, 0o600, 0o4755, 0o2750, 0o1777, 0o444]
BASE_TIME = 1_600_000_000 * _NS


# --------------------------------------------------------------------------------------------
# trees as specs


@dataclass
class Spec:
    """One path of a tree: what the tar entry says."""

    kind: str  # "dir", "file", "symlink", "hardlink" (``target``: the linked path)
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = BASE_TIME
    data: bytes = b""
    target: bytes = b""
    cap: bytes | None = None

    def entry(self, path: bytes) -> TarEntry:
        linked = self.kind == "hardlink"
        xattrs = {CAPABILITY: self.cap} if self.cap is not None and not linked else {}
        return TarEntry(
            path,
            kind=self.kind,
            mode=0o777 if self.kind == "symlink" else self.mode,  # as the writer stores them
            uid=self.uid,
            gid=self.gid,
            mtime_ns=self.mtime_ns,
            data=b"" if linked else self.data,
            target=self.target,
            xattrs=xattrs,
        )


def _whole(ns: int) -> int:
    return ns // _NS * _NS


names = st.sampled_from([b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h", b"sub", b"x.y", b"z z"])
times = st.integers(BASE_TIME, BASE_TIME + 10**6 * _NS)


@st.composite
def specs(draw: st.DrawFn, kind: str) -> Spec:
    spec = Spec(
        kind=kind,
        mode=draw(st.sampled_from(MODES)),
        uid=draw(st.sampled_from(IDS)),
        gid=draw(st.sampled_from(IDS)),
        mtime_ns=draw(times if kind == "dir" else st.one_of(times, times.map(_whole))),
    )
    if kind == "file":
        spec.data = draw(st.binary(max_size=300))
        spec.cap = draw(st.one_of(st.none(), st.none(), st.sampled_from(CAPS)))
    elif kind == "symlink":
        spec.target = draw(st.sampled_from([b"a", b"../b", b"/abs/target", b"t" * 70]))
    return spec


@st.composite
def trees(draw: st.DrawFn, depth: int = 3) -> dict[bytes, Spec]:
    """path (no leading slash) -> spec, parents before children."""
    out: dict[bytes, Spec] = {}

    def fill(prefix: bytes, level: int) -> None:
        for name in draw(st.lists(names, min_size=2 if not prefix else 0, max_size=4, unique=True)):
            path = prefix + name
            kind = draw(
                st.sampled_from(["file", "file", "symlink"] + (["dir"] * 2 if level else []))
            )
            out[path] = draw(specs(kind))
            if kind == "dir":
                fill(path + b"/", level - 1)

    fill(b"", depth)
    return out


def _parents(path: bytes) -> Iterator[bytes]:
    parts = path.split(b"/")
    for i in range(1, len(parts)):
        yield b"/".join(parts[:i])


@dataclass
class Upper:
    """The upper layer: entries in AUFS form, in tar order (parents first)."""

    specs: dict[bytes, Spec] = field(default_factory=dict)  # copied up or new entries
    whiteouts: dict[bytes, Spec] = field(default_factory=dict)  # path -> marker metadata
    opaque: set[bytes] = field(default_factory=set)

    def entries(self) -> list[TarEntry]:
        items: list[tuple[list[bytes], TarEntry]] = []
        for path, spec in self.specs.items():
            items.append((path.split(b"/"), spec.entry(path)))
            if path in self.opaque:
                marker = path + b"/.wh..wh..opq"
                items.append(([*path.split(b"/"), b""], TarEntry(marker)))
        for path, spec in self.whiteouts.items():
            parent, _, name = path.rpartition(b"/")
            marker = (parent + b"/" if parent else b"") + b".wh." + name
            items.append(
                (
                    path.split(b"/"),
                    Spec("file", 0o600, spec.uid, spec.gid, spec.mtime_ns).entry(marker),
                )
            )
        items.sort(key=lambda item: item[0])
        return [entry for _, entry in items]


@st.composite
def changes(draw: st.DrawFn, lower: dict[bytes, Spec]) -> Upper:  # noqa: PLR0912, PLR0915 - one strategy for every kind of upper-layer change; its closures share the subtree bookkeeping
    """Upper-layer changes over ``lower``.

    Operations that replace a subtree (add, modify, delete, opaque, retype) never touch one
    another's subtrees; metadata changes of a directory (re-mode, re-time) may sit above them.
    """
    up = Upper()
    subtrees: list[bytes] = []
    retouched: set[bytes] = set()

    def inside(path: bytes) -> bool:
        return any(path == c or path.startswith(c + b"/") for c in subtrees)

    def free(path: bytes) -> bool:
        """Nothing at or below ``path`` is in the upper layer yet, nor is ``path`` inside a
        replaced subtree."""
        touched = [*up.specs, *up.whiteouts]
        return not inside(path) and not any(t == path or t.startswith(path + b"/") for t in touched)

    def copy_up(path: bytes) -> None:
        for parent in _parents(path):
            if parent in lower and parent not in up.specs:
                up.specs[parent] = Spec(**vars(lower[parent]))

    existing = sorted(lower)
    dirs = [b""] + [p for p in existing if lower[p].kind == "dir"]
    for _ in range(draw(st.integers(1, 6))):
        if not existing or draw(st.integers(0, 3)) == 0:
            parent = draw(st.sampled_from(dirs))
            path = (parent + b"/" if parent else b"") + b"new-" + draw(names)
            if path in lower or not free(path):
                continue
            event("op: add")
            subtrees.append(path)
            copy_up(path)
            kind = draw(st.sampled_from(["file", "dir", "symlink"]))
            up.specs[path] = draw(specs(kind))
            if kind == "dir" and draw(st.booleans()):
                up.specs[path + b"/inner"] = draw(specs("file"))
            if kind == "file" and draw(st.booleans()):  # a second name for the same inode
                link = Spec(**vars(up.specs[path]))
                link.kind, link.target = "hardlink", path
                up.specs[path + b"-link"] = link
                subtrees.append(path + b"-link")
            continue
        path = draw(st.sampled_from(existing))
        old = lower[path]
        if old.kind == "dir":
            op = draw(st.sampled_from(["delete", "opaque", "remode", "retime", "retype"]))
        elif old.kind == "file":
            op = draw(st.sampled_from(["delete", "modify", "recap", "resize", "retype"]))
        else:
            op = draw(st.sampled_from(["delete", "modify", "retype"]))
        if op in ("remode", "retime"):
            if inside(path) or path in retouched:
                continue
            event(f"op: {op}")
            retouched.add(path)
            copy_up(path)
            new = Spec(**vars(up.specs.get(path, old)))
            if op == "remode":
                new.mode = draw(st.sampled_from([m for m in MODES if m != old.mode]))
            elif draw(st.booleans()):
                new.mtime_ns = old.mtime_ns // _NS * _NS  # same second, no nanoseconds
            else:
                new.mtime_ns = old.mtime_ns + draw(st.integers(1, 5)) * _NS
            up.specs[path] = new
            continue
        if not free(path):
            continue
        event(f"op: {op}")
        subtrees.append(path)
        copy_up(path)
        if op == "modify":
            new = draw(specs(old.kind))
            new.mtime_ns = old.mtime_ns + draw(st.integers(1, 10**9))  # always a real change
            up.specs[path] = new
        elif op == "resize":  # only the size changes
            new = Spec(**vars(old))
            new.data = old.data + b"+" * draw(st.integers(1, 50))
            up.specs[path] = new
        elif op == "recap":  # only security.capability changes
            new = Spec(**vars(old))
            new.cap = draw(st.sampled_from([c for c in [None, *CAPS] if c != old.cap]))
            up.specs[path] = new
        elif op == "delete":
            up.whiteouts[path] = draw(specs("file"))
        elif op == "opaque":
            up.specs[path] = Spec(**vars(old))
            up.opaque.add(path)
            for name in draw(st.lists(names, max_size=2, unique=True)):
                up.specs[path + b"/" + name] = draw(specs("file"))
        elif old.kind == "dir":  # retype
            up.specs[path] = draw(specs("file"))
        else:
            up.specs[path] = draw(specs("dir"))
            up.specs[path + b"/inside"] = draw(specs("file"))
    return up


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[bytes, Spec], Upper]:
    lower = draw(trees())
    return lower, draw(changes(lower))


# --------------------------------------------------------------------------------------------
# the reference applier: tars into real directories


@dataclass
class Applier:
    """Extracts layer entries into ``root``; times are set at the end (deepest first)."""

    root: bytes
    times: dict[bytes, int] = field(default_factory=dict)

    def full(self, path: bytes) -> bytes:
        return self.root + b"/" + path if path else self.root

    def remove(self, path: bytes) -> None:
        full = self.full(path)
        if os.path.isdir(full) and not os.path.islink(full):
            for name in os.listdir(full):
                self.remove(path + b"/" + name)
            os.rmdir(full)
        elif os.path.lexists(full):
            os.unlink(full)
        self.times = {
            p: t for p, t in self.times.items() if p != path and not p.startswith(path + b"/")
        }

    def put(self, path: bytes, spec: Spec) -> None:
        full = self.full(path)
        exists = os.path.lexists(full)
        if exists and not (spec.kind == "dir" and stat.S_ISDIR(os.lstat(full).st_mode)):
            self.remove(path)
            exists = False
        if spec.kind == "dir":
            if not exists:
                os.mkdir(full)  # an existing directory is merged into, as moby's unpacker does
        elif spec.kind == "file":
            with open(full, "wb") as f:
                f.write(spec.data)
        elif spec.kind == "hardlink":  # same metadata as its target: nothing else to set
            os.link(self.full(spec.target), full, follow_symlinks=False)
            return
        else:
            os.symlink(spec.target, full)
        os.chown(full, spec.uid, spec.gid, follow_symlinks=False)
        if spec.kind != "symlink":
            os.chmod(full, spec.mode)
        if spec.cap is not None:
            os.setxattr(full, CAPABILITY, spec.cap, follow_symlinks=False)
        self.times[path] = spec.mtime_ns

    def whiteout_device(self, path: bytes, spec: Spec) -> None:
        """overlayfs's form of a whiteout (as tar2ext4 stores it: mode 0000, the marker's
        owner and mtime)."""
        full = self.full(path)
        os.mknod(full, stat.S_IFCHR, os.makedev(0, 0))
        os.chown(full, spec.uid, spec.gid)
        self.times[path] = spec.mtime_ns

    def finish(self) -> None:
        for path in sorted(self.times, key=lambda p: -p.count(b"/")):
            t = self.times[path]
            os.utime(self.full(path), ns=(t, t), follow_symlinks=False)


def extract_lower(root: bytes, lower: dict[bytes, Spec]) -> Applier:
    a = Applier(root)
    for path, spec in lower.items():
        a.put(path, spec)
    return a


def extract_new(root: bytes, lower: dict[bytes, Spec], up: Upper) -> None:
    """Lower, then the upper layer with AUFS semantics (``.wh.X`` deletes ``X``; an opaque
    marker, which comes right after its directory, empties it)."""
    a = extract_lower(root, lower)
    for path in sorted(set(up.specs) | set(up.whiteouts), key=lambda p: p.split(b"/")):
        if path in up.whiteouts:
            a.remove(path)
            continue
        a.put(path, up.specs[path])
        if path in up.opaque:
            for name in os.listdir(a.full(path)):
                a.remove(path + b"/" + name)
    a.finish()


def extract_upper_content(root: bytes, up: Upper) -> None:
    """The upper layer's own content as overlayfs keeps an upper directory."""
    a = Applier(root)
    for path in sorted(set(up.specs) | set(up.whiteouts), key=lambda p: p.split(b"/")):
        if path in up.whiteouts:
            a.whiteout_device(path, up.whiteouts[path])
            continue
        a.put(path, up.specs[path])
        if path in up.opaque:
            os.setxattr(a.full(path), OPAQUE, b"y")
    a.finish()


# --------------------------------------------------------------------------------------------
# the reference rules over real directories


def walk(root: bytes) -> Iterator[tuple[bytes, os.stat_result]]:
    """``(/path, lstat)`` depth first, names sorted bytewise, root excluded."""

    def visit(rel: bytes) -> Iterator[tuple[bytes, os.stat_result]]:
        for name in sorted(os.listdir(root + rel if rel else root)):
            path = rel + b"/" + name
            st_ = os.lstat(root + path)
            yield path, st_
            if stat.S_ISDIR(st_.st_mode):
                yield from visit(path)

    yield from visit(b"")


def lookup(root: bytes, path: bytes) -> os.stat_result | None:
    """lstat of ``path`` below ``root`` without following symlinks on the way."""
    cur = root
    st_ = os.lstat(root)
    for part in path.strip(b"/").split(b"/"):
        if not stat.S_ISDIR(st_.st_mode):
            return None
        cur = cur + b"/" + part
        try:
            st_ = os.lstat(cur)
        except FileNotFoundError:
            return None
    return st_


def _xattr(full: bytes, name: str) -> bytes | None:
    try:
        return os.getxattr(full, name, follow_symlinks=False)
    except OSError:
        return None


def same_time(a: int, b: int) -> bool:
    if a == b:
        return True
    (sa, na), (sb, nb) = divmod(a, _NS), divmod(b, _NS)
    return sa == sb and (na == 0 or nb == 0)


def reference_overlay(upper: bytes, lower: bytes) -> list[Change]:
    """SPEC §5.6 over an upper directory and the lower view (directory sizes equal, see the
    module docstring)."""
    records: list[Change] = []
    remembered: set[bytes] = set()
    for path, st_ in walk(upper):
        is_dir = stat.S_ISDIR(st_.st_mode)
        opaque = is_dir and _xattr(upper + path, OPAQUE) == b"y"
        if (stat.S_ISCHR(st_.st_mode) and st_.st_rdev == 0) or opaque:
            kind = ChangeKind.DELETE
        else:
            below = lookup(lower, path)
            if below is None:
                kind = ChangeKind.ADD
            elif (
                is_dir
                and stat.S_ISDIR(below.st_mode)
                and below.st_mode == st_.st_mode
                and same_time(below.st_mtime_ns, st_.st_mtime_ns)
            ):
                continue
            else:
                kind = ChangeKind.MODIFY
        parent = path.rpartition(b"/")[0]
        if kind != ChangeKind.MODIFY and parent and parent not in remembered:
            records.append(Change(os.fsdecode(parent), ChangeKind.MODIFY))
            remembered.add(parent)
        records.append(Change(os.fsdecode(path), kind))
        if is_dir:
            remembered.add(path)
    return records


def reference_tree(old: bytes, new: bytes) -> set[Change]:
    """SPEC §5.7 over two views."""
    old_st = dict(walk(old))
    new_st = dict(walk(new))
    kinds: dict[bytes, ChangeKind] = {}
    for path, n in new_st.items():
        o = old_st.get(path)
        if o is None:
            kinds[path] = ChangeKind.ADD
            continue
        differs = (n.st_mode, n.st_uid, n.st_gid, n.st_rdev) != (
            o.st_mode,
            o.st_uid,
            o.st_gid,
            o.st_rdev,
        )
        differs = differs or _xattr(new + path, CAPABILITY) != _xattr(old + path, CAPABILITY)
        if not stat.S_ISDIR(n.st_mode):
            differs = differs or n.st_mtime_ns != o.st_mtime_ns or n.st_size != o.st_size
        if differs:
            kinds[path] = ChangeKind.MODIFY
    for path in old_st:
        if path in new_st:
            continue
        if any(b"/" + p not in new_st for p in _parents(path.lstrip(b"/"))):
            continue  # inside a deleted directory: not descended
        kinds[path] = ChangeKind.DELETE
    for path in list(kinds):
        for parent in _parents(path.lstrip(b"/")):
            kinds.setdefault(b"/" + parent, ChangeKind.MODIFY)
    return {Change(os.fsdecode(p), k) for p, k in kinds.items()}


def reference_change_size(new: bytes, changes: set[Change]) -> int:
    seen: set[int] = set()
    total = 0
    for c in changes:
        if c.kind == ChangeKind.DELETE:
            continue
        st_ = os.lstat(new + os.fsencode(c.path))
        if stat.S_ISDIR(st_.st_mode) or st_.st_ino in seen:
            continue
        seen.add(st_.st_ino)
        total += st_.st_size
    return total


def reference_own_size(upper: bytes) -> int:
    seen: set[int] = set()
    total = 0
    for _path, st_ in walk(upper):
        if stat.S_ISDIR(st_.st_mode) or st_.st_ino in seen:
            continue
        seen.add(st_.st_ino)
        total += st_.st_size
    return total


# --------------------------------------------------------------------------------------------
# the property


def _image(work: Path, name: str, entries: list[TarEntry]) -> Ext4Reader:
    tar = write_tar(work / f"{name}.tar", entries)
    image = work / f"{name}.vhd"
    tar2ext4(tar, image, ConvertOptions(convert_whiteouts=True, vhd_footer=True))
    reader = Ext4Reader.open(image)
    for e in reader.scan():
        if stat.S_ISDIR(e.mode):
            assert e.size == reader.block_size, "a generated directory outgrew one block"
    return reader


@requires("root", "xattrs")
@settings(max_examples=_SCALE or 100, **_COMMON)  # type: ignore[arg-type]
@given(scenario=scenarios())
def test_changes_and_sizes_match_real_trees(scenario: tuple[dict[bytes, Spec], Upper]) -> None:
    lower, up = scenario
    with tempfile.TemporaryDirectory(prefix="lcow-changes-") as tmp:
        work = Path(tmp)
        lower_reader = _image(work, "lower", [s.entry(p) for p, s in lower.items()])
        upper_reader = _image(work, "upper", up.entries())
        try:
            lower_content = LayerContent(lower_reader)
            upper_content = LayerContent(upper_reader)
            ours_overlay = overlay_changes(upper_content, MergedView.build([lower_content]))
            new_view = MergedView.build([upper_content, lower_content])
            ours_tree = tree_changes(new_view, MergedView.build([lower_content]))
            ours_own = own_diff_size(upper_content)
            ours_size = change_size(new_view, ours_tree)
        finally:
            lower_reader.close()
            upper_reader.close()

        root = os.fsencode(tmp)
        for name in (b"/L", b"/N", b"/U"):
            os.mkdir(root + name)
        extract_lower(root + b"/L", lower).finish()
        extract_new(root + b"/N", lower, up)
        extract_upper_content(root + b"/U", up)

        assert ours_overlay == reference_overlay(root + b"/U", root + b"/L")
        ref_tree = reference_tree(root + b"/L", root + b"/N")
        assert set(ours_tree) == ref_tree
        assert len(ours_tree) == len(ref_tree), "a path reported twice"
        assert sorted(ours_tree, key=lambda c: c.path) == ours_tree
        assert ours_own == reference_own_size(root + b"/U")
        assert ours_size == reference_change_size(root + b"/N", ref_tree)
