"""A data root seen from outside the driver: the disk a layer holds and its identity, and what
must not be left behind (temporaries; mounts, loop devices and processes of the host backend)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "LOOP_GRACE",
    "LoopWatch",
    "attached_loops",
    "disk_key",
    "host_leftovers",
    "layer_kind",
    "loop_leftovers",
    "settled_leftovers",
    "temporaries",
]

LOOP_GRACE = 5.0  # seconds an auto-clearing loop device may take to detach after cleanup


def temporaries(root: Path) -> list[str]:
    """``*.tmp-*`` and ``*.tmp`` names and ``-removing`` folders anywhere below ``root`` (mounts
    skipped)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not os.path.ismount(os.path.join(dirpath, d))]
        for name in [*dirnames, *filenames]:
            if ".tmp-" in name or name.endswith((".tmp", "-removing")):
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def host_leftovers(root: Path) -> list[str]:
    """Mounts at or below ``root``, loop devices on files below it, and live processes whose
    command line names it (the storage daemon, an orphaned mount(8) or mke2fs)."""
    from lcow.backends.host.kernel import mounts_below

    prefix = os.fspath(root.resolve())
    found = [f"mount {point}" for point, _ in mounts_below(Path(prefix))]
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            target = backing.read_text().strip()
            if target.startswith(prefix + "/"):
                found.append(f"loop {backing.parent.parent.name} on {target}")
    needle = os.fsencode(prefix)
    for proc in Path("/proc").glob("[0-9]*"):
        if int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes()
            if needle in argv:
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    shown = argv.replace(b"\0", b" ")[:160].decode(errors="replace")
                    found.append(f"process {proc.name}: {shown}")
    return found


def _diskseq(device: str) -> int | None:
    """The attach sequence number of ``device`` (the kernel bumps it at every attach, so a
    device number reused by someone else is told apart)."""
    try:
        return int(Path("/sys/block", device, "diskseq").read_text())
    except (OSError, ValueError):
        return None


def attached_loops(root: Path) -> dict[str, int]:
    """Loop devices now on files below ``root``: device name (``loop7``) → its diskseq.

    Recorded while they are attached, because a leaked one is unrecognisable later: a
    sandbox's device sits on the storage daemon's FUSE export, and once that is gone the
    kernel shows its backing file as ``/``.
    """
    prefix = os.fsencode(root.resolve()) + b"/"
    found: dict[str, int] = {}
    for device in os.listdir("/sys/block"):  # plain calls: a LoopWatch polls this
        if not device.startswith("loop"):
            continue
        try:
            with open(f"/sys/block/{device}/loop/backing_file", "rb") as f:
                backing = f.read()
        except OSError:
            continue  # not attached
        if backing.startswith(prefix):
            seq = _diskseq(device)
            if seq is not None:
                found[device] = seq
    return found


def loop_leftovers(devices: Mapping[str, int]) -> list[str]:
    """Which of ``devices`` (from :func:`attached_loops`) are still attached, or still carry
    an ext4 superblock (``/proc/fs/ext4/<device>``): a filesystem unmounted while frozen
    outlives its mount and keeps its device, whatever its backing file shows now."""
    found = []
    for device, seq in sorted(devices.items()):
        if _diskseq(device) != seq:
            continue  # detached, and perhaps attached again by someone else since
        try:
            backing = Path("/sys/block", device, "loop", "backing_file").read_text().strip()
        except OSError:
            backing = None
        if os.path.exists(f"/proc/fs/ext4/{device}"):
            found.append(f"ext4 superblock on {device} alive (backing {backing or '?'})")
        elif backing is not None:
            found.append(f"loop {device} still attached (backing {backing})")
    return found


class LoopWatch:
    """Remembers every loop device seen on a file below ``root`` while it runs (a thread
    polling sysfs, ~2 ms of CPU a poll), so that devices attached and leaked by child
    processes are checked too; each device is identified by its diskseq, so a number another
    user of the machine attached since is not mistaken for one of ours.

    Args:
        root: the tree whose loop devices are watched.
        interval: seconds between polls (a leaked device was attached for far longer: it
            was mounted while a process was killed and another recovered).
    """

    def __init__(self, root: Path, interval: float = 0.5) -> None:
        self.root = root
        self.interval = interval
        self.seen: dict[str, int] = {}
        self.label = ""  # what runs now (a test's id), for :meth:`leftovers`' report
        self.where: dict[tuple[str, int], str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loop-watch", daemon=True)

    def start(self) -> LoopWatch:
        """Start polling; returns the watch."""
        self._thread.start()
        return self

    def poll(self) -> dict[str, int]:
        """Record what is attached now; returns everything seen so far."""
        now = attached_loops(self.root) if self.root.exists() else {}
        with self._lock:
            for device, seq in now.items():
                self.where.setdefault((device, seq), self.label)
            self.seen.update(now)
            return dict(self.seen)

    def leftovers(self, grace: float = LOOP_GRACE) -> list[str]:
        """Devices seen that are still attached or still carry an ext4 superblock, once
        auto-clearing ones have had ``grace`` seconds; each names where it was first seen."""
        deadline = time.monotonic() + grace
        while True:
            left = loop_leftovers(self.seen)
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not left:
            return []
        named = []
        for device, seq in sorted(self.seen.items()):
            label = self.where.get((device, seq)) or "the session"
            named += [
                f"{line}, first seen during {label}" for line in loop_leftovers({device: seq})
            ]
        return named

    def stop(self) -> dict[str, int]:
        """Stop polling; returns everything seen."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return self.poll()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()


def settled_leftovers(
    root: Path, grace: float = LOOP_GRACE, devices: Mapping[str, int] | None = None
) -> tuple[list[str], float]:
    """:func:`host_leftovers` once auto-clearing loop devices (detached asynchronously by the
    kernel after the last unmount) have had ``grace`` seconds; also the seconds waited. With
    ``devices`` (from :func:`attached_loops`), also those of them still attached or carrying
    an ext4 superblock (:func:`loop_leftovers`)."""
    started = time.monotonic()
    while True:
        left = host_leftovers(root) + loop_leftovers(devices or {})
        waited = time.monotonic() - started
        if not left or waited > grace or any(not x.startswith(("loop ", "ext4 ")) for x in left):
            return left, waited
        time.sleep(0.02)


def layer_kind(folder: Path) -> str:
    """``empty`` (Create-only), ``layer.vhd`` or ``sandbox.vhdx``: the disk a layer holds."""
    from lcow.storage.dataroot import DataRoot

    disk = DataRoot.layer_file(folder)
    return "empty" if disk is None else disk.path.name


def disk_key(path: Path) -> list[int]:
    """A disk's identity: inode, size and mtime (a rewrite or replacement changes it)."""
    st = path.stat()
    return [st.st_ino, st.st_size, st.st_mtime_ns]
