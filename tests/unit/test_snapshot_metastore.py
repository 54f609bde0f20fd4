"""The snapshotter's SQLite metastore, its filter parser and its bounds on client input."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from lcow.errors import AlreadyExists, CorruptImage, InvalidArgument, NotFound
from lcow.snapshots import metastore
from lcow.snapshots.filters import matches, parse_filters, snapshot_fields
from lcow.snapshots.labels import MAX_LABEL_BYTES, MAX_LABELS, check_key, check_labels
from lcow.snapshots.metastore import TARGET_LABEL, Kind, MetaStore, Snapshot


def _snap(key: str, layer: str, kind: Kind = Kind.ACTIVE, parent: str | None = None) -> Snapshot:
    return Snapshot(key, layer, kind, parent, {"a": "1"}, 10, 20, view_id=layer, held=True)


@pytest.fixture
def store(tmp_path: Path) -> MetaStore:
    return MetaStore(tmp_path / "meta.db")


def test_rows_round_trip_and_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    first = MetaStore(path)
    snap = _snap("default/1/a", "l1").but(
        labels={"k": "v\u00e9", "containerd.io/snapshot.ref": "sha256:x"}, source="/v/l1"
    )
    with first.transaction() as tx:
        tx.insert(snap)
    first.close()
    again = MetaStore(path)
    with again.transaction() as tx:
        assert tx.get("default/1/a") == snap
        assert tx.get("default/1/b") is None
        assert [s.key for s in tx.all()] == ["default/1/a"]


def test_a_failed_transaction_changes_nothing(store: MetaStore) -> None:
    with store.transaction() as tx:
        tx.insert(_snap("k1", "l1"))
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.delete("k1")
        tx.insert(_snap("k2", "l2"))
        raise RuntimeError("boom")
    with store.transaction() as tx:
        assert [s.key for s in tx.all()] == ["k1"]


def test_keys_folders_and_pending_names_are_unique(store: MetaStore) -> None:
    with store.transaction() as tx:
        tx.insert(_snap("k1", "l1"))
        tx.replace("k1", tx.require("k1").but(pending_name="name1", pending_labels={"x": "y"}))
    with pytest.raises(AlreadyExists), store.transaction() as tx:
        tx.insert(_snap("k1", "l9"))
    with pytest.raises(AlreadyExists), store.transaction() as tx:
        tx.insert(_snap("k2", "l1"))  # another key on the same folder
    with pytest.raises(AlreadyExists), store.transaction() as tx:
        tx.insert(_snap("name1", "l3"))  # a name a Commit has reserved
    with store.transaction() as tx:
        assert tx.name_taken("name1") and tx.name_taken("k1") and not tx.name_taken("k2")
        assert tx.require("k1").pending_labels == {"x": "y"}


def test_children_replace_and_missing_rows(store: MetaStore) -> None:
    with store.transaction() as tx:
        tx.insert(_snap("base", "l1", Kind.COMMITTED))
        tx.insert(_snap("c1", "l2", parent="base"))
        tx.insert(_snap("c2", "l3", Kind.VIEW, parent="base"))
        assert sorted(tx.children("base")) == ["c1", "c2"]
        assert tx.children("c1") == []
        tx.replace("c1", tx.require("c1").but(key="renamed", kind=Kind.COMMITTED))
        assert tx.get("c1") is None and tx.require("renamed").kind is Kind.COMMITTED
        with pytest.raises(NotFound, match="nope"):
            tx.require("nope")
        with pytest.raises(NotFound):
            tx.replace("nope", _snap("nope", "l9"))


def test_threads_share_the_store(store: MetaStore) -> None:
    def add(n: int) -> None:
        for i in range(20):
            with store.transaction() as tx:
                tx.insert(_snap(f"t{n}/{i}", f"l{n}x{i}"))

    threads = [threading.Thread(target=add, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with store.transaction() as tx:
        assert len(tx.all()) == 80


def test_not_a_database_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "meta.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CorruptImage, match=r"meta\.db"):
        MetaStore(bad)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    MetaStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=99")
    with pytest.raises(CorruptImage, match="schema 99"):
        MetaStore(path)


# -- filters -------------------------------------------------------------------------------


def _lookup(
    labels: dict[str, str] | None = None, parent: str | None = "p", kind: str = "active"
) -> Callable[[tuple[str, ...]], str | None]:
    return snapshot_fields("default/1/x", parent, kind, labels or {})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name==default/1/x", True),
        ("name==other", False),
        ("name!=other", True),
        ("kind==active", True),
        ("kind==committed", False),
        ("parent==p", True),
        ("parent", True),
        ('labels."containerd.io/gc.root"', True),
        ('labels."containerd.io/gc.root"==yes', True),
        ('labels."containerd.io/gc.root"=="yes"', True),
        ('labels."containerd.io/gc.root"==no', False),
        ("labels.plain.dotted==1", True),
        ("labels.missing", False),
        ('kind==active, labels."containerd.io/gc.root"', True),
        ("kind==active,name==other", False),
        ("name==default/1/x)", False),  # a value runs to the next comma or space
    ],
)
def test_filters_match_as_containerd_s_adaptor(text: str, expected: bool) -> None:
    labels = {"containerd.io/gc.root": "yes", "plain.dotted": "1"}
    assert matches(parse_filters([text]), _lookup(labels)) is expected


def test_filters_or_across_strings_and_empty_matches_all() -> None:
    assert matches(parse_filters([]), _lookup())
    assert matches(parse_filters(["name==a", "kind==active"]), _lookup())
    assert not matches(parse_filters(["name==a", "kind==view"]), _lookup())
    # containerd's adaptors answer parent always present ("" without one).
    assert matches(parse_filters(["parent"]), _lookup(parent=None))
    assert matches(parse_filters(['name=="default\\x2f1/x"']), _lookup())


def test_a_base_layer_s_parent_is_present_and_empty_as_containerd_answers() -> None:
    # containerd's snapshot adaptors answer (info.Parent, true); its metadata looks up what a
    # remote snapshotter committed with `labels."containerd.io/snapshot.ref"==T,parent==""`.
    base = _lookup(labels={"containerd.io/snapshot.ref": "sha256:1"}, parent=None)
    target = 'labels."containerd.io/snapshot.ref"==sha256:1,parent==""'
    assert matches(parse_filters([target]), base)
    assert matches(parse_filters(["parent"]), base)
    assert not matches(parse_filters(['parent==""']), _lookup(parent="p"))


@pytest.mark.parametrize(
    "text",
    ["name~=x.*", "size==1", "labels", "name.sub==1", "name==", "name==a b", ",", "name==a,",
     '"unterminated', 'name=="bad\\q"', "1abc==x", "kind=x"],
)  # fmt: skip
def test_unsupported_filters_are_invalid_arguments(text: str) -> None:
    with pytest.raises(InvalidArgument, match="filter"):
        parse_filters([text])


# -- bounds --------------------------------------------------------------------------------


def test_keys_and_labels_are_bounded() -> None:
    assert check_key("default/1/x") == "default/1/x"
    for bad in ("", "a\0b", "k" * 5000):
        with pytest.raises(InvalidArgument):
            check_key(bad)
    assert check_labels({"a": "b"}, "k") == {"a": "b"}
    assert check_labels({"a": "b", "unset": ""}, "k") == {"a": "b"}  # as containerd stores them
    hostile = [
        {f"l{i}": "" for i in range(MAX_LABELS + 1)},
        {"big": "v" * MAX_LABEL_BYTES},
        {"": "empty key"},
        {"nul": "a\0b"},
        {f"l{i}": "v" * 4000 for i in range(20)},  # each fits, the total does not
    ]
    for labels in hostile:
        with pytest.raises(InvalidArgument, match="snapshot k"):
            check_labels(labels, "k")


def test_a_committed_target_is_found_by_an_index_lookup(store: MetaStore) -> None:
    target, other = "sha256:" + "a" * 64, "sha256:" + "b" * 64

    def row(key: str, layer: str, kind: Kind, parent: str | None, chain: str) -> Snapshot:
        return Snapshot(key, layer, kind, parent, {TARGET_LABEL: chain, "x": "y"}, 1, 2)

    with store.transaction() as tx:
        tx.insert(row("ns/1/base", "l0", Kind.COMMITTED, None, other))
        tx.insert(row("ns/lcow-fastpath/t", "l1", Kind.COMMITTED, "ns/1/base", target))
        tx.insert(row("ns/2/active", "l2", Kind.ACTIVE, "ns/1/base", target))
        tx.insert(row("ns2/3/t", "l3", Kind.COMMITTED, "ns/1/base", target))
        tx.insert(row("ns/4/top", "l4", Kind.COMMITTED, None, target))
        for n in range(200):  # unrelated rows the lookup must not read
            tx.insert(row(f"ns/9/{n}", f"m{n}", Kind.COMMITTED, None, f"sha256:{n:064x}"))
        found = tx.committed_target(target, "ns/1/base", "ns/")
        assert found is not None and found.key == "ns/lcow-fastpath/t"
        top = tx.committed_target(target, None, "ns/")
        assert top is not None and top.key == "ns/4/top"  # a parent of None is matched too
        assert tx.committed_target(target, "ns/1/base", "ns2/") == tx.require("ns2/3/t")
        assert tx.committed_target(target, "ns/4/top", "ns/") is None  # another parent
        assert tx.committed_target(other, "ns/1/base", "ns/") is None  # another target
        assert tx.committed_target(target, "ns/1/base", "n/") is None  # another namespace
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)  # the lookup's own SQL, values bound
        tx.committed_target(target, "ns/1/base", "ns/")
        store._db.set_trace_callback(None)
    (lookup,) = statements
    plan = store._db.execute("EXPLAIN QUERY PLAN " + lookup).fetchall()
    assert any("USING INDEX snapshots_target" in str(step[-1]) for step in plan), plan


def test_an_existing_database_gains_the_target_index(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    old = sqlite3.connect(path)
    old.executescript(metastore._SCHEMA.split("CREATE INDEX IF NOT EXISTS snapshots_target")[0])
    old.execute("PRAGMA user_version=1")
    old.close()
    MetaStore(path).close()
    names = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert "snapshots_target" in names
