"""containerd's snapshotter over lcow's driver: snapshots are LCOW layer folders (issue 15).

A snapshot is a folder of the data root named by a generated layer id; the metastore
(:mod:`.metastore`, ``<root>/.snapshots.db``) maps containerd's keys to folders and keeps kinds,
parents, labels and times.

* **Prepare** (active): ``create_read_write(id, parent)`` — a ``sandbox.vhdx`` over the
  parent's chain — then a Get of the layer; the mounts are one bind mount of the view's host
  directory (``rbind``, ``rw``), which containerd's mount code mounts without help.
  A Prepare for containerd's unpacker (a key named ``extract-...``: the walking differ writes a
  layer's tar into it, then Commits it) gets a raw sandbox (``sandbox.img``) instead: its
  content is only ever exported, so no VHDX is needed, and the host backend mounts the file
  itself — Commit's write-back of the layer's files then goes into the host's page cache
  rather than through the storage daemon (benchmarks/RESULTS.md, issue 15's pull).
* **View**: the same, bound ``ro``. A view has a sandbox of its own rather than sharing the
  parent's read-only view: the host backend mounts a lone read-only layer directly, and its
  image's ``lost+found`` would then show in the view (and in every diff containerd computes
  from one); over a sandbox it is an overlay with the mask that hides it.
* **Commit**: the name is reserved in the row, the view Put, the sandbox's own content exported
  as a tar with AUFS whiteouts (the driver's Diff against the direct parent) and applied into
  the same id (ApplyDiff writes ``layer.vhd`` and removes the sandbox); then the row becomes the
  committed ``name``. The conversion holds the layer's lock, not the snapshotter's: other
  snapshots are prepared and committed meanwhile.
* **Remove**: the row first, then the views and the folder (a failure there is only logged:
  Cleanup sweeps folders without a row).

Views stay mounted as long as the snapshot exists, across restarts of the snapshotter (the host
backend's table is persistent): containerd and its running containers hold the bind mounts.

Crash safety: a folder is complete before its row is written, and a row is removed before its
folder. A Commit first reserves its name in the row; startup finishes it if ``layer.vhd`` is in
place, else rolls it back. Startup also drops rows whose folder is gone (and their
descendants), and makes the backend's view counts match the rows: a Get per active snapshot and
per view, none for committed ones.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lcow.errors import (
    AlreadyExists,
    Busy,
    FailedPrecondition,
    InvalidArgument,
    LcowError,
    NotFound,
    NotSupported,
)
from lcow.formats.ext4.reader import Ext4Reader
from lcow.formats.source import open_source
from lcow.graphdriver.driver import Driver
from lcow.snapshots.filters import matches, parse_filters, snapshot_fields
from lcow.snapshots.labels import check_key, check_labels
from lcow.snapshots.metastore import Kind, MetaStore, Snapshot, Transaction
from lcow.storage.dataroot import LAYER_VHD, DataRoot

__all__ = ["METASTORE", "Mount", "Snapshotter", "Usage", "new_layer_id", "unpack_key"]

log = logging.getLogger(__name__)

#: The metastore's file in the data root (a dot name: never a layer id, never swept).
METASTORE = ".snapshots.db"
_LOST_FOUND = b"/lost+found"
_UNPACK_KEY = re.compile(r"(?:[^/]+/[0-9]+/)?extract-")


@dataclass(frozen=True)
class Mount:
    """One mount containerd performs: ``mount -t TYPE -o OPTIONS SOURCE <target>``."""

    type: str
    source: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class Usage:
    """What a snapshot's own content uses: bytes (the layer's DiffSize) and inodes."""

    size: int
    inodes: int


def unpack_key(key: str) -> bool:
    """Whether ``key`` is one containerd's unpacker prepares a layer under (``extract-<unique>
    <chain ID>``, below containerd's ``<namespace>/<number>/``)."""
    return _UNPACK_KEY.match(key) is not None


def _now() -> int:
    return time.time_ns()


def new_layer_id() -> str:
    """A fresh folder name for a snapshot: ``sn`` and 32 hex digits."""
    return "sn" + secrets.token_hex(16)


class Snapshotter:
    """The snapshotter over ``driver`` (which must use the host backend).

    Args:
        driver: the driver over the data root.

    Raises:
        NotSupported: the driver's backend cannot give containerd a host directory to mount.
        CorruptImage: the metastore is unreadable.
    """

    def __init__(self, driver: Driver) -> None:
        if driver.backend.name != "host":
            raise NotSupported(
                f"snapshotter: the {driver.backend.name} backend's views are not host "
                "directories containerd can mount; use the host backend",
                subject=driver.backend.name,
            )
        self.driver = driver
        self.store = MetaStore(driver.root.root / METASTORE)
        self._mutate = threading.RLock()  # one change of the key space at a time
        self.reconcile()

    def close(self) -> None:
        """Close the metastore; views stay mounted for the next snapshotter."""
        self.store.close()

    # -- queries -----------------------------------------------------------------------------

    def stat(self, key: str) -> Snapshot:
        """The snapshot ``key``.

        Raises:
            NotFound: there is none.
        """
        check_key(key)
        with self.store.transaction() as tx:
            return tx.require(key)

    def walk(self, filters: Sequence[str] = ()) -> list[Snapshot]:
        """Every snapshot passing one of ``filters`` (containerd's syntax; none: all).

        Raises:
            InvalidArgument: a filter this snapshotter cannot parse.
        """
        flt = parse_filters(filters)
        with self.store.transaction() as tx:
            rows = tx.all()
        return [
            s for s in rows
            if matches(flt, snapshot_fields(s.key, s.parent, s.kind.value, s.labels))
        ]  # fmt: skip

    def mounts(self, key: str) -> list[Mount]:
        """The mounts of an active snapshot or a view.

        Raises:
            NotFound: no such snapshot.
            FailedPrecondition: it is committed.
        """
        check_key(key)
        with self.store.transaction() as tx:
            snap = tx.require(key)
        if snap.kind is Kind.COMMITTED:
            raise FailedPrecondition(
                f"snapshot {key}: is committed; only active snapshots and views have mounts",
                subject=key,
            )
        if snap.pending_name is not None:
            raise FailedPrecondition(f"snapshot {key}: is being committed", subject=key)
        if not snap.held or snap.source is None:
            with self._mutate:
                snap = self._hold(key)
        return [self._mount(snap)]

    def usage(self, key: str) -> Usage:
        """Bytes and inodes of the snapshot's own content (a view has none).

        Raises:
            NotFound: no such snapshot.
        """
        snap = self.stat(key)
        if snap.kind is Kind.VIEW:
            return Usage(0, 0)
        parent_id = self._parent_id(snap)
        with self.driver.holding([snap.id]):
            size = self.driver.diff_size(snap.id, parent_id)
            return Usage(size, self._inodes(snap.id))

    # -- changes -----------------------------------------------------------------------------

    def prepare(
        self, key: str, parent: str | None, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """A new active snapshot over ``parent`` (a committed snapshot, or none); its mounts.

        Raises:
            AlreadyExists: ``key`` is taken.
            NotFound: ``parent`` does not exist.
            InvalidArgument: ``parent`` is not committed; a bad key or labels.
        """
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(
        self, key: str, parent: str | None, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """A read-only view of ``parent``; its mounts (errors as :meth:`prepare`)."""
        return self._create(Kind.VIEW, key, parent, labels)

    def _create(
        self, kind: Kind, key: str, parent: str | None, labels: Mapping[str, str] | None
    ) -> list[Mount]:
        check_key(key)
        if parent is not None:
            check_key(parent, "parent")
        labels = check_labels(labels or {}, key)
        with self._mutate:
            with self.store.transaction() as tx:
                if tx.name_taken(key):
                    raise AlreadyExists(f"snapshot {key}: already exists", subject=key)
                parent_id = self._committed_parent(tx, key, parent)
            layer_id = view_id = new_layer_id()
            raw = kind is Kind.ACTIVE and unpack_key(key)
            self.driver.create_read_write(layer_id, parent_id, raw=raw)
            try:
                source = self._get(view_id)
                try:
                    now = _now()
                    snap = Snapshot(
                        key, layer_id, kind, parent, labels, now, now,
                        view_id=view_id, held=True, source=source,
                    )  # fmt: skip
                    with self.store.transaction() as tx:
                        tx.insert(snap)
                except BaseException:
                    self._put(view_id)
                    raise
            except BaseException:
                self._remove_folder(layer_id)
                raise
        log.info("snapshot %s: %s as layer %s", key, kind.value, layer_id)
        return [self._mount(snap)]

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Turn the active snapshot ``key`` into the committed snapshot ``name``.

        Raises:
            NotFound: no snapshot ``key``.
            FailedPrecondition: ``key`` is not active (a view, committed, or being committed),
                or its view is still in use.
            AlreadyExists: ``name`` is taken.
        """
        check_key(name, "name")
        check_key(key)
        labels = check_labels(labels or {}, name)
        with self._mutate, self.store.transaction() as tx:
            snap = tx.require(key)
            if snap.pending_name is not None:
                raise FailedPrecondition(f"snapshot {key}: is being committed", subject=key)
            if snap.kind is not Kind.ACTIVE:
                raise FailedPrecondition(
                    f"snapshot {key}: is {snap.kind.value}, not active: only an active "
                    "snapshot can be committed",
                    subject=key,
                )
            if tx.name_taken(name):
                raise AlreadyExists(f"snapshot {name}: already exists", subject=name)
            parent_id = self._parent_id_in(tx, snap)
            tx.replace(key, snap.but(pending_name=name, pending_labels=labels))
        # The conversion runs without the key-space lock: the reserved name and the pending
        # row keep every other call off this snapshot (Remove, Commit, Mounts refuse it, a
        # Prepare cannot use it as a parent, Cleanup knows its folder), so other snapshots'
        # Prepares and Commits go on meanwhile.
        try:
            self._convert(key, snap, parent_id)
        except BaseException:
            with self._mutate:
                self._roll_back_commit(key)
            raise
        with self._mutate, self.store.transaction() as tx:
            tx.replace(key, self._committed(tx.require(key)))
        log.info("snapshot %s: committed as %s (layer %s)", key, name, snap.id)

    def _convert(self, key: str, snap: Snapshot, parent_id: str | None) -> None:
        """The sandbox's own content into ``layer.vhd`` of the same folder, view released."""
        with self.driver.holding([snap.id]):
            if snap.held and snap.view_id is not None:
                try:
                    self.driver.put(snap.view_id)
                except Busy as exc:
                    raise FailedPrecondition(
                        f"snapshot {key}: its mounts are still in use: {exc}", subject=key
                    ) from exc
                with self.store.transaction() as tx:
                    tx.replace(key, tx.require(key).but(held=False, source=None))
            # Read through a buffer, not the pipe's descriptor: an export error then reaches
            # the converter as that error, not as a short tar.
            with io.BufferedReader(self.driver.diff(snap.id, parent_id), 1 << 20) as stream:
                self.driver.apply_diff(snap.id, parent_id, stream)

    def _roll_back_commit(self, key: str) -> None:
        """A failed Commit: the snapshot stays active, its name free, its view held again."""
        try:
            with self.store.transaction() as tx:
                snap = tx.require(key)
                tx.replace(key, snap.but(pending_name=None, pending_labels={}))
            self._hold(key)
        except (OSError, LcowError) as exc:
            log.warning("snapshot %s: after a failed commit: %s", key, exc)

    @staticmethod
    def _committed(snap: Snapshot) -> Snapshot:
        assert snap.pending_name is not None
        now = _now()
        return Snapshot(
            snap.pending_name, snap.id, Kind.COMMITTED, snap.parent, snap.pending_labels,
            now, now,
        )  # fmt: skip

    def remove(self, key: str) -> None:
        """Remove the snapshot ``key``: its row, then its views and folder.

        Raises:
            NotFound: no such snapshot.
            FailedPrecondition: other snapshots have it as parent, or it is being committed.
        """
        check_key(key)
        with self._mutate:
            with self.store.transaction() as tx:
                snap = tx.require(key)
                children = tx.children(key)
                if children:
                    raise FailedPrecondition(
                        f"snapshot {key}: cannot remove a snapshot with children "
                        f"({len(children)}, e.g. {children[0]})",
                        subject=key,
                    )
                if snap.pending_name is not None:
                    raise FailedPrecondition(f"snapshot {key}: is being committed", subject=key)
                tx.delete(key)
            self._remove_folder(snap.id)  # its views with it
        log.info("snapshot %s: removed (layer %s)", key, snap.id)

    def update(self, key: str, labels: Mapping[str, str], paths: Sequence[str] = ()) -> Snapshot:
        """Change the labels of ``key`` (the only mutable field); returns the new info.

        ``paths`` is containerd's field mask: empty or ``labels`` replace every label,
        ``labels.<k>`` sets (or, absent from ``labels`` or empty there, removes) one.

        Raises:
            NotFound: no such snapshot.
            InvalidArgument: a path naming an immutable field; bad labels.
        """
        check_key(key)
        given = check_labels(labels, key)
        with self._mutate, self.store.transaction() as tx:
            snap = tx.require(key)
            new = dict(snap.labels) if paths else dict(given)
            for path in paths:
                if path == "labels":
                    new = dict(given)
                elif path.startswith("labels.") and len(path) > len("labels."):
                    name = path[len("labels.") :]
                    if name in given:
                        new[name] = given[name]
                    else:
                        new.pop(name, None)
                else:
                    raise InvalidArgument(
                        f"snapshot {key}: cannot update field {path!r} (only labels)",
                        subject=key,
                    )
            updated = snap.but(labels=check_labels(new, key), updated_ns=_now())
            tx.replace(key, updated)
            return updated

    def cleanup(self) -> list[str]:
        """Remove folders no snapshot refers to and sweep temporaries; views stay mounted.

        Returns:
            The removed layer ids.
        """
        with self._mutate:
            with self.store.transaction() as tx:
                known = {s.id for s in tx.all()} | self._unlisted_ids()
            removed = []
            for layer_id in self.driver.root.layer_ids():
                if layer_id not in known:
                    log.info("snapshotter: cleanup: removing layer %s, no snapshot uses it",
                             layer_id)  # fmt: skip
                    if self._remove_folder(layer_id):
                        removed.append(layer_id)
            self.driver.cleanup(release_views=False)
        return removed

    def _unlisted_ids(self) -> set[str]:
        """Folders in the making that no row names yet, which Cleanup must leave (none here;
        a subclass that makes folders outside the metastore's rows names them)."""
        return set()

    # -- startup -----------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Bring the metastore, the folders and the backend's view counts back in line after a
        crash or a reboot (see the module's docstring); never removes a folder."""
        with self._mutate:
            on_disk = set(self.driver.root.layer_ids())
            with self.store.transaction() as tx:
                self._finish_commits(tx)
                self._drop_dangling(tx, on_disk)
                rows = tx.all()
            want = Counter(s.view_id for s in rows if s.kind is not Kind.COMMITTED and s.view_id)
            for layer_id in sorted({s.id for s in rows} | set(want)):
                self._recount(layer_id, want.get(layer_id, 0))

    def _finish_commits(self, tx: Transaction) -> None:
        for snap in tx.all():
            if snap.pending_name is None:
                continue
            if (self.driver.root.layer_dir(snap.id) / LAYER_VHD).exists():
                log.warning("snapshot %s: finishing its interrupted commit as %s",
                            snap.key, snap.pending_name)  # fmt: skip
                tx.replace(snap.key, self._committed(snap))
            else:
                log.warning("snapshot %s: its commit as %s was interrupted; it stays active",
                            snap.key, snap.pending_name)  # fmt: skip
                tx.replace(snap.key, snap.but(pending_name=None, pending_labels={}, held=False))

    @staticmethod
    def _drop_dangling(tx: Transaction, on_disk: set[str]) -> None:
        rows = {s.key: s for s in tx.all()}
        changed = True
        while changed:
            changed = False
            for snap in list(rows.values()):
                gone = snap.id not in on_disk
                orphan = snap.parent is not None and snap.parent not in rows
                if gone or orphan:
                    why = "its layer folder is gone" if gone else "its parent is gone"
                    log.warning("snapshot %s: dropped: %s", snap.key, why)
                    tx.delete(snap.key)
                    del rows[snap.key]
                    changed = True

    def _recount(self, layer_id: str, want: int) -> None:
        """Make the backend's Get count of ``layer_id`` equal ``want``."""
        have = self.driver.view_count(layer_id)
        try:
            for _ in range(have - want):
                self.driver.put(layer_id)
            for _ in range(want - have):
                view = self.driver.get(layer_id)
                view.close()
        except (OSError, LcowError) as exc:
            log.warning("snapshotter: layer %s: cannot restore its views (%d of %d): %s",
                        layer_id, self.driver.view_count(layer_id), want, exc)  # fmt: skip
            return
        if want:
            with self.store.transaction() as tx:
                for snap in tx.all():
                    if snap.view_id == layer_id and snap.kind is not Kind.COMMITTED:
                        tx.replace(snap.key, snap.but(held=True, source=self._path(layer_id)))

    # -- helpers -----------------------------------------------------------------------------

    def _committed_parent(self, tx: Transaction, key: str, parent: str | None) -> str | None:
        """The layer id of ``parent``, which must be a committed snapshot."""
        if parent is None:
            return None
        found = tx.get(parent)
        if found is None:
            raise NotFound(f"snapshot {key}: parent {parent} does not exist", subject=parent)
        if found.kind is not Kind.COMMITTED:
            raise InvalidArgument(
                f"snapshot {key}: parent {parent} is {found.kind.value}, not committed",
                subject=parent,
            )
        return found.id

    def _parent_id(self, snap: Snapshot) -> str | None:
        with self.store.transaction() as tx:
            return self._parent_id_in(tx, snap)

    @staticmethod
    def _parent_id_in(tx: Transaction, snap: Snapshot) -> str | None:
        if snap.parent is None:
            return None
        return tx.require(snap.parent).id

    def _get(self, layer_id: str) -> str:
        """One Get of ``layer_id``; the view's host directory."""
        view = self.driver.get(layer_id)
        try:
            return view.path
        finally:
            view.close()

    def _path(self, layer_id: str) -> str:
        """The host directory of a view already held (a Get and a Put: the count stays)."""
        path = self._get(layer_id)
        self.driver.put(layer_id)
        return path

    def _put(self, layer_id: str) -> None:
        try:
            self.driver.put(layer_id)
        except (OSError, LcowError) as exc:
            log.warning("snapshotter: layer %s: releasing its view: %s", layer_id, exc)

    def _hold(self, key: str) -> Snapshot:
        """Make sure the snapshot holds its Get (restarted after a reboot or a failed commit)."""
        with self.store.transaction() as tx:
            snap = tx.require(key)
        if snap.view_id is None:
            return snap
        if snap.pending_name is not None:  # its view is being converted
            raise FailedPrecondition(f"snapshot {key}: is being committed", subject=key)
        source = self._path(snap.view_id) if snap.held else self._get(snap.view_id)
        with self.store.transaction() as tx:
            held = tx.require(key).but(held=True, source=source)
            tx.replace(key, held)
        return held

    def _remove_folder(self, layer_id: str) -> bool:
        try:
            self.driver.remove(layer_id)
        except (OSError, LcowError) as exc:
            log.warning("snapshotter: layer %s: removing its folder: %s (cleanup retries)",
                        layer_id, exc)  # fmt: skip
            return False
        return True

    @staticmethod
    def _mount(snap: Snapshot) -> Mount:
        assert snap.source is not None
        mode = "ro" if snap.kind is Kind.VIEW else "rw"
        return Mount("bind", snap.source, ("rbind", mode))

    def _inodes(self, layer_id: str) -> int:
        """Distinct inodes below the layer's own root (an image's empty lost+found left out)."""
        disk = DataRoot.layer_file(self.driver.root.layer_dir(layer_id))
        if disk is None:
            return 0
        with self.driver.backend.reading(disk) as path, _reader(path) as reader:
            top = b"/upper" if disk.writable else b"/"
            try:
                entries = reader.walk_inodes(top)
                seen = {
                    inode.ino for name, inode in entries
                    if disk.writable or not name.startswith(_LOST_FOUND)
                }  # fmt: skip
            except NotFound:
                return 0
            return len(seen)


@contextlib.contextmanager
def _reader(path: Path) -> Iterator[Ext4Reader]:
    reader = Ext4Reader(open_source(path), close_source=True)
    try:
        yield reader
    finally:
        reader.close()
