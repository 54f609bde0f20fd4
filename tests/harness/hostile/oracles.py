"""What judges a sink's work from outside it: snapshots of the scratch tree (nothing may
change on failure), the peak RSS, ``e2fsck -fn``, a digest of the image's data regions and a
read-only kernel mount."""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import shutil
import stat
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from lcow.storage.locks import LOCK_FILES

__all__ = [
    "Snapshot",
    "changes",
    "e2fsck",
    "image_digest",
    "kernel_mount",
    "rss_peak_mib",
    "rss_reset",
    "snapshot",
]

_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
#: Files a sink may leave behind whatever happens (the data root's advisory locks).
_ALWAYS_ALLOWED = LOCK_FILES


Snapshot = dict[str, tuple[str, int, int, int]]


def snapshot(top: Path) -> Snapshot:
    """Every path under ``top``: kind, mode, size and (for non-directories) mtime."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(top):
        # A view still mounted (extract_archive) is judged by its sink, not walked here.
        dirnames[:] = [d for d in dirnames if not os.path.ismount(os.path.join(dirpath, d))]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, top)
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", st.st_mode, 0, 0)
            else:
                kind = "link" if stat.S_ISLNK(st.st_mode) else "file"
                out[rel] = (kind, st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def _allowed(rel: str, allowed: Sequence[str]) -> bool:
    if os.path.basename(rel) in _ALWAYS_ALLOWED:
        return True
    return any(rel == a or rel.startswith(a + "/") for a in allowed)


def changes(before: Snapshot, after: Snapshot, allowed: Sequence[str]) -> list[str]:
    """Paths added, removed or modified, except ``allowed`` ones."""
    out = []
    for rel in sorted(set(before) | set(after)):
        if before.get(rel) != after.get(rel) and not _allowed(rel, allowed):
            what = "added" if rel not in before else "removed" if rel not in after else "changed"
            out.append(f"{rel} {what}")
    return out


def rss_reset() -> None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def rss_peak_mib() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=_SBIN)


def e2fsck(image: Path) -> str | None:
    """``e2fsck -fn``: ``None`` when clean (or e2fsck is missing), else its complaint."""
    binary = _tool("e2fsck")
    if binary is None:
        return None
    proc = subprocess.run([binary, "-fn", str(image)], capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return None
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return f"e2fsck -fn exit {proc.returncode}: " + " | ".join(lines[-6:])


def image_digest(path: Path, size: int) -> str:
    """SHA-256 of the first ``size`` bytes, reading only data regions (the images are sparse)."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            digest.update(b"@%d:" % start)
            while start < end:
                chunk = os.pread(fd, min(1 << 20, end - start), start)
                if not chunk:
                    break
                digest.update(chunk)
                start += len(chunk)
            pos = end
        digest.update(b"#%d" % size)
    finally:
        os.close(fd)
    return digest.hexdigest()


@contextlib.contextmanager
def kernel_mount(image: Path, mountpoint: Path, size: int) -> Iterator[Path]:
    """Mount ``image``'s first ``size`` bytes read-only through a read-only loop device."""
    losetup, mount, umount = _tool("losetup"), _tool("mount"), _tool("umount")
    assert losetup and mount and umount, "losetup/mount/umount missing"
    attach = subprocess.run(
        [losetup, "--find", "--show", "--read-only", "--sizelimit", str(size), str(image)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    device = attach.stdout.strip()
    try:
        mountpoint.mkdir(exist_ok=True)
        subprocess.run(
            [mount, "-t", "ext4", "-o", "ro", device, str(mountpoint)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        try:
            yield mountpoint
        finally:
            if subprocess.run([umount, str(mountpoint)], check=False).returncode:
                subprocess.run([umount, "--lazy", str(mountpoint)], check=False)
    finally:
        subprocess.run([losetup, "--detach", device], check=False)
