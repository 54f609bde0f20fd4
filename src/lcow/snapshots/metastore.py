"""The snapshotter's metadata: one SQLite database beside the layer folders (issue 15).

containerd's own snapshotters keep a bolt metastore; this is its counterpart with the standard
library's SQLite. One row per snapshot: its key (containerd's ``<namespace>/<seq>/<name>``),
the layer folder holding its content (a generated layer id), kind, parent key, labels (JSON),
times in nanoseconds, and the snapshotter's own bookkeeping:

* ``view_id``/``held``/``source``: the layer whose driver view the snapshot's mounts show (the
  snapshot's own, for now), whether the snapshotter holds a Get of it, and the view's host
  directory — startup makes the backend's counts match these;
* ``pending_name``/``pending_labels``: a Commit under way (the name is reserved; startup
  finishes the commit if the folder already holds ``layer.vhd``, else rolls it back).

Every change runs in an explicit transaction (``BEGIN IMMEDIATE``, rolled back on error); the
database is in WAL mode with ``synchronous=FULL``, so a committed change survives a crash.
"""

from __future__ import annotations

import contextlib
import enum
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from lcow.errors import AlreadyExists, CorruptImage, NotFound

__all__ = ["TARGET_LABEL", "Kind", "MetaStore", "Snapshot", "Transaction"]

#: The chain ID of the layer a snapshot holds, set by containerd's unpacker; indexed, so that
#: the snapshot of a layer is found without reading every row.
TARGET_LABEL = "containerd.io/snapshot.ref"

_SCHEMA_VERSION = 1
# The target label's value, as indexed (a query must spell it the same to use the index).
_TARGET = f"json_extract(labels, '$.\"{TARGET_LABEL}\"')"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS snapshots (
    key            TEXT PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
    kind           TEXT NOT NULL CHECK (kind IN ('active', 'view', 'committed')),
    parent         TEXT,
    labels         TEXT NOT NULL,
    created_ns     INTEGER NOT NULL,
    updated_ns     INTEGER NOT NULL,
    view_id        TEXT,
    held           INTEGER NOT NULL DEFAULT 0,
    source         TEXT,
    pending_name   TEXT UNIQUE,
    pending_labels TEXT
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots (parent);
CREATE INDEX IF NOT EXISTS snapshots_target ON snapshots ({_TARGET});
"""
_COLUMNS = (
    "key, id, kind, parent, labels, created_ns, updated_ns, view_id, held, source, "
    "pending_name, pending_labels"
)


class Kind(enum.Enum):
    """A snapshot's kind, spelled as containerd's filters spell it."""

    ACTIVE = "active"
    VIEW = "view"
    COMMITTED = "committed"


@dataclass(frozen=True)
class Snapshot:
    """One row of the metastore.

    Attributes:
        key: containerd's key (the name, once committed).
        id: the layer folder in the data root.
        kind: active, view or committed.
        parent: the parent's key (a committed snapshot), or ``None``.
        labels: containerd's labels.
        created_ns: creation time, nanoseconds since the epoch.
        updated_ns: last change, nanoseconds since the epoch.
        view_id: the layer whose view the snapshot's mounts show (``None``: committed).
        held: the snapshotter holds a Get of ``view_id`` for this snapshot.
        source: the host directory of that view (what Mounts binds).
        pending_name: the name of a Commit under way.
        pending_labels: the labels that Commit gives the committed snapshot.
    """

    key: str
    id: str
    kind: Kind
    parent: str | None
    labels: dict[str, str]
    created_ns: int
    updated_ns: int
    view_id: str | None = None
    held: bool = False
    source: str | None = None
    pending_name: str | None = None
    pending_labels: dict[str, str] = field(default_factory=dict)

    def but(self, **changes: object) -> Snapshot:
        """A copy with ``changes`` applied."""
        return replace(self, **changes)  # type: ignore[arg-type]


def _row_to_snapshot(row: tuple[object, ...]) -> Snapshot:
    (key, layer_id, kind, parent, labels, created, updated, view_id, held, source, pending,
     plabels) = row  # fmt: skip
    return Snapshot(
        key=str(key),
        id=str(layer_id),
        kind=Kind(kind),
        parent=None if parent is None else str(parent),
        labels=_labels(labels),
        created_ns=int(created),  # type: ignore[call-overload]
        updated_ns=int(updated),  # type: ignore[call-overload]
        view_id=None if view_id is None else str(view_id),
        held=bool(held),
        source=None if source is None else str(source),
        pending_name=None if pending is None else str(pending),
        pending_labels=_labels(plabels) if plabels is not None else {},
    )


def _labels(text: object) -> dict[str, str]:
    try:
        value = json.loads(str(text))
    except ValueError as exc:
        raise CorruptImage(f"snapshot metastore: unreadable labels: {exc}") from exc
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise CorruptImage("snapshot metastore: labels are not a map of strings")
    return value


def _dump(labels: dict[str, str]) -> str:
    return json.dumps(labels, sort_keys=True, ensure_ascii=False)


class Transaction:
    """Reads and writes inside one transaction of :meth:`MetaStore.transaction`."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection

    def get(self, key: str) -> Snapshot | None:
        """The snapshot with ``key``, or ``None``."""
        row = self._db.execute(f"SELECT {_COLUMNS} FROM snapshots WHERE key = ?", (key,)).fetchone()
        return None if row is None else _row_to_snapshot(row)

    def require(self, key: str) -> Snapshot:
        """The snapshot with ``key``.

        Raises:
            NotFound: there is none.
        """
        found = self.get(key)
        if found is None:
            raise NotFound(f"snapshot {key}: does not exist", subject=key)
        return found

    def name_taken(self, name: str) -> bool:
        """Whether ``name`` is a snapshot's key or the name of a Commit under way."""
        row = self._db.execute(
            "SELECT 1 FROM snapshots WHERE key = ? OR pending_name = ?", (name, name)
        ).fetchone()
        return row is not None

    def children(self, key: str) -> list[str]:
        """Keys of the snapshots whose parent is ``key``."""
        rows = self._db.execute("SELECT key FROM snapshots WHERE parent = ?", (key,))
        return [str(r[0]) for r in rows]

    def committed_target(self, target: str, parent: str | None, prefix: str) -> Snapshot | None:
        """A committed snapshot over ``parent`` whose :data:`TARGET_LABEL` is ``target`` and
        whose key starts with ``prefix`` (an index lookup), or ``None``."""
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM snapshots WHERE {_TARGET} = ? AND kind = 'committed' "
            "AND parent IS ? AND substr(key, 1, ?) = ? ORDER BY key LIMIT 1",
            (target, parent, len(prefix), prefix),
        ).fetchone()
        return None if row is None else _row_to_snapshot(row)

    def all(self) -> list[Snapshot]:
        """Every snapshot, by key."""
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM snapshots ORDER BY key")
        return [_row_to_snapshot(r) for r in rows]

    def insert(self, snapshot: Snapshot) -> None:
        """Add ``snapshot``.

        Raises:
            AlreadyExists: its key (or folder) is taken.
        """
        if self.name_taken(snapshot.key):
            raise AlreadyExists(f"snapshot {snapshot.key}: already exists", subject=snapshot.key)
        try:
            self._db.execute(
                f"INSERT INTO snapshots ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                self._values(snapshot),
            )
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(
                f"snapshot {snapshot.key}: already exists ({exc})", subject=snapshot.key
            ) from exc

    def replace(self, old_key: str, snapshot: Snapshot) -> None:
        """Overwrite the row of ``old_key`` with ``snapshot`` (whose key may differ).

        Raises:
            NotFound: there is no ``old_key``.
        """
        cursor = self._db.execute(
            "UPDATE snapshots SET key = ?, id = ?, kind = ?, parent = ?, labels = ?, "
            "created_ns = ?, updated_ns = ?, view_id = ?, held = ?, source = ?, pending_name = ?, "
            "pending_labels = ? WHERE key = ?",
            (*self._values(snapshot), old_key),
        )
        if cursor.rowcount != 1:
            raise NotFound(f"snapshot {old_key}: does not exist", subject=old_key)

    def delete(self, key: str) -> None:
        """Drop the row of ``key`` (a missing one is fine)."""
        self._db.execute("DELETE FROM snapshots WHERE key = ?", (key,))

    @staticmethod
    def _values(s: Snapshot) -> tuple[object, ...]:
        return (
            s.key, s.id, s.kind.value, s.parent, _dump(s.labels), s.created_ns, s.updated_ns,
            s.view_id, int(s.held), s.source, s.pending_name,
            _dump(s.pending_labels) if s.pending_name is not None else None,
        )  # fmt: skip


class MetaStore:
    """The SQLite database at ``path`` (created with its schema when missing).

    One connection shared by the server's threads, used under a lock: SQLite serialises
    writers anyway, and the snapshotter's calls are short.

    Raises:
        CorruptImage: the file is not a database of this schema.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version not in (0, _SCHEMA_VERSION):
                raise CorruptImage(
                    f"{path}: snapshot metastore schema {version}, this lcow knows "
                    f"{_SCHEMA_VERSION}",
                    subject=str(path),
                )
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise CorruptImage(
                f"{path}: not a snapshot metastore: {exc}", subject=str(path)
            ) from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
