"""The content-store fast path under faults a real containerd does not make on demand.

The snapshotter, data root, converter and backend are real (host backend); only the content
store is a fake, :class:`FaultyContentStore`, which serves blobs from memory and can pretend a
fetch is under way, stall, or hold a read in the middle. Real pulls through containerd are in
``tests/containerd/test_fastpath.py``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lcow.errors import AlreadyExists
from lcow.graphdriver.driver import Driver
from lcow.snapshots.content import ContentStore, Ingest
from lcow.snapshots.fastpath import (
    FAST_PATH_LABEL,
    LAYER_DIGEST_LABEL,
    TARGET_LABEL,
    FastPathSnapshotter,
)
from lcow.snapshots.metastore import Kind
from lcow.storage.dataroot import LAYER_VHD, DataRoot
from tests.helpers import assert_e2fsck_clean, host_leftovers, requires

pytestmark = requires("host", "mke2fs", "e2fsck")

NS = "fault"


class FaultyContentStore(ContentStore):
    """A fake content store for fault injection: blobs in memory, scripted ingests, and a read
    that can stop after its first chunk until :attr:`release` is set."""

    def __init__(self) -> None:
        super().__init__(Path("/nonexistent/containerd.sock"))
        self.blobs: dict[str, bytes] = {}
        self.ingests: dict[str, Ingest] = {}
        self.appear_after: dict[str, int] = {}  # blob committed after this many size() calls
        self.calls: dict[str, int] = {}
        self.hold = False
        self.reading = threading.Event()
        self.release = threading.Event()

    def size(self, namespace: str, digest: str) -> int | None:
        self.calls[digest] = self.calls.get(digest, 0) + 1
        if self.calls[digest] <= self.appear_after.get(digest, 0):
            return None
        blob = self.blobs.get(digest)
        return None if blob is None else len(blob)

    def ingest(self, namespace: str, digest: str) -> Ingest | None:
        found = self.ingests.get(digest)
        if found is not None and digest in self.appear_after:  # moving until it is committed
            found = Ingest(found.ref, self.calls.get(digest, 0), found.total, time.time_ns())
        return found

    def read(self, namespace: str, digest: str) -> Iterator[bytes]:
        blob = self.blobs[digest]
        yield blob[:100]
        if self.hold:
            self.reading.set()
            assert self.release.wait(60)
        yield blob[100:]


def _layer() -> tuple[bytes, str]:
    """A gzip layer blob with a few files; and its diff ID."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("etc/os", b"fault\n"), ("srv/data", b"x" * 5000)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_600_000_000
            tf.addfile(info, io.BytesIO(data))
    tar = raw.getvalue()
    return gzip.compress(tar, mtime=0), "sha256:" + hashlib.sha256(tar).hexdigest()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def content() -> FaultyContentStore:
    return FaultyContentStore()


@pytest.fixture
def fast(tmp_path: Path, content: FaultyContentStore) -> Iterator[FastPathSnapshotter]:
    root = tmp_path / "root"
    sn = FastPathSnapshotter(Driver(root, ["lcow.backend=host"]), content, stall=0.3)
    yield sn
    sn.close()
    Driver(root, ["lcow.backend=host"]).cleanup()
    assert host_leftovers(tmp_path) == []


def _labels(target: str, blob: str) -> dict[str, str]:
    return {TARGET_LABEL: target, LAYER_DIGEST_LABEL: blob}


def _folders(sn: FastPathSnapshotter) -> list[str]:
    return list(sn.driver.root.layer_ids())


def test_a_blob_in_the_store_is_converted_and_committed(
    fast: FastPathSnapshotter, content: FaultyContentStore
) -> None:
    blob, diff_id = _layer()
    content.blobs[_digest(blob)] = blob
    with pytest.raises(AlreadyExists):
        fast.prepare(f"{NS}/1/extract {diff_id}", None, _labels(diff_id, _digest(blob)))
    (snap,) = fast.walk()
    assert (snap.key, snap.kind, snap.parent) == (f"{NS}/lcow-fastpath/{diff_id}", Kind.COMMITTED,
                                                  None)  # fmt: skip
    assert snap.labels[FAST_PATH_LABEL] == _digest(blob)
    assert_e2fsck_clean(fast.driver.root.layer_dir(snap.id) / LAYER_VHD)
    assert DataRoot(fast.driver.root.root).read_meta(snap.id)["diff_id"] == diff_id


def test_a_fetch_under_way_is_waited_for(
    fast: FastPathSnapshotter, content: FaultyContentStore
) -> None:
    blob, diff_id = _layer()
    digest = _digest(blob)
    content.blobs[digest] = blob
    content.appear_after[digest] = 5  # committed by the "fetch" after a few polls
    content.ingests[digest] = Ingest(f"layer-{digest}", 0, len(blob), time.time_ns())
    with pytest.raises(AlreadyExists):
        fast.prepare(f"{NS}/1/x", None, _labels(diff_id, digest))
    assert [s.kind for s in fast.walk()] == [Kind.COMMITTED]


def test_a_stalled_fetch_and_a_blob_nobody_fetches_take_the_ordinary_path(
    fast: FastPathSnapshotter, content: FaultyContentStore
) -> None:
    blob, diff_id = _layer()
    digest = _digest(blob)
    content.ingests[digest] = Ingest(f"layer-{digest}", 10, len(blob), 0)  # never moves
    started = time.monotonic()
    (mount,) = fast.prepare(f"{NS}/1/stalled", None, _labels(diff_id, digest))
    assert 0.3 <= time.monotonic() - started < 10  # gave up after the stall, not MAX_WAIT
    assert mount.type == "bind"
    del content.ingests[digest]
    started = time.monotonic()
    fast.prepare(f"{NS}/2/absent", None, _labels(diff_id, digest))
    assert time.monotonic() - started < 5  # no waiting for a blob nobody fetches
    assert sorted(s.kind.value for s in fast.walk()) == ["active", "active"]
    for snap in fast.walk():
        fast.remove(snap.key)
    assert _folders(fast) == []


def test_cleanup_leaves_a_folder_being_converted(
    fast: FastPathSnapshotter, content: FaultyContentStore
) -> None:
    blob, diff_id = _layer()
    digest = _digest(blob)
    content.blobs[digest] = blob
    content.hold = True
    outcome: list[BaseException | None] = []

    def prepare() -> None:
        try:
            fast.prepare(f"{NS}/1/x", None, _labels(diff_id, digest))
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=prepare)
    worker.start()
    try:
        assert content.reading.wait(30)
        (converting,) = _folders(fast)
        cleaner = threading.Thread(target=fast.cleanup)
        cleaner.start()
        cleaner.join(10)
        assert not cleaner.is_alive(), "Cleanup waited for the conversion"
        assert _folders(fast) == [converting]
    finally:
        content.release.set()
        worker.join(60)
    assert len(outcome) == 1 and isinstance(outcome[0], AlreadyExists)
    (snap,) = fast.walk()
    assert snap.id == converting and _folders(fast) == [converting]
    assert_e2fsck_clean(fast.driver.root.layer_dir(converting) / LAYER_VHD)


_CRASHING = """
import sys, threading
from pathlib import Path
from lcow.graphdriver.driver import Driver
from lcow.snapshots.fastpath import FastPathSnapshotter
from tests.snapshots.test_fastpath_faults import FaultyContentStore, _digest, _labels, _layer

blob, diff_id = _layer()
content = FaultyContentStore()
content.blobs[_digest(blob)] = blob
content.hold = True
sn = FastPathSnapshotter(Driver(Path(sys.argv[1]), ["lcow.backend=host"]), content)
threading.Thread(target=lambda: (content.reading.wait(), print("converting", flush=True)),
                 daemon=True).start()
sn.prepare("fault/1/x", None, _labels(diff_id, _digest(blob)))
"""


def test_a_crash_mid_conversion_leaves_a_folder_that_cleanup_removes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    proc = subprocess.Popen([sys.executable, "-c", _CRASHING, str(root)], stdout=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[2], text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "converting\n"
        (orphan,) = Driver(root, ["lcow.backend=host"]).root.layer_ids()
    finally:
        proc.kill()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
    sn = FastPathSnapshotter(Driver(root, ["lcow.backend=host"]), FaultyContentStore())
    try:
        assert sn.walk() == []  # no row: the folder was never visible as a snapshot
        assert sn.cleanup() == [orphan]
        assert list(sn.driver.root.layer_ids()) == []
    finally:
        sn.close()
        Driver(root, ["lcow.backend=host"]).cleanup()
    assert host_leftovers(tmp_path) == []


def test_a_key_taken_is_refused_before_any_conversion(
    fast: FastPathSnapshotter, content: FaultyContentStore
) -> None:
    blob, diff_id = _layer()
    content.blobs[_digest(blob)] = blob
    fast.prepare(f"{NS}/1/x", None)
    with pytest.raises(AlreadyExists, match=f"snapshot {NS}/1/x: already exists"):
        fast.prepare(f"{NS}/1/x", None, _labels(diff_id, _digest(blob)))
    assert [s.kind for s in fast.walk()] == [Kind.ACTIVE]  # nothing converted meanwhile
    fast.remove(f"{NS}/1/x")
