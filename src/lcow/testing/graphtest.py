"""moby's graphtest (v18.02), ported to Python as a suite any backend can run (SPEC §10).

Fixtures write layer content through a :class:`LayerBuilder`: :class:`TarBuilder` collects the
changes as a layer tar and applies it with ApplyDiff (every backend, the userspace one
included); a writable backend can supply a builder that writes through Get's view instead
(:class:`ViewBuilder`, or any :class:`ViewWriter` over a :class:`ContainerFS`). The checks read
back only through the driver's operations and Get's view; the content checks need only
:class:`Views` (a Get and a Put), so views from elsewhere (the containerd snapshotter's mounts)
are held to the same expected trees.
"""

from __future__ import annotations

import errno
import io
import posixpath
import random
import stat
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from lcow.backends.base import ContainerFS
from lcow.graphdriver.driver import Driver
from lcow.layerdiff.changes import Change, ChangeKind

__all__ = [
    "LayerBuilder",
    "TarBuilder",
    "ViewBuilder",
    "ViewWriter",
    "Views",
    "add_files",
    "add_many_files",
    "add_many_layers",
    "change_many_files",
    "check_changes",
    "check_many_files",
    "check_many_layers",
    "create_base",
    "random_content",
    "read_dir",
    "test_changes",
    "test_create_base",
    "test_create_empty",
    "test_create_snap",
    "test_deep_layer_read",
    "test_diff_apply",
    "test_set_quota",
    "verify_base",
    "write_base",
    "write_layer",
]


def random_content(size: int, seed: int) -> bytes:
    """graphtest's ``randomContent``: the low 7 bytes of 63-bit values from a seeded generator."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += rng.getrandbits(63).to_bytes(8, "little")[:7]
    return bytes(out[:size])


class LayerBuilder(Protocol):
    """Writes content into one layer, then makes it permanent with :meth:`commit`."""

    def mkdir(self, path: str, mode: int, uid: int = 0, gid: int = 0) -> None:
        """Create a directory."""
        ...

    def write(self, path: str, data: bytes, mode: int, uid: int = 0, gid: int = 0) -> None:
        """Create or replace a regular file."""
        ...

    def remove(self, path: str) -> None:
        """Remove a path visible in the layer's view."""
        ...

    def commit(self) -> None:
        """Make the changes part of the layer."""
        ...


@dataclass
class _Item:
    kind: str  # "dir", "file", "whiteout"
    mode: int = 0
    uid: int = 0
    gid: int = 0
    data: bytes = b""
    mtime: float = field(default_factory=time.time)


class TarBuilder:
    """Collects changes as a layer tar (AUFS whiteouts, copied-up parents) and applies it.

    Args:
        driver: the driver under test.
        layer_id: a Created layer without content.
        parent: its parent (``None`` for a base).
    """

    def __init__(self, driver: Driver, layer_id: str, parent: str | None) -> None:
        self.driver = driver
        self.layer_id = layer_id
        self.parent = parent
        self.items: dict[str, _Item] = {}

    def _copy_up_parents(self, path: str) -> None:
        """Like overlayfs: a change below a lower directory copies the directory up with a new
        mtime (so Changes reports it as modified)."""
        parent = posixpath.dirname(path)
        while parent not in ("", "/") and parent not in self.items:
            mode, uid, gid = 0o755, 0, 0
            if self.parent is not None:
                view = self.driver.get(self.parent)
                try:
                    info = view.lstat(parent)
                    mode, uid, gid = stat.S_IMODE(info.mode), info.uid, info.gid
                except FileNotFoundError:
                    pass
                finally:
                    self.driver.put(self.parent)
            self.items[parent] = _Item("dir", mode, uid, gid)
            parent = posixpath.dirname(parent)

    def mkdir(self, path: str, mode: int, uid: int = 0, gid: int = 0) -> None:
        """Create a directory."""
        path = posixpath.normpath("/" + path)
        self._copy_up_parents(path)
        self.items[path] = _Item("dir", mode, uid, gid)

    def write(self, path: str, data: bytes, mode: int, uid: int = 0, gid: int = 0) -> None:
        """Create or replace a regular file."""
        path = posixpath.normpath("/" + path)
        self._copy_up_parents(path)
        self.items[path] = _Item("file", mode, uid, gid, data)

    def remove(self, path: str) -> None:
        """Remove a path: drop it if this layer added it, else leave a whiteout."""
        path = posixpath.normpath("/" + path)
        for name in [p for p in self.items if p == path or p.startswith(path + "/")]:
            del self.items[name]
        below = False
        if self.parent is not None:
            view = self.driver.get(self.parent)
            try:
                view.lstat(path)
                below = True
            except FileNotFoundError:
                below = False
            finally:
                self.driver.put(self.parent)
        if below:
            self._copy_up_parents(path)
            self.items[path] = _Item("whiteout")

    def tar(self) -> bytes:
        """The layer tar of the collected changes."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.items):
                item = self.items[path]
                name = path.lstrip("/")
                if item.kind == "whiteout":
                    parent, base = posixpath.split(name)
                    info = tarfile.TarInfo(posixpath.join(parent, ".wh." + base))
                    tar.addfile(info, io.BytesIO(b""))
                    continue
                info = tarfile.TarInfo(name)
                info.mode, info.uid, info.gid, info.mtime = (
                    item.mode,
                    item.uid,
                    item.gid,
                    item.mtime,
                )
                if item.kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                else:
                    info.size = len(item.data)
                    tar.addfile(info, io.BytesIO(item.data))
        return buf.getvalue()

    def commit(self) -> None:
        """Apply the collected changes with ApplyDiff."""
        self.driver.apply_diff(self.layer_id, self.parent, io.BytesIO(self.tar()))


class Views(Protocol):
    """Where the checks read a layer's view: a Get and its Put (a :class:`Driver` is one)."""

    def get(self, layer_id: str) -> ContainerFS:
        """The view of ``layer_id``, held until :meth:`put`."""
        ...

    def put(self, layer_id: str) -> None:
        """Release one :meth:`get`."""
        ...


class ViewWriter:
    """Writes a layer's content through a writable view with graphtest's semantics; a
    subclass says what :meth:`commit` does."""

    view: ContainerFS

    def mkdir(self, path: str, mode: int, uid: int = 0, gid: int = 0) -> None:
        """Create a directory with exactly ``mode`` (no umask) and owners; an existing one is
        left as it is (graphtest's ``MkdirAll``)."""
        path = posixpath.normpath("/" + path)
        try:
            self.view.mkdir(path, mode)
        except FileExistsError:
            return
        self.view.lchown(path, uid, gid)
        self.view.lchmod(path, mode)

    def write(self, path: str, data: bytes, mode: int, uid: int = 0, gid: int = 0) -> None:
        """Write a file, then set owners and mode (in that order: chown clears setuid)."""
        path = posixpath.normpath("/" + path)
        self.view.write_file(path, data, mode)
        self.view.lchown(path, uid, gid)
        self.view.lchmod(path, mode)

    def remove(self, path: str) -> None:
        """Remove a path and everything below it."""
        self.view.remove_all(posixpath.normpath("/" + path))


class ViewBuilder(ViewWriter):
    """Writes through the layer's own Get view, as graphtest does (writable backends).

    The view stays held from construction to :meth:`commit` (its Put).
    """

    def __init__(self, driver: Driver, layer_id: str, parent: str | None) -> None:
        self.driver = driver
        self.layer_id = layer_id
        self.view = driver.get(layer_id)

    def commit(self) -> None:
        """Release the view (Put): the writes are in the layer's sandbox."""
        self.driver.put(self.layer_id)


BuilderFactory = Callable[[Driver, str, str | None], LayerBuilder]


def read_dir(driver: Views, layer_id: str, path: str) -> list[str]:
    """Names in a directory of a layer's view (``lost+found`` hidden, as graphtest does)."""
    view = driver.get(layer_id)
    try:
        return [i.name for i in view.readdir(path) if i.name != "lost+found"]
    finally:
        driver.put(layer_id)


# -- fixtures (graphtest_unix.go / testutil_unix.go) -------------------------------------------


def add_files(builder: LayerBuilder, seed: int) -> None:
    """``addFiles``: file-a, dir-b/file-b, file-c."""
    builder.write("file-a", random_content(64, seed), 0o755)
    builder.mkdir("dir-b", 0o755)
    builder.write("dir-b/file-b", random_content(128, seed + 1), 0o755)
    builder.write("file-c", random_content(128 * 128, seed + 2), 0o755)


def add_many_files(builder: LayerBuilder, count: int, seed: int) -> None:
    """``addManyFiles``: ``directory-<i>/file-<i+j>`` in directories of 100."""
    for i in range(0, count, 100):
        builder.mkdir(f"directory-{i}", 0o755)
        for j in range(100):
            if i + j >= count:
                break
            builder.write(f"directory-{i}/file-{i + j}", random_content(64, seed + i + j), 0o755)


def check_many_files(driver: Views, layer_id: str, count: int, seed: int) -> None:
    """``checkManyFiles``: every file of :func:`add_many_files` has the seed's content."""
    view = driver.get(layer_id)
    try:
        for i in range(0, count, 100):
            for j in range(100):
                if i + j >= count:
                    break
                got = view.readfile(f"/directory-{i}/file-{i + j}")
                assert got == random_content(64, seed + i + j), f"directory-{i}/file-{i + j}"
    finally:
        driver.put(layer_id)


def change_many_files(builder: LayerBuilder, count: int, seed: int) -> list[Change]:
    """``changeManyFiles``: rewrite, add or remove every file in turn; returns the expected
    change list."""
    changes: list[Change] = []
    for i in range(0, count, 100):
        changes.append(Change(f"/directory-{i}", ChangeKind.MODIFY))
        for j in range(100):
            if i + j >= count:
                break
            name = f"/directory-{i}/file-{i + j}"
            if j % 3 == 0:
                builder.write(name, random_content(64, seed + i + j), 0o755)
                changes.append(Change(name, ChangeKind.MODIFY))
            elif j % 3 == 1:
                added = f"/directory-{i}/file-{seed}-{i + j}"
                builder.write(added, random_content(64, seed + i + j), 0o755)
                changes.append(Change(added, ChangeKind.ADD))
            else:
                builder.remove(name)
                changes.append(Change(name, ChangeKind.DELETE))
    return changes


def check_changes(expected: list[Change], actual: list[Change]) -> None:
    """``checkChanges``: same length, equal once both are sorted by (path, kind)."""
    assert len(expected) == len(actual), f"expected {len(expected)} changes, got {len(actual)}"
    assert sorted(expected) == sorted(actual)


def add_many_layers(driver: Driver, make: BuilderFactory, base: str, count: int) -> str:
    """``addManyLayers``: a chain of ``count`` children; returns the top id."""
    last = base
    for k in range(1, count + 1):
        layer = f"{base}-layer-{k}"
        driver.create(layer, last)
        builder = make(driver, layer, last)
        write_layer(builder, k, layer, last)
        builder.commit()
        last = layer
    return last


def write_layer(builder: LayerBuilder, k: int, layer: str, parent: str) -> None:
    """Layer ``k`` of :func:`add_many_layers`: its id at the top and in ``layer-<k>/``, with its
    parent's id."""
    builder.write("top-id", layer.encode(), 0o755)
    builder.mkdir(f"layer-{k}", 0o755)
    builder.write(f"layer-{k}/layer-id", layer.encode(), 0o755)
    builder.write(f"layer-{k}/parent-id", parent.encode(), 0o755)


def check_many_layers(driver: Views, layer_id: str, count: int) -> None:
    """``checkManyLayers``: follow the ids written by :func:`add_many_layers` down the chain."""
    view = driver.get(layer_id)
    try:
        assert view.readfile("/top-id") == layer_id.encode()
        expected = layer_id
        for k in range(count, 0, -1):
            assert view.readfile(f"/layer-{k}/layer-id") == expected.encode()
            expected = view.readfile(f"/layer-{k}/parent-id").decode()
    finally:
        driver.put(layer_id)


def create_base(driver: Driver, make: BuilderFactory, name: str) -> None:
    """``createBase``: a subdir 0705+sticky owned 1:2 and a 0222+setuid file."""
    driver.create(name, None)
    builder = make(driver, name, None)
    write_base(builder)
    builder.commit()


def write_base(builder: LayerBuilder) -> None:
    """:func:`create_base`'s content."""
    builder.mkdir("a subdir", 0o705 | stat.S_ISVTX, 1, 2)
    builder.write("a file", b"Some data", 0o222 | stat.S_ISUID)


def verify_base(driver: Views, name: str) -> None:
    """``verifyBase``: modes and owners of :func:`create_base`'s entries, exactly two entries."""
    view = driver.get(name)
    try:
        sub = view.lstat("/a subdir")
        assert stat.S_IMODE(sub.mode) == 0o705 | stat.S_ISVTX and sub.is_dir
        assert (sub.uid, sub.gid) == (1, 2)
        f = view.lstat("/a file")
        assert stat.S_IMODE(f.mode) == 0o222 | stat.S_ISUID and stat.S_ISREG(f.mode)
        assert (f.uid, f.gid) == (0, 0)
        assert view.readfile("/a file") == b"Some data"
    finally:
        driver.put(name)
    assert sorted(read_dir(driver, name, "/")) == ["a file", "a subdir"]


# -- tests (graphtest_unix.go), one per case ------------------------------------------------


def test_create_empty(driver: Driver) -> None:
    """CreateEmpty: an empty layer's view is an empty 0755 root owned by 0:0."""
    driver.create("empty", None)
    assert driver.exists("empty")
    view = driver.get("empty")
    root = view.lstat("/")
    assert root.is_dir and stat.S_IMODE(root.mode) == 0o755 and (root.uid, root.gid) == (0, 0)
    driver.put("empty")
    assert read_dir(driver, "empty", "/") == []
    driver.remove("empty")
    assert not driver.exists("empty")


def test_create_base(driver: Driver, make: BuilderFactory) -> None:
    """CreateBase."""
    create_base(driver, make, "Base")
    verify_base(driver, "Base")
    driver.remove("Base")


def test_create_snap(driver: Driver, make: BuilderFactory) -> None:
    """CreateSnap: a child sees its parent's content."""
    create_base(driver, make, "Base")
    driver.create("Snap", "Base")
    verify_base(driver, "Snap")
    driver.remove("Snap")
    driver.remove("Base")


def test_deep_layer_read(driver: Driver, make: BuilderFactory, count: int = 128) -> None:
    """DeepLayerRead: a file in the base read through ``count`` layers."""
    driver.create("Base", None)
    builder = make(driver, "Base", None)
    builder.write("testfile.txt", b"test content", 0o755)
    builder.commit()
    top = add_many_layers(driver, make, "Base", count)
    check_many_layers(driver, top, count)
    view = driver.get(top)
    try:
        assert view.readfile("/testfile.txt") == b"test content"
    finally:
        driver.put(top)


def test_diff_apply(driver: Driver, make: BuilderFactory, count: int = 10) -> None:
    """DiffApply: ApplyDiff(Diff(upper, base)) returns DiffSize(upper, none) and reproduces it."""
    base, upper, diff = "Base", "Upper", "Diff"
    driver.create(base, None)
    builder = make(driver, base, None)
    add_many_files(builder, count, 3)
    builder.write("file-remove.txt", b"This file should get removed in upper!", 0o755)
    builder.mkdir("var", 0o755)
    builder.mkdir("var/lib", 0o755)
    builder.commit()

    driver.create(upper, base)
    builder = make(driver, upper, base)
    add_many_files(builder, count, 6)
    builder.remove("file-remove.txt")
    builder.remove("var/lib")
    builder.commit()

    size = driver.diff_size(upper, None)
    driver.create(diff, base)
    check_many_files(driver, diff, count, 3)
    assert "file-remove.txt" in read_dir(driver, diff, "/")

    with driver.diff(upper, base) as stream:
        tar_bytes = stream.read()
    applied = driver.apply_diff(diff, base, io.BytesIO(tar_bytes))
    assert applied == size, f"ApplyDiff returned {applied}, DiffSize {size}"
    check_many_files(driver, diff, count, 6)
    names = read_dir(driver, diff, "/")
    assert "file-remove.txt" not in names
    assert "lib" not in read_dir(driver, diff, "/var")


def test_changes(driver: Driver, make: BuilderFactory, count: int = 20) -> None:
    """Changes: changeManyFiles' expected list, exactly."""
    base, upper = "Base", "Upper"
    driver.create(base, None)
    builder = make(driver, base, None)
    add_many_files(builder, count, 3)
    builder.commit()
    driver.create(upper, base)
    builder = make(driver, upper, base)
    expected = change_many_files(builder, count, 6)
    builder.commit()
    check_changes(expected, driver.changes(upper, base))


def test_set_quota(driver: Driver, make: BuilderFactory) -> None:
    """SetQuota: a sandbox made with ``size=50M`` takes 25 MiB, then fails a 50 MiB write with
    ENOSPC or EDQUOT (writable backends)."""
    create_base(driver, make, "Base")
    driver.create_read_write("Quota", "Base", {"size": "50M"})
    view = driver.get("Quota")
    try:
        view.write_file("/smallfile", random.Random(1).randbytes(25 << 20), 0o644)
        try:
            view.write_file("/bigfile", random.Random(2).randbytes(50 << 20), 0o644)
        except OSError as exc:
            assert exc.errno in (errno.ENOSPC, errno.EDQUOT), exc
        else:
            raise AssertionError("a 50 MiB write into a 50 MiB sandbox with 25 MiB used worked")
    finally:
        driver.put("Quota")
