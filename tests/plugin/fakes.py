"""Test doubles for the plugin: a backend whose views are plain host directories, and drivers
that fail on cue. They let the protocol tests reach Get's success path and Diff's mid-stream
failure without root or the host backend."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, cast

from lcow.backends.base import ContainerFS, LayerDisk
from lcow.backends.counted import CountedViews
from lcow.errors import CorruptImage
from lcow.graphdriver.driver import Driver
from lcow.plugin.requests import IdMap
from lcow.plugin.state import DriverFactory
from lcow.storage.dataroot import LayerFile

__all__ = [
    "DirBackend",
    "DirView",
    "FailingDiffDriver",
    "RecordingDriver",
    "StuckDriver",
    "recording_factory",
]


class DirView:
    """A view that is an (empty) host directory; only ``path`` is used by the plugin."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        path.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class DirBackend:
    """Host-path views (``host_paths = True``) counted in memory, for Get/Put over the wire."""

    name = "dirtest"
    writable = False
    host_paths = True

    def __init__(self, base: Path) -> None:
        self.base = base
        self.views: CountedViews[DirView] = CountedViews()
        self.opened = 0
        self._lock = threading.Lock()

    def acquire(self, layer_id: str, disks: list[LayerDisk]) -> ContainerFS:
        def open_view() -> DirView:
            with self._lock:
                self.opened += 1
            return DirView(self.base / layer_id)

        return cast(ContainerFS, self.views.acquire(layer_id, open_view))

    def release(self, layer_id: str) -> None:
        view = self.views.release(layer_id)
        if view is not None:
            view.close()

    def release_all(self, layer_id: str) -> None:
        view = self.views.pop(layer_id)
        if view is not None:
            view.close()

    def count(self, layer_id: str) -> int:
        return self.views.count(layer_id)

    def in_use(self, disk: LayerFile) -> bool:
        return False

    @contextlib.contextmanager
    def reading(self, disk: LayerFile) -> Iterator[Path]:
        yield disk.path

    def cleanup(self) -> None:
        for layer_id in self.views.ids():
            self.release_all(layer_id)


class FailingDiffDriver(Driver):
    """Diff writes ``prefix`` bytes, then fails: the failure the daemon must see as an error
    although the answer's status has already gone out."""

    prefix = 3 << 20

    def write_diff(
        self, layer_id: str, parent: str | None, out: BinaryIO | int | Callable[[bytes], object]
    ) -> None:
        assert isinstance(out, int)
        data = memoryview(b"\0" * self.prefix)
        while data:
            data = data[os.write(out, data) :]
        raise CorruptImage(f"lcowdriver: diff: {layer_id}: injected failure")


class RecordingDriver(Driver):
    """Reports how each ApplyDiff ended (its size or its error) on :attr:`applied`, so a test
    can wait for a call whose client has gone."""

    applied: queue.Queue[int | BaseException] = queue.Queue()

    def apply_diff(self, layer_id: str, parent: str | None, diff: Any) -> int:
        try:
            size = super().apply_diff(layer_id, parent, diff)
        except BaseException as exc:
            self.applied.put(exc)
            raise
        self.applied.put(size)
        return size


class StuckDriver(Driver):
    """Exists never returns until :attr:`release` is set: a hung call at shutdown."""

    release = threading.Event()
    entered = threading.Event()

    def exists(self, layer_id: str) -> bool:
        self.entered.set()
        self.release.wait()
        return super().exists(layer_id)


def recording_factory(
    created: list[Driver], backend_base: Path | None = None, kind: type[Driver] = Driver
) -> DriverFactory:
    """A driver factory that keeps what it built (to inspect counts) and may give each driver
    a :class:`DirBackend` under ``backend_base``."""

    def factory(
        home: str,
        options: Sequence[str],
        uid_maps: tuple[IdMap, ...] | None,
        gid_maps: tuple[IdMap, ...] | None,
    ) -> Driver:
        backend = DirBackend(backend_base) if backend_base is not None else None
        driver = kind(home, list(options), uid_maps, gid_maps, backend=backend)  # type: ignore[arg-type]
        created.append(driver)
        return driver

    return factory
