"""Changes and DiffSize over layer images — what the original driver left as stubs (SPEC §5.5-§5.8).

Two derivations:

* :func:`overlay_changes` (direct parent): walk the layer's own content; a 0/0 character device is
  a Delete, an opaque directory a Delete of the directory (its contents still follow), anything
  else an Add — or a Modify when the path exists in the merged view of the lower layers
  (directories existing below with equal size, mode and mtime are skipped). A parent directory
  gets a Modify before its first Add or Delete unless it was recorded already.
* :func:`tree_changes` (any other parent): compare two merged views entry by entry.

Records come out in walk order (depth first, names sorted bytewise), as overlay2 reports them.
"""

from __future__ import annotations

import contextlib
import gc
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from enum import IntEnum
from typing import NamedTuple

from lcow.formats.ext4.reader import Ext4Reader, ScanEntry

__all__ = [
    "Change",
    "ChangeKind",
    "LayerContent",
    "MergedView",
    "Meta",
    "change_size",
    "overlay_changes",
    "own_diff_size",
    "tree_changes",
]

OPAQUE_XATTR = b"trusted.overlay.opaque"
CAPABILITY_XATTR = b"security.capability"
_NS = 1_000_000_000


class ChangeKind(IntEnum):
    """Docker's change kinds (``archive.ChangeType``)."""

    MODIFY = 0
    ADD = 1
    DELETE = 2

    @property
    def letter(self) -> str:
        """``C``, ``A`` or ``D`` as ``docker diff`` prints them."""
        return "CAD"[self.value]


class Change(NamedTuple):
    """One change record: an absolute path and its kind."""

    path: str
    kind: ChangeKind

    def __str__(self) -> str:
        return f"{self.kind.letter} {self.path}"


class LayerContent(NamedTuple):
    """A layer's own content: the subtree ``top`` of an image (``None``: no content yet)."""

    reader: Ext4Reader | None
    top: bytes = b"/"


class Meta(NamedTuple):
    """What change detection compares, per entry."""

    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    rdev: int
    ino: int
    layer: int  # index of the layer holding the entry (0 = nearest)
    capability: bytes | None


_S_IFMT = 0o170000
_S_IFDIR = stat.S_IFDIR
_S_IFCHR = stat.S_IFCHR
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()
_tuple_new = tuple.__new__  # builds Change records without the NamedTuple's Python __new__


def _is_whiteout(mode: int, rdev: int) -> bool:
    return stat.S_ISCHR(mode) and rdev == 0


def _scan(content: LayerContent, *, capability: bool) -> Iterator[ScanEntry]:
    """Every entry below the content's top (paths relative to it, in absolute form), walk
    order, from the reader's lean metadata scan; an empty root ``/lost+found`` is left out
    (every ext4 has one; it is not layer content)."""
    reader, top = content
    if reader is None:
        return iter(())
    scan = reader.scan(
        top, capability=capability, relative=True, hide_lost_found=not top.strip(b"/")
    )
    next(scan)  # the top itself
    return scan


def _metas(content: LayerContent, layer: int) -> Iterator[tuple[bytes, Meta, bool]]:
    """``(path, meta, opaque)`` of every entry (see :func:`_scan`), for :class:`MergedView`."""
    new = _tuple_new
    for path, ino, mode, uid, gid, size, mtime_ns, rdev, _nlink, opaque, cap in _scan(
        content, capability=True
    ):
        yield path, new(Meta, (mode, uid, gid, size, mtime_ns, rdev, ino, layer, cap)), opaque


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while many acyclic records are built.

    Each surviving tuple counts towards the next collection, so building tens of thousands
    of records makes the collector traverse them (and everything else) again and again — 15 %
    of Changes on a 70,000-entry layer. The records hold no cycles; Mercurial's ``util.nogc``
    does the same for the same reason.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _Node:
    """One path of a merged view; ``children`` is ``None`` for non-directories."""

    __slots__ = ("children", "meta")

    def __init__(self, meta: Meta | None, children: dict[bytes, _Node] | None) -> None:
        self.meta = meta
        self.children = children


class MergedView:
    """The union of layers with overlay rules: upper wins, whiteouts hide, opaque dirs hide below.

    Held as a tree of small nodes, so a whole rootfs fits in a few MB.
    """

    def __init__(self) -> None:
        self.root = _Node(None, {})

    @classmethod
    def build(cls, contents: Iterable[LayerContent]) -> MergedView:
        """Merge layers given nearest first."""
        view = cls()
        layers = list(contents)
        with _gc_paused():
            for index in range(len(layers) - 1, -1, -1):
                view.apply(_metas(layers[index], index))
        return view

    def apply(self, entries: Iterable[tuple[bytes, Meta, bool]]) -> None:
        """Lay one layer's entries (walk order) over the view."""
        # Children of the directories this layer has placed so far: a layer lists parents
        # before their contents, so a parent is usually found here without a walk.
        placed: dict[bytes, dict[bytes, _Node] | None] = {}
        for path, meta, opaque in entries:
            parent_path, _, name = path.rpartition(b"/")
            children = placed[parent_path] if parent_path in placed else self._dir(parent_path)
            if children is None:
                continue  # under a non-directory of a lower layer: unreachable
            mode = meta.mode
            if _is_whiteout(mode, meta.rdev):
                children.pop(name, None)
                continue
            if stat.S_ISDIR(mode):
                node = children.get(name)
                if node is not None and node.children is not None and not opaque:
                    node.meta = meta  # merge into the lower directory
                else:
                    node = children[name] = _Node(meta, {})
                placed[path] = node.children
            else:
                children[name] = _Node(meta, None)

    def _dir(self, path: bytes) -> dict[bytes, _Node] | None:
        """Children of the directory at ``path``; missing directories are created empty (a
        layer lists parents first, so a missing one was hidden below and is re-created)."""
        children = self.root.children
        for part in path.split(b"/"):
            if not part:
                continue
            if children is None:
                return None
            child = children.get(part)
            if child is None:
                child = children[part] = _Node(None, {})
            children = child.children
        return children

    def lookup(self, path: bytes) -> Meta | None:
        """The entry at ``path`` (absolute), or ``None``."""
        node = self.root
        for part in path.split(b"/"):
            if not part:
                continue
            if node.children is None:
                return None
            child = node.children.get(part)
            if child is None:
                return None
            node = child
        return node.meta

    def walk(self) -> Iterator[tuple[bytes, Meta]]:
        """Every entry but the root, depth first, names sorted."""
        assert self.root.children is not None
        stack: list[tuple[bytes, Iterator[tuple[bytes, _Node]]]] = [
            (b"", iter(sorted(self.root.children.items())))
        ]
        while stack:
            prefix, it = stack[-1]
            item = next(it, None)
            if item is None:
                stack.pop()
                continue
            name, node = item
            path = prefix + b"/" + name
            if node.meta is not None:
                yield path, node.meta
            if node.children is not None:
                stack.append((path, iter(sorted(node.children.items()))))


def _same_time(a: int, b: int) -> bool:
    """Equal, or the same second with either nanosecond part zero (SPEC §5.6)."""
    if a == b:
        return True
    sa, na = divmod(a, _NS)
    sb, nb = divmod(b, _NS)
    return sa == sb and (na == 0 or nb == 0)


def _fspath(path: bytes) -> str:
    return os.fsdecode(path)


def overlay_changes(layer: LayerContent, lower: MergedView) -> list[Change]:
    """Changes of a layer against its direct parent, overlay style (SPEC §5.6)."""
    with _gc_paused():
        return _overlay_changes(layer, lower)


def _overlay_changes(layer: LayerContent, lower: MergedView) -> list[Change]:
    records: list[Change] = []
    append = records.append
    remembered: set[bytes] = set()
    # Children of the lower view's directory at each directory path the walk entered, so a
    # path is looked up below with one dictionary access instead of a walk from the root.
    below_dirs: dict[bytes, dict[bytes, _Node]] = {}
    if lower.root.children:
        below_dirs[b""] = lower.root.children
    modify, add, delete = ChangeKind.MODIFY, ChangeKind.ADD, ChangeKind.DELETE
    new, encoding, errors = _tuple_new, _FS_ENCODING, _FS_ERRORS
    for path, _ino, mode, _uid, _gid, size, mtime_ns, rdev, _nlink, opaque, _cap in _scan(
        layer, capability=False
    ):
        parent, _, name = path.rpartition(b"/")
        fmt = mode & _S_IFMT
        siblings = below_dirs.get(parent)
        node = None
        if siblings is not None:
            node = siblings.get(name)
            if node is not None and fmt == _S_IFDIR and node.children:
                below_dirs[path] = node.children
        if opaque or (fmt == _S_IFCHR and rdev == 0):
            kind = delete
        elif node is None or node.meta is None:
            kind = add
        else:
            below = node.meta
            if (
                fmt == _S_IFDIR
                and below.mode == mode
                and below.size == size
                and _same_time(below.mtime_ns, mtime_ns)
            ):
                continue
            kind = modify
        if kind is not modify and parent and parent not in remembered:
            append(new(Change, (parent.decode(encoding, errors), modify)))
            remembered.add(parent)
        append(new(Change, (path.decode(encoding, errors), kind)))
        if fmt == _S_IFDIR:
            remembered.add(path)
    return records


def _differs(new: Meta, old: Meta) -> bool:
    if (new.mode, new.uid, new.gid, new.rdev) != (old.mode, old.uid, old.gid, old.rdev):
        return True
    if new.capability != old.capability:
        return True
    if stat.S_ISDIR(new.mode):
        return False
    return new.mtime_ns != old.mtime_ns or new.size != old.size


def tree_changes(new: MergedView, old: MergedView) -> list[Change]:
    """Changes between two full views (SPEC §5.7), parents before children."""
    with _gc_paused():
        return _tree_changes(new, old)


def _tree_changes(new: MergedView, old: MergedView) -> list[Change]:
    records: list[Change] = []
    recorded: set[bytes] = set()

    def mark_parents(path: bytes) -> None:
        missing = []
        parent = path.rpartition(b"/")[0]
        while parent and parent not in recorded:
            missing.append(parent)
            parent = parent.rpartition(b"/")[0]
        for p in reversed(missing):
            records.append(Change(_fspath(p), ChangeKind.MODIFY))
            recorded.add(p)

    new_paths: set[bytes] = set()
    for path, meta in new.walk():
        new_paths.add(path)
        before = old.lookup(path)
        if before is None:
            kind = ChangeKind.ADD
        elif stat.S_ISDIR(meta.mode) != stat.S_ISDIR(before.mode) or _differs(meta, before):
            kind = ChangeKind.MODIFY
        else:
            continue
        mark_parents(path)
        records.append(Change(_fspath(path), kind))
        recorded.add(path)
    deleted_dirs: list[bytes] = []
    for path, meta in old.walk():
        if path in new_paths:
            continue
        if any(path.startswith(d + b"/") for d in deleted_dirs[-1:]):
            continue  # inside a deleted directory: not descended
        mark_parents(path)
        records.append(Change(_fspath(path), ChangeKind.DELETE))
        if stat.S_ISDIR(meta.mode):
            deleted_dirs.append(path)
    records.sort(key=lambda c: c.path)
    return records


def own_diff_size(layer: LayerContent) -> int:
    """Bytes of non-directory own content, each inode once (overlay2's DiffSize rule)."""
    reader, top = layer
    if reader is None:
        return 0
    return reader.content_size(top, hide_lost_found=not top.strip(b"/"))


def change_size(view: MergedView, changes: Iterable[Change]) -> int:
    """Sum of sizes of added or modified non-directories, hard-linked inodes once (SPEC §5.8)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for change in changes:
        if change.kind == ChangeKind.DELETE:
            continue
        meta = view.lookup(os.fsencode(change.path))
        if meta is None or stat.S_ISDIR(meta.mode):
            continue
        key = (meta.layer, meta.ino)
        if key in seen:
            continue
        seen.add(key)
        total += meta.size
    return total
