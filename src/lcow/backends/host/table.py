"""The host backend's mount table: what is mounted, for whom, and how often (SPEC §4.7 counts).

Mounts outlive the process that made them (a CLI ``get`` is released by another process's
``put``; a restarted plugin must keep serving the containers dockerd runs), so the counts live
in a file, ``state.json`` in the backend's state folder, changed only under an exclusive
``flock`` of ``lock`` next to it. Each change is one transaction: load, change, save (temp +
rename). No fsync: mounts do not survive a reboot, and the table records its boot id, so after
one it starts empty.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lcow._util.atomic import atomic_output
from lcow.errors import CorruptImage
from lcow.storage.dataroot import SANDBOX_RAW

__all__ = ["DiskEntry", "MountState", "MountTable", "ViewEntry"]

_VERSION = 1
log = logging.getLogger(__name__)


@dataclass
class DiskEntry:
    """One attached disk: a layer file mounted at ``d/<slot>`` through loop ``device``."""

    slot: str
    image: str  # the layer.vhd or sandbox path
    writable: bool
    device: str
    lost_found: bool  # its lost+found is layer content (see backend's mask)
    users: int = 1  # views using it

    @property
    def exported(self) -> bool:
        """Whether the storage daemon exports it: a VHDX sandbox (a raw one, like a layer,
        is its loop device's own backing file)."""
        return self.writable and os.path.basename(self.image) != SANDBOX_RAW


@dataclass
class ViewEntry:
    """One id's view: ``path`` (relative to the state folder) is what Get returns."""

    path: str
    overlay: bool  # ``path`` is an overlay of its own at ``v/<id>``
    disks: list[str]  # disk keys, own content first
    count: int = 1  # outstanding Gets


@dataclass
class MountState:
    """The whole table."""

    boot_id: str
    disks: dict[str, DiskEntry] = field(default_factory=dict)
    views: dict[str, ViewEntry] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """Compact JSON."""
        return json.dumps({"version": _VERSION, **asdict(self)}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, text: bytes) -> MountState:
        """Parse :meth:`to_json`'s output.

        Raises:
            CorruptImage: the file is not a mount table of this version.
        """
        try:
            data: dict[str, Any] = json.loads(text)
            if data.get("version") != _VERSION:
                raise ValueError(f"version {data.get('version')!r}")
            return cls(
                boot_id=str(data["boot_id"]),
                disks={k: DiskEntry(**v) for k, v in data["disks"].items()},
                views={k: ViewEntry(**v) for k, v in data["views"].items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise CorruptImage(f"mount table: {exc}", subject="state.json") from exc


def boot_id() -> str:
    """This boot's id (mounts of another boot are gone)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class MountTable:
    """``state.json`` under ``home``, changed in :meth:`transaction`."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.path = home / "state.json"
        self._lock_path = home / "lock"
        self._held = threading.local()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[MountState]:
        """Hold the table exclusively, yield it, save it when the block ends — also when it
        raises, since mounts made before the error are real and must stay recorded.

        Re-entrant within a thread (Diff reads several frozen sandboxes at once): a nested
        transaction shares the outer one's state, which the outer one saves.
        """
        outer: MountState | None = getattr(self._held, "state", None)
        if outer is not None:
            yield outer
            return
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = self._load()
            self._held.state = state
            try:
                yield state
            finally:
                self._held.state = None
                self._save(state)
        finally:
            os.close(fd)  # releases the lock

    def peek(self) -> MountState:
        """The table as it is now, without holding it (for queries)."""
        return self._load()

    def _load(self) -> MountState:
        current = boot_id()
        try:
            state = MountState.from_json(self.path.read_bytes())
        except FileNotFoundError:
            return MountState(current)
        except CorruptImage as exc:
            # Start afresh: what is mounted but unrecorded is cleaned as an orphan.
            log.error("host backend: %s is unreadable (%s); starting afresh", self.path, exc)
            return MountState(current)
        if state.boot_id != current:
            return MountState(current)  # rebooted: nothing of it is mounted any more
        return state

    def _save(self, state: MountState) -> None:
        # One fixed temporary name: only the lock holder writes it, so a writer killed between
        # the write and the rename leaves a file the next save overwrites and renames away (a
        # per-pid name stayed behind for good).
        with atomic_output(self.path, temporary=self.home / ".state.json.tmp") as fd:
            os.write(fd, state.to_json())
