"""QEMU's storage daemon, which turns each mounted ``sandbox.vhdx`` into a raw file (issue 5).

The kernel cannot read VHDX, so a writable sandbox is exported by ``qemu-storage-daemon`` as a
raw image over FUSE and a loop device goes on that file. One daemon serves a whole data root:
exports are added and removed through its QMP socket (a few milliseconds each, where a daemon
per disk would cost a process start and ~20 MB each — a 128-layer chain of sandboxes is
graphtest's DeepLayerRead). It is started by the first writable attach and stopped when the
last export goes (in long-running front ends some time later: ``HostBackend.linger``). It
runs detached, so it outlives the process that started it; its pid file and socket live in the
backend's state folder for the next process to find.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from lcow._util.unixsock import SUN_PATH_MAX
from lcow.backends.host.qmp import QmpSession
from lcow.backends.qemuopts import option_value
from lcow.errors import FailedPrecondition, NotSupported

__all__ = ["BINARY", "StorageDaemon"]

log = logging.getLogger(__name__)

BINARY = "qemu-storage-daemon"
_T = TypeVar("_T")


class StorageDaemon:
    """The data root's ``qemu-storage-daemon``: control socket ``qsd.sock``, ``qsd.pid``.

    Args:
        home: the backend's state folder.
        timeout: seconds to wait for the daemon to start, answer or stop.
    """

    def __init__(self, home: Path, timeout: float = 30.0) -> None:
        self.socket = home / "qsd.sock"
        self.pidfile = home / "qsd.pid"
        self.timeout = timeout

    # -- process -------------------------------------------------------------------------

    def pid(self) -> int | None:
        """The daemon's pid if it is running (checked against its command line)."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        if BINARY.encode() not in cmdline or os.fsencode(self.pidfile) not in cmdline:
            return None  # the pid was reused
        return pid

    def start(self) -> None:
        """Start the daemon unless it runs already."""
        if self.pid() is not None:
            return
        binary = shutil.which(BINARY)
        if binary is None:
            raise NotSupported(
                f"driver not supported: {BINARY} is missing (Debian: qemu-system-common)",
                subject=BINARY,
            )
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        done = subprocess.run(
            [
                binary,
                "--chardev",
                f"socket,id=qmp,path={self._socket_option()},server=on,wait=off",
                "--monitor",
                "chardev=qmp",
                "--daemonize",
                "--pidfile",
                str(self.pidfile),
            ],
            capture_output=True,
            text=True,
            timeout=self.timeout,
            check=False,
            cwd=self.socket.parent,
        )
        if done.returncode != 0:
            raise FailedPrecondition(
                f"{BINARY} failed to start: {done.stderr.strip()}", subject=BINARY
            )

    def _socket_option(self) -> str:
        """The socket's path as a value in QEMU's option syntax (a comma is doubled).

        Under a data root too deep for ``sockaddr_un`` the path is relative to the state
        folder, the daemon's working directory while it binds (it changes to ``/`` only
        after); lcow connects through the folder's descriptor (:func:`connect_unix`)."""
        if len(os.fsencode(self.socket)) < SUN_PATH_MAX:
            return option_value(self.socket)
        return option_value(self.socket.name)

    def stop(self) -> None:
        """Stop the daemon (SIGTERM: it flushes and closes its images); kill it if it does not
        exit within the timeout."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, self.timeout):
            log.warning("%s (pid %d) did not quit; killing it", BINARY, pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, self.timeout)
        for path in (self.pidfile, self.socket):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # -- exports ---------------------------------------------------------------------------

    def export(self, disks: list[tuple[str, Path, Path]]) -> None:
        """Export each ``(name, image, mountpoint)``: the VHDX ``image`` read-write as the raw
        file ``mountpoint`` (which must exist); ``name`` names the node and the export. One
        session for all; on failure, the ones this call added are removed again."""

        def add(qmp: QmpSession) -> None:
            done: list[str] = []
            try:
                for name, image, mountpoint in disks:
                    qmp.execute(
                        "blockdev-add",
                        {
                            "driver": "vhdx",
                            "node-name": name,
                            "file": {"driver": "file", "filename": str(image)},
                        },
                    )
                    try:
                        qmp.execute(
                            "block-export-add",
                            {
                                "type": "fuse",
                                "id": name,
                                "node-name": name,
                                "mountpoint": str(mountpoint),
                                "writable": True,
                            },
                        )
                    except FailedPrecondition:
                        qmp.execute("blockdev-del", {"node-name": name})
                        raise
                    done.append(name)
            except FailedPrecondition:
                _remove(qmp, done)
                raise

        self._run(add, subject=", ".join(str(image) for _, image, _ in disks))

    def unexport(self, names: list[str]) -> None:
        """Remove exports and their nodes, waiting for QEMU to finish their I/O; unknown names
        are fine."""
        self._run(lambda qmp: _remove(qmp, names), subject=", ".join(names))

    def exports(self) -> list[str]:
        """Names of the current exports (none when the daemon is not running)."""
        if self.pid() is None:
            return []

        def query(qmp: QmpSession) -> list[str]:
            return [str(e["id"]) for e in _list(qmp.execute("query-block-exports"))]

        return self._run(query)

    # -- QMP -------------------------------------------------------------------------------

    def _run(self, work: Callable[[QmpSession], _T], subject: str = "") -> _T:
        """Connect, run ``work``, disconnect (a blocking session: any thread may call)."""
        try:
            with QmpSession(self.socket, self.timeout) as qmp:
                return work(qmp)
        except (FailedPrecondition, OSError, ValueError) as exc:
            raise FailedPrecondition(
                f"{BINARY}: {subject + ': ' if subject else ''}{exc or type(exc).__name__}",
                subject=subject or BINARY,
            ) from exc


def _remove(qmp: QmpSession, names: list[str]) -> None:
    """Delete the exports called ``names`` (waiting for each to finish) and their nodes."""
    current = {str(e["id"]) for e in _list(qmp.execute("query-block-exports"))}
    pending = {n for n in names if n in current}
    for name in sorted(pending):
        qmp.execute("block-export-del", {"id": name})
    while pending:
        event = qmp.wait_event(lambda e: e.get("event") == "BLOCK_EXPORT_DELETED")
        data = event.get("data")
        if isinstance(data, dict):
            pending.discard(str(data.get("id")))
    nodes = _list(qmp.execute("query-named-block-nodes", {"flat": True}))
    present = {str(n.get("node-name")) for n in nodes}
    for name in names:
        if name in present:
            qmp.execute("blockdev-del", {"node-name": name})


def _list(value: object) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie has exited (a daemon's reaper may be slow to notice)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] != b"Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` has exited (reaping it if it is our child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not _alive(pid):
            return True
        time.sleep(0.005)
    return False
