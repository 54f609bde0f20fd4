"""Fault injection for the plugin's tests (fakes, named as such): drivers that record, fail
mid-stream or hang on cue, to reach Diff's mid-stream failure and shutdown with a stuck call."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import BinaryIO

from lcow.convert.input import TarInput
from lcow.errors import CorruptImage
from lcow.graphdriver.driver import Driver
from lcow.plugin.requests import IdMap
from lcow.plugin.state import DriverFactory

__all__ = [
    "FailingDiffDriver",
    "RecordingDriver",
    "StuckDriver",
    "recording_factory",
]


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

    def apply_diff(
        self,
        layer_id: str,
        parent: str | None,
        diff: TarInput,
        *,
        verify: Callable[[], Mapping[str, object]] | None = None,
    ) -> int:
        try:
            size = super().apply_diff(layer_id, parent, diff, verify=verify)
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


def recording_factory(created: list[Driver], kind: type[Driver] = Driver) -> DriverFactory:
    """A driver factory that keeps what it built (to inspect counts)."""

    def factory(
        home: str,
        options: Sequence[str],
        uid_maps: tuple[IdMap, ...] | None,
        gid_maps: tuple[IdMap, ...] | None,
    ) -> Driver:
        driver = kind(home, list(options), uid_maps, gid_maps)
        created.append(driver)
        return driver

    return factory
