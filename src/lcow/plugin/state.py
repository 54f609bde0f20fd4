"""The plugin's driver and what keeps it across restarts (SPEC §9.7).

dockerd sends ``GraphDriver.Init`` once, when it starts; a plugin restarted under a running
daemon gets no new Init. So Init's arguments (Home, options, ID maps) are written to
``<state root>/state.json`` and a starting plugin opens its driver from them before the first
request. The state root is locked for the life of the process, so two plugins never share it.

Views dockerd holds (a Get without its Put: a running container's root) belong to dockerd, not
to the plugin process. A backend whose views outlive the process (``persistent``: the host
backend keeps mounts, the storage daemon and the counts in the data root) is therefore never
cleaned up when this process lets a driver go — at SIGTERM or when a new Init replaces it — and
the next driver over the same data root adopts what is mounted. Only dockerd's own
``GraphDriver.Cleanup`` (sent at its shutdown, after the Puts) or an administrator's
``lcow --root <Home> --backend host cleanup`` releases everything.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lcow._util.atomic import atomic_output
from lcow.errors import Busy, CorruptImage, FailedPrecondition, InvalidArgument, LcowError
from lcow.graphdriver.driver import SERVER_LINGER, Driver
from lcow.plugin.requests import BadRequest, IdMap, InitRequest, decode_request

__all__ = [
    "DriverFactory",
    "DriverState",
    "InitRecord",
    "StateStore",
    "let_go",
    "open_default_driver",
]

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
LOCK_FILE = "lock"
_VERSION = 1

#: Builds the driver for Init: ``(home, options, uid_maps, gid_maps) -> Driver``.
DriverFactory = Callable[
    [str, Sequence[str], tuple[IdMap, ...] | None, tuple[IdMap, ...] | None], Driver
]


def open_default_driver(
    home: str,
    options: Sequence[str],
    uid_maps: tuple[IdMap, ...] | None,
    gid_maps: tuple[IdMap, ...] | None,
) -> Driver:
    """InitDriver: the driver over ``home`` (ID maps are ignored, as in LCOW); the plugin runs
    long, so shared helpers linger between containers (:meth:`Driver.linger`)."""
    driver = Driver(home, list(options), uid_maps, gid_maps)
    driver.linger(SERVER_LINGER)
    return driver


@dataclass(frozen=True)
class InitRecord:
    """Init's arguments as persisted."""

    home: str
    opts: tuple[str, ...] = ()
    uid_maps: tuple[IdMap, ...] | None = None
    gid_maps: tuple[IdMap, ...] | None = None

    @classmethod
    def from_request(cls, request: InitRequest) -> InitRecord:
        """What an Init request asks for."""
        return cls(request.home, request.opts, request.uid_maps, request.gid_maps)

    def to_json(self) -> dict[str, object]:
        """The ``state.json`` document (Init's own field names)."""

        def maps(value: tuple[IdMap, ...] | None) -> list[dict[str, int]] | None:
            if value is None:
                return None
            return [
                {"container_id": m.container_id, "host_id": m.host_id, "size": m.size}
                for m in value
            ]

        return {
            "Version": _VERSION,
            "Home": self.home,
            "Opts": list(self.opts),
            "UIDMaps": maps(self.uid_maps),
            "GIDMaps": maps(self.gid_maps),
        }

    @classmethod
    def from_json(cls, data: object) -> InitRecord:
        """Parse a ``state.json`` document.

        Raises:
            CorruptImage: not a state document of this version.
        """
        if not isinstance(data, dict) or data.get("Version") != _VERSION:
            raise CorruptImage("plugin state: not a version-1 state document")
        try:  # the same checks as an Init request
            request = decode_request(InitRequest.method, json.dumps(data).encode())
        except BadRequest as exc:
            raise CorruptImage(f"plugin state: {exc}") from None
        assert isinstance(request, InitRequest)
        if not request.home:
            raise CorruptImage("plugin state: no Home")
        return cls.from_request(request)


class StateStore:
    """``state.json`` and the process lock in the plugin's state root.

    Args:
        root: the state root (created 0700 if missing).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.path = self.root / STATE_FILE
        self._lock_fd = -1

    def lock(self) -> None:
        """Take the state root for this process.

        Raises:
            Busy: another live process holds it.
        """
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Busy(
                f"{self.root}: another lcow plugin uses this state directory",
                subject=str(self.root),
            ) from None
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release the state root."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def load(self) -> InitRecord | None:
        """The persisted Init, or ``None`` when there is none.

        Raises:
            CorruptImage: the file is damaged.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurd nesting
            raise CorruptImage(f"{self.path}: not JSON: {exc}", subject=str(self.path)) from None
        return InitRecord.from_json(data)

    def save(self, record: InitRecord) -> None:
        """Write ``state.json`` atomically (0600)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = json.dumps(record.to_json(), indent=2).encode() + b"\n"
        with atomic_output(self.path, fsync=True, mode=0o600) as fd:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]


class DriverState:
    """The current driver (``None`` until Init or a persisted Init), swapped by Init.

    Args:
        store: where Init is persisted; ``None`` keeps nothing.
        factory: builds a driver from Init's arguments.
        defaults: options placed before Init's own (``lcow.backend=host``…); Init's win.
    """

    def __init__(
        self,
        store: StateStore | None,
        factory: DriverFactory = open_default_driver,
        defaults: Sequence[str] = (),
    ) -> None:
        self.store = store
        self.factory = factory
        self.defaults = tuple(defaults)
        self.record: InitRecord | None = None
        self._driver: Driver | None = None
        self._lock = threading.Lock()

    @property
    def driver(self) -> Driver:
        """The driver requests go to.

        Raises:
            FailedPrecondition: Init has not been called and nothing was persisted.
        """
        driver = self._driver
        if driver is None:
            raise FailedPrecondition(
                "lcow plugin: not initialised: GraphDriver.Init has not been called"
            )
        return driver

    @property
    def initialised(self) -> bool:
        """Whether a driver is open."""
        return self._driver is not None

    def restore(self) -> bool:
        """Open the driver from the persisted Init, if any (a restart under a running daemon).

        Returns:
            Whether a driver was opened. A damaged or unusable state is logged and left for
            the next Init to replace.
        """
        if self.store is None:
            return False
        try:
            record = self.store.load()
            if record is None:
                return False
            driver = self._open(record)
        except (LcowError, OSError) as exc:
            log.error("plugin state %s not restored: %s", self.store.path, exc)
            return False
        with self._lock:
            self._driver, self.record = driver, record
        log.info("restored Init from %s: home %s, options %s", self.store.path, record.home,
                 list(record.opts))  # fmt: skip
        return True

    def init(self, request: InitRequest) -> None:
        """GraphDriver.Init: open a driver over ``Home``, replace the previous one (letting it go
        as :func:`let_go` does: views clients hold stay), persist the arguments.

        Raises:
            InvalidArgument: a bad option; NotSupported: the backend is unavailable. The previous
            driver then stays.
        """
        record = InitRecord.from_request(request)
        if not record.home or not os.path.isabs(record.home):
            raise InvalidArgument(
                f"lcow plugin: init: Home must be an absolute path, got '{record.home}'"
            )
        driver = self._open(record)
        with self._lock:
            previous, self._driver, self.record = self._driver, driver, record
        if previous is not None and previous is not driver:
            let_go(previous, "replaced by Init")
        if self.store is not None:
            self.store.save(record)
        log.info("Init: home %s, options %s", record.home, list(record.opts))

    def _open(self, record: InitRecord) -> Driver:
        options = [*self.defaults, *record.opts]
        return self.factory(record.home, options, record.uid_maps, record.gid_maps)

    def shutdown(self) -> None:
        """Let the current driver go at SIGTERM (:func:`let_go`: views clients hold stay for
        the next plugin to adopt); never fails."""
        with self._lock:
            driver = self._driver
        if driver is not None:
            let_go(driver, "shutting down")


def let_go(driver: Driver, reason: str) -> None:
    """This process stops using ``driver``; never fails.

    A persistent backend's views are dockerd's (running containers): they stay mounted, with
    their counts and the storage daemon, for the next driver over the data root to adopt. A
    backend whose views live in this process cannot outlive it: its Cleanup runs.
    """
    if driver.backend.persistent:
        driver.stop_lingering()
        log.info("%s: views of %s stay mounted for their holders (dockerd's Cleanup or "
                 "'lcow --root %s --backend %s cleanup' releases them)", reason, driver.root.root,
                 driver.root.root, driver.backend.name)  # fmt: skip
        return
    try:
        driver.cleanup()
    except Exception as exc:  # letting go: report, do not stop
        log.warning("%s: cleanup of %s failed: %s", reason, driver.root.root, exc)
