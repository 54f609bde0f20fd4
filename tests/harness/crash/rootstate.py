"""A data root seen from outside the driver: the disk a layer holds and its identity, and what
must not be left behind (temporaries; mounts, loop devices and processes of the host backend)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

__all__ = [
    "LOOP_GRACE",
    "disk_key",
    "host_leftovers",
    "layer_kind",
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


def settled_leftovers(root: Path, grace: float = LOOP_GRACE) -> tuple[list[str], float]:
    """:func:`host_leftovers` once auto-clearing loop devices (detached asynchronously by the
    kernel after the last unmount) have had ``grace`` seconds; also the seconds waited."""
    started = time.monotonic()
    while True:
        left = host_leftovers(root)
        waited = time.monotonic() - started
        if not left or waited > grace or any(not x.startswith("loop ") for x in left):
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
