"""Views mounted by the host kernel: loop devices, ext4 and overlayfs (issue 5, SPEC §4.7).

Layout of the state folder ``<root>/mounts`` (0700)::

    state.json, lock     the mount table (:mod:`.table`)
    qsd.sock, qsd.pid    the storage daemon exporting sandboxes (:mod:`.storage_daemon`)
    d/<slot>             one mounted disk: a layer.vhd read-only, a sandbox.vhdx read-write
    e/<slot>             a sandbox's raw export (the file its loop device sits on)
    v/<id>               an overlay view
    mask/lost+found      a whiteout: hides the empty ``lost+found`` every layer image has

Each disk is mounted once and shared by every view that needs it (counted per view; under
:meth:`HostBackend.linger` a disk no view uses, a sandbox too, stays mounted, idle, for a
while). A
view is an overlay whose lower directories are ``d/<slot>`` (a read-only layer) or
``d/<slot>/upper`` (a sandbox ancestor), given relative to the state folder when the absolute
paths would not fit the one-page option string (128 layers); a writable view adds its sandbox's
``upper/`` and ``work/``. A single read-only layer is its own view, a sandbox without lowers
its ``upper/``.

Every ext4 image has a ``lost+found`` at its root that is not layer content (Diff, Changes and
the userspace view leave an empty one out). So that a mounted view shows what overlay2 would,
the ``mask`` folder joins an overlay as its topmost lower directory when no layer below has
real content there. A single read-only layer, mounted directly, still shows its own: what
dockerd reads from such a view (``docker save``) goes by the layer's tar-split record, and
every container view is an overlay.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lcow.backends.base import LayerDisk
from lcow.backends.host import diskflush, kernel
from lcow.backends.host.hostfs import HostFS
from lcow.backends.host.storage_daemon import BINARY, StorageDaemon
from lcow.backends.host.table import DiskEntry, MountState, MountTable, ViewEntry
from lcow.backends.scoped import probe_openat2
from lcow.errors import Busy, CorruptImage, FailedPrecondition, LcowError, NotSupported
from lcow.sandboxes import make_sandbox
from lcow.storage.dataroot import LayerFile

__all__ = ["STATE_FOLDER", "HostBackend"]

log = logging.getLogger(__name__)

STATE_FOLDER = "mounts"
_SUPERBLOCK = 1024
_SLOT_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def check_prerequisites() -> None:
    """Raise ``driver not supported`` naming what the host lacks."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    if not os.path.exists("/dev/loop-control"):
        missing.append("loop devices (/dev/loop-control)")
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    for fs in ("ext4", "overlay"):
        if f"\t{fs}\n" not in filesystems:
            missing.append(f"the {fs} filesystem")
    if shutil.which("mount") is None:
        missing.append("mount(8)")
    try:
        probe_openat2()
    except (NotSupported, OSError):
        missing.append("openat2(2) (Linux 5.6)")
    if missing:
        raise NotSupported(
            "driver not supported: the host backend needs " + ", ".join(missing),
            subject="host",
        )


def ext4_size(path: Path) -> int:
    """Bytes of the ext4 filesystem at the start of ``path`` (a layer.vhd may carry a
    dm-verity tree and a VHD footer after it; the loop device must end with the filesystem)."""
    with open(path, "rb") as f:
        f.seek(_SUPERBLOCK)
        raw = f.read(_SUPERBLOCK)
    if len(raw) < _SUPERBLOCK or raw[0x38:0x3A] != b"\x53\xef":
        raise CorruptImage(f"{path}: not an ext4 image", subject=str(path))
    blocks = int.from_bytes(raw[4:8], "little")
    if int.from_bytes(raw[0x60:0x64], "little") & 0x80:  # 64bit
        blocks |= int.from_bytes(raw[0x150:0x154], "little") << 32
    return blocks * (1024 << int.from_bytes(raw[24:28], "little"))


def _slot_name(number: int) -> str:
    digits = ""
    while True:
        number, rest = divmod(number, 36)
        digits = _SLOT_DIGITS[rest] + digits
        if number == 0:
            return digits


class HostBackend:
    """Views as host directories; counts kept in the data root so they outlive the process.

    Args:
        root: the data root.
        timeout: seconds to wait for the storage daemon.

    Raises:
        NotSupported: not root, no loop devices, no overlayfs (``driver not supported``).
    """

    name = "host"
    writable = True
    raw_sandboxes = True  # a sandbox.img is loop-mounted itself, without the storage daemon
    persistent = True  # views and counts outlive the process (kept in the data root)
    mount_threads = 4

    def __init__(self, root: Path, timeout: float = 30.0) -> None:
        check_prerequisites()
        self.home = root / STATE_FOLDER
        for sub in ("", "d", "e", "v", "mask"):
            (self.home / sub).mkdir(mode=0o700, exist_ok=True)
        whiteout = self.home / "mask" / "lost+found"
        if not whiteout.exists():
            os.mknod(whiteout, 0o600 | stat.S_IFCHR, os.makedev(0, 0))
        self.table = MountTable(self.home)
        self.daemon = StorageDaemon(self.home, timeout)
        self.daemon_idle = 0.0  # see linger()
        self._idle_timer: threading.Timer | None = None
        self._idle_lock = threading.Lock()
        with self.table.transaction() as state:
            self._reconcile(state)

    # -- the storage daemon's lifetime -----------------------------------------------------

    def linger(self, seconds: float) -> None:
        """Keep the storage daemon, and the disks of released views, up to ``seconds`` after
        their last use instead of stopping and unmounting them at once (0: at once, the
        default).

        For long-running front ends (the plugin, the snapshotter): a container's sandbox
        then does not pay the daemon's start and stop, nor its image's layers' loop devices
        and mounts (issue 17), nor its own export and mount again at each Get (dockerd Gets
        a container layer again right after the Put that follows its creation, and the
        ``-init`` layer's sandbox is the lower of the container's view right after its own
        Put). An idle disk stays in the table with no user; the next view over it counts it
        again. An idle sandbox stays mounted read-write and exported: what its views wrote
        reaches its file when it is read (:meth:`reading` freezes it), when its layer is
        removed or replaced, at the idle stop, or when the next backend over the data root
        releases it (each an unmount: see :func:`diskflush.unmount_disk`). The wait runs on a
        timer thread of this process, restarted by every release; :meth:`stop_lingering` ends it
        at once, and a process killed meanwhile leaves idle mounts and an idle daemon that
        the next backend over the data root releases when it reconciles. A disk a view
        uses, and a daemon with exports, are never touched by the timer; removing a layer
        unmounts its idle disks at once.
        """
        self.daemon_idle = max(0.0, seconds)

    def stop_lingering(self) -> None:
        """This process stops using the backend: idle disks are unmounted and an idle storage
        daemon is stopped; views, their counts and a daemon that still exports stay; never
        fails."""
        self._cancel_idle_stop()
        if self.daemon_idle <= 0:
            return
        try:
            self._release_idle()
        except (OSError, LcowError) as exc:
            log.warning("host backend: releasing idle disks and storage daemon: %s", exc)

    def _schedule_idle(self) -> None:
        """Something became idle: release what is idle :attr:`daemon_idle` seconds from now."""
        with self._idle_lock:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            timer = threading.Timer(self.daemon_idle, self._idle_expired)
            timer.daemon = True  # never keeps the process alive
            timer.name = "lcow-qsd-idle"
            self._idle_timer = timer
            timer.start()

    def _cancel_idle_stop(self) -> None:
        with self._idle_lock:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None

    def _idle_expired(self) -> None:
        with self._idle_lock:
            if self._idle_timer is None or threading.current_thread() is not self._idle_timer:
                return  # superseded by a later release, or cancelled
            self._idle_timer = None
        try:
            self._release_idle()
        except (OSError, LcowError) as exc:
            log.warning("host backend: releasing idle disks and storage daemon: %s", exc)

    def _release_idle(self) -> None:
        """Under the table's lock (mounts and exports are made and counted under it): unmount
        the disks no view uses, then stop the daemon when no recorded disk is a sandbox."""
        with self.table.transaction() as state:
            self._release_unused(state, [k for k, d in state.disks.items() if d.users == 0])
            if not any(d.exported for d in state.disks.values()):
                self.daemon.stop()

    def _release_unused(self, state: MountState, keys: list[str]) -> None:
        for key in keys:
            state.disks[key].users = 1  # the last user, as far as _release_disks is concerned
        self._release_disks(state, keys, force=True)

    # -- views -----------------------------------------------------------------------------

    def acquire(self, layer_id: str, disks: list[LayerDisk]) -> HostFS:
        """Count a Get; the first one mounts the view (own content first in ``disks``)."""
        with self.table.transaction() as state:
            view = state.views.get(layer_id)
            if view is not None:
                view.count += 1
                return self._fs(layer_id, view)
            keys = self._attach_all(state, [d.disk for d in disks if d.disk is not None])
            try:
                own_writable = disks[0].disk is not None and disks[0].disk.writable
                view = self._mount_view(state, layer_id, keys, own_writable)
            except BaseException:
                self._release_disks(state, keys, force=True)
                raise
            state.views[layer_id] = view
            return self._fs(layer_id, view)

    def release(self, layer_id: str) -> None:
        """Count a Put; the last one unmounts the view and releases its disks.

        Raises:
            Busy: the view is still in use by a process (the Get stays counted).
        """
        with self.table.transaction() as state:
            view = state.views.get(layer_id)
            if view is None:
                return
            if view.count > 1:
                view.count -= 1
                return
            self._teardown(state, layer_id, view, force=False)

    def release_all(self, layer_id: str) -> None:
        """Tear the view down whatever its count (Remove)."""
        with self.table.transaction() as state:
            view = state.views.get(layer_id)
            if view is not None:
                self._teardown(state, layer_id, view, force=True)
            self._release_idle_of(state, layer_id)

    def release_view(self, layer_id: str) -> list[str]:
        """Tear the view down whatever its count, like :meth:`release_all`, but leave the
        layer's disks idle: returns their table keys, for :meth:`release_idle` once the layer's
        folder is renamed away (a Remove that answers first)."""
        with self.table.transaction() as state:
            view = state.views.get(layer_id)
            if view is not None:
                self._teardown(state, layer_id, view, force=True)
            return self._idle_of(state, layer_id)

    def release_idle(self, layer_id: str, keys: Sequence[str] | None = None) -> None:
        """Unmount (and unexport) the disks of ``layer_id``'s folder that no view uses (only
        those of ``keys`` if given): its file is about to be replaced or deleted, and a
        sandbox's writes must reach it first."""
        with self.table.transaction() as state:
            idle = self._idle_of(state, layer_id)
            self._release_unused(state, idle if keys is None else [k for k in idle if k in keys])

    def _release_idle_of(self, state: MountState, layer_id: str) -> None:
        # The layer goes or changes (Remove, ApplyDiff): its own disks, idle since their views
        # went, go too (the unmount writes a sandbox's data home: diskflush.unmount_disk).
        self._release_unused(state, self._idle_of(state, layer_id))

    @staticmethod
    def _idle_of(state: MountState, layer_id: str) -> list[str]:
        return [k for k, d in state.disks.items()
                if d.users == 0 and k.split(":", 1)[0] == layer_id]  # fmt: skip

    def discard(self, layer_id: str) -> bool:
        """Shut the ext4 of ``layer_id``'s mounted sandbox down without writing it back: its
        content is garbage, removed next (a staged unpack's sandbox), and its unmount would
        otherwise write its page cache through the loop device into the file and on to the
        disk. Found through the mount table, under its lock (no other disk can take the
        slot meanwhile). Returns whether one was shut down."""
        with self.table.transaction() as state:
            done = False
            for key, entry in state.disks.items():
                mountpoint = self.home / "d" / entry.slot
                if (key.split(":", 1)[0] == layer_id and entry.writable
                        and os.path.ismount(mountpoint)):  # fmt: skip
                    kernel.shut_down(mountpoint)
                    done = True
            return done

    def count(self, layer_id: str) -> int:
        """Outstanding Gets of ``layer_id``."""
        view = self.table.peek().views.get(layer_id)
        return 0 if view is None else view.count

    def in_use(self, disk: LayerFile) -> bool:
        """Whether ``disk`` is mounted for some view (an idle disk is not)."""
        key = _disk_key_if_present(disk)
        entry = None if key is None else self.table.peek().disks.get(key)
        return entry is not None and entry.users > 0

    @contextlib.contextmanager
    def reading(self, disk: LayerFile) -> Iterator[Path]:
        """A path from which ``disk``'s own content can be read consistently right now.

        A mounted sandbox is frozen (its writes flushed and writers held) and read through
        its raw export (a raw sandbox: the file itself); any other disk is its own file.
        """
        if not disk.writable:
            yield disk.path
            return
        with self.table.transaction() as state:
            # By key (folder and inode), not path: a removed layer's disk may idle on, under
            # the same path as a new layer of the same id, until its release (release_view).
            key = _disk_key_if_present(disk)
            entry = None if key is None else state.disks.get(key)
            if entry is None:
                yield disk.path
                return
            mountpoint = self.home / "d" / entry.slot
            diskflush.thaw_abandoned(mountpoint)
            kernel.freeze(mountpoint)
            try:
                yield self.home / "e" / entry.slot if entry.exported else disk.path
            finally:
                kernel.thaw(mountpoint)

    def make_sandbox(self, target: Path, size: int) -> None:
        """Format on the host (lcow's mke2fs path: SPEC §4.5's VM-less equivalent)."""
        make_sandbox(target, size)

    def cleanup(self) -> None:
        """Unmount everything, release every disk and stop the storage daemon; never fails."""
        self._cancel_idle_stop()
        with self.table.transaction() as state:
            for layer_id, view in list(state.views.items()):
                try:
                    self._teardown(state, layer_id, view, force=True)
                except (OSError, LcowError) as exc:
                    log.warning("host backend: cleanup: %s: %s", layer_id, exc)
            state.views.clear()
            for entry in state.disks.values():
                entry.users = 1
            try:
                self._release_disks(state, list(state.disks), force=True)
            except (OSError, LcowError) as exc:
                log.warning("host backend: cleanup: disks: %s", exc)
            state.disks.clear()
            self._reconcile(state)

    # -- mounting ----------------------------------------------------------------------------

    def _fs(self, layer_id: str, view: ViewEntry) -> HostFS:
        return HostFS(str(self.home / view.path), layer_id=layer_id)

    def _lower_dir(self, state: MountState, key: str) -> str:
        entry = state.disks[key]
        return f"d/{entry.slot}/upper" if entry.writable else f"d/{entry.slot}"

    def _mount_view(
        self, state: MountState, layer_id: str, keys: list[str], own_writable: bool
    ) -> ViewEntry:
        if not keys:  # nothing anywhere: an empty, read-only root
            empty = self.home / "v" / layer_id
            empty.mkdir(mode=0o755, exist_ok=True)
            return ViewEntry(f"v/{layer_id}", False, keys)
        below = keys[1:] if own_writable else keys
        lowers = [self._lower_dir(state, k) for k in below]
        if own_writable and not lowers:
            return ViewEntry(self._lower_dir(state, keys[0]), False, keys)
        if not own_writable and len(lowers) == 1:
            # One layer: mounted directly, as v18.03 did (an overlay would cost a third more
            # per file opened, just to hide the image's empty lost+found).
            return ViewEntry(lowers[0], False, keys)
        if not any(state.disks[k].lost_found for k in below):
            lowers.insert(0, "mask")
        target = self.home / "v" / layer_id
        target.mkdir(mode=0o755, exist_ok=True)
        own = state.disks[keys[0]].slot
        kernel.mount_overlay(
            self.home,
            f"v/{layer_id}",
            lowers,
            upper=f"d/{own}/upper" if own_writable else None,
            work=f"d/{own}/work" if own_writable else None,
        )
        return ViewEntry(f"v/{layer_id}", True, keys)

    def _teardown(self, state: MountState, layer_id: str, view: ViewEntry, *, force: bool) -> None:
        target = self.home / "v" / layer_id
        if view.overlay:
            try:
                kernel.umount(target)
            except OSError as exc:
                if exc.errno == errno.EBUSY and not force:
                    raise Busy(
                        f"lcowdriver: put: {layer_id}: the view {target} is in use",
                        subject=layer_id,
                    ) from exc
                if exc.errno not in (errno.EINVAL, errno.ENOENT):
                    kernel.umount(target, lazy=True)
        del state.views[layer_id]
        with contextlib.suppress(OSError):
            target.rmdir()
        try:
            self._release_disks(state, view.disks, force=force, linger=self.daemon_idle > 0)
        except (OSError, LcowError) as exc:
            raise FailedPrecondition(
                f"lcowdriver: put: {layer_id}: releasing its disks: {exc}", subject=layer_id
            ) from exc

    def _free_slots(self, state: MountState) -> Iterator[str]:
        """Unused short names, lowest first (one skipped if something is mounted there)."""
        used = {d.slot for d in state.disks.values()}
        number = 0
        while True:
            slot = _slot_name(number)
            if slot not in used and not os.path.ismount(self.home / "d" / slot):
                yield slot
            number += 1

    def _attach_all(self, state: MountState, files: list[LayerFile]) -> list[str]:
        """Mount every disk of a view that is not mounted yet, count a user of each; returns
        their table keys in order. Sandboxes are exported in one storage-daemon session."""
        keys: list[str] = []
        fresh: dict[str, tuple[LayerFile, str]] = {}
        slots = self._free_slots(state)
        try:
            for disk in files:
                key = _disk_key(disk)
                keys.append(key)
                if key in state.disks and not self._dead_idle(state.disks[key]):
                    state.disks[key].users += 1
                    continue
                if key in state.disks:  # idle on the export of a daemon that died: afresh
                    self._release_unused(state, [key])
                if key not in fresh:
                    fresh[key] = (disk, next(slots))
            exports = [(slot, d.path) for d, slot in fresh.values() if _exported(d)]
            if exports:
                self._export(exports)
            self._mount_disks(state, fresh)
        except BaseException:
            mounted = [k for k in keys if k in state.disks]
            for key, (disk, slot) in fresh.items():
                if _exported(disk) and key not in state.disks:
                    self._unexport([(slot, None)])
            self._release_disks(state, mounted, force=True)
            raise
        return keys

    def _mount_disks(self, state: MountState, fresh: dict[str, tuple[LayerFile, str]]) -> None:
        """Mount new disks, recording each that mounted; raise the first failure after.

        A few threads at once: an ext4 mount mostly waits on reads of the image's superblock
        and group descriptors, with the GIL released (64 layers: 45 → 28 ms on 2 cores,
        quiet machine; see benchmarks/RESULTS.md).
        """
        if len(fresh) == 1:
            ((key, (disk, slot)),) = fresh.items()
            state.disks[key] = self._mount_disk(disk, slot)
            return
        failure: BaseException | None = None
        with ThreadPoolExecutor(max_workers=self.mount_threads) as pool:
            futures = {key: pool.submit(self._mount_disk, d, s) for key, (d, s) in fresh.items()}
            for key, future in futures.items():
                try:
                    state.disks[key] = future.result()
                except BaseException as exc:
                    failure = failure or exc
        if failure is not None:
            raise failure

    def _mount_disk(self, disk: LayerFile, slot: str) -> DiskEntry:
        """Loop-mount a layer file (a VHDX sandbox through its export) at ``d/<slot>``."""
        mountpoint = self.home / "d" / slot
        mountpoint.mkdir(mode=0o700, exist_ok=True)
        if disk.writable:
            backing = self.home / "e" / slot if _exported(disk) else disk.path
            size = backing.stat().st_size
        else:
            backing, size = disk.path, ext4_size(disk.path)
        device, fd = kernel.attach_loop(backing, read_only=not disk.writable, size=size)
        try:
            kernel.mount(device, mountpoint, "ext4", 0 if disk.writable else kernel.MS_RDONLY)
        except OSError as exc:
            raise FailedPrecondition(
                f"{disk.path}: mounting it failed: {exc.strerror}", subject=str(disk.path)
            ) from exc
        finally:
            os.close(fd)  # the mount holds the device now; auto-clear does the rest
        if disk.writable:  # the sandbox's root gains upper/ and work/ (SPEC §1.1)
            for sub in ("upper", "work"):
                with contextlib.suppress(FileExistsError):
                    (mountpoint / sub).mkdir(mode=0o755)
        content = mountpoint / "upper" if disk.writable else mountpoint
        return DiskEntry(
            slot, str(disk.path), disk.writable, device, _has_lost_found(content, disk.writable)
        )

    def _release_disks(
        self, state: MountState, keys: list[str], *, force: bool, linger: bool = False
    ) -> None:
        """Drop one user of each disk; unmount those left without users (with ``linger``, one
        stays mounted, idle, a sandbox's export too), then end their exports in one
        storage-daemon session (and stop the daemon when none remain, or let it linger)."""
        unmounted: list[DiskEntry] = []
        errors: list[OSError] = []
        kept = False
        for key in keys:
            entry = state.disks.get(key)
            if entry is None:
                continue
            if entry.users > 1:
                entry.users -= 1
                continue
            if linger and not (entry.exported and not self._export_alive(entry)):
                entry.users = 0  # idle: the next view over it counts it again
                kept = True
                continue
            mountpoint = self.home / "d" / entry.slot
            try:
                diskflush.unmount_disk(entry, mountpoint)
            except OSError as exc:
                if exc.errno == errno.EBUSY and force:
                    kernel.umount(mountpoint, lazy=True)
                elif exc.errno not in (errno.EINVAL, errno.ENOENT):  # not mounted any more
                    errors.append(exc)
                    continue
            del state.disks[key]
            unmounted.append(entry)
        exports = [(e.slot, e.device) for e in unmounted if e.exported]
        if exports:
            self._unexport(exports)
        daemon_idle = bool(exports) and not any(d.exported for d in state.disks.values())
        if daemon_idle and self.daemon_idle <= 0:
            self.daemon.stop()
        elif daemon_idle or kept:
            self._schedule_idle()
        if errors:
            raise errors[0]

    def _export_alive(self, entry: DiskEntry) -> bool:
        """Whether a sandbox's export still answers (a killed storage daemon leaves a dead
        FUSE mount: its loop device and filesystem only fail from then on). ``statfs``, not
        ``stat``: the kernel answers the latter from cached attributes, a dead mount too."""
        try:
            os.statvfs(self.home / "e" / entry.slot)
        except OSError:
            return False
        return True

    def _dead_idle(self, entry: DiskEntry) -> bool:
        """Whether an idle sandbox disk sits on a dead export: no view may count it again."""
        return entry.users == 0 and entry.exported and not self._export_alive(entry)

    def _export(self, disks: list[tuple[str, Path]]) -> None:
        """Export sandboxes as the raw files ``e/<slot>``."""
        self.daemon.start()
        for slot, _ in disks:
            (self.home / "e" / slot).touch(mode=0o600)
        try:
            self.daemon.export(
                [(f"x{slot}", image, self.home / "e" / slot) for slot, image in disks]
            )
        except BaseException:
            for slot, _ in disks:
                with contextlib.suppress(OSError):
                    (self.home / "e" / slot).unlink()
            raise

    def _unexport(self, disks: Sequence[tuple[str, str | None]]) -> None:
        """End sandboxes' exports once their loop devices have let go of them."""
        for slot, device in disks:
            if device is not None:
                diskflush.wait_loop_released(device, self.home / "e" / slot)
        if self.daemon.pid() is not None:  # a daemon that died exports nothing any more
            self.daemon.unexport([f"x{slot}" for slot, _ in disks])
        dead = {p for p, _ in kernel.mounts_below(self.home / "e")}
        for slot, _ in disks:
            export = self.home / "e" / slot
            if str(export) in dead:  # its daemon was killed: the kernel keeps a dead FUSE mount
                log.warning("host backend: unmounting %s, left by a storage daemon that died",
                            export)  # fmt: skip
                with contextlib.suppress(OSError):
                    kernel.umount(export, lazy=True)
            with contextlib.suppress(OSError):
                export.unlink()

    # -- recovery ----------------------------------------------------------------------------

    def _reconcile(self, state: MountState) -> None:
        """Adopt what the table records and is still mounted; undo everything else.

        A process that died between mounting and saving the table leaves unrecorded mounts
        and exports; a reboot or an outside ``umount`` leaves records without mounts; one that
        died between freezing a disk and thawing it (a Put, a read of a mounted sandbox)
        leaves it frozen, which is undone first: writes to an adopted view would block, and
        an unmounted frozen disk would never let go of its superblock and loop device.
        """
        self._forget_unmounted(state)
        for entry in state.disks.values():
            diskflush.thaw_abandoned(self.home / "d" / entry.slot)
        self._recount_users(state)
        self._unmount_orphans(state)
        self._unexport_orphans(state)

    def _forget_unmounted(self, state: MountState) -> None:
        """Drop records of disks and views that are no longer mounted."""
        mounted = {p for p, _ in kernel.mounts_below(self.home)}
        for key, entry in list(state.disks.items()):
            if str(self.home / "d" / entry.slot) not in mounted:
                log.warning("host backend: disk %s is no longer mounted; forgetting it", key)
                del state.disks[key]
        for layer_id, view in list(state.views.items()):
            gone = view.overlay and str(self.home / view.path) not in mounted
            if gone or any(k not in state.disks for k in view.disks):
                log.warning("host backend: view of %s is gone; forgetting it", layer_id)
                del state.views[layer_id]

    def _recount_users(self, state: MountState) -> None:
        """Count each recorded disk's users from the views; release disks no view uses."""
        users: dict[str, int] = {}
        for view in state.views.values():
            for key in view.disks:
                users[key] = users.get(key, 0) + 1
        unused = []
        for key, entry in state.disks.items():
            entry.users = users.get(key, 1)
            if key not in users:
                unused.append(key)
        self._release_disks(state, unused, force=True)

    def _unmount_orphans(self, state: MountState) -> None:
        """Unmount what is mounted below the home but recorded nowhere."""
        keep = {str(self.home / v.path) for v in state.views.values() if v.overlay}
        keep |= {str(self.home / "d" / d.slot) for d in state.disks.values()}
        # The running daemon's exports: it unmounts them when they go. Any other FUSE mount
        # is a dead one, left by a daemon that was killed.
        keep |= {str(self.home / "e" / name[1:]) for name in self.daemon.exports()}
        for point, fstype in reversed(list(kernel.mounts_below(self.home))):
            if point not in keep and point != str(self.home):
                log.warning("host backend: unmounting orphan %s", point)
                if fstype == "ext4":
                    diskflush.thaw_abandoned(Path(point))
                with contextlib.suppress(OSError):
                    kernel.umount(point, lazy=True)

    def _unexport_orphans(self, state: MountState) -> None:
        """End exports and remove export files that no recorded sandbox disk has; stop the
        daemon when none is left."""
        exports = {f"x{d.slot}" for d in state.disks.values() if d.exported}
        orphans = [name for name in self.daemon.exports() if name not in exports]
        if orphans:
            log.warning("host backend: removing orphan exports %s", ", ".join(orphans))
            self.daemon.unexport(orphans)
        if not exports:
            self.daemon.stop()
        for stale in (self.home / "e").iterdir():
            if f"x{stale.name}" not in exports and not os.path.ismount(stale):
                with contextlib.suppress(OSError):
                    stale.unlink()


def _disk_key(disk: LayerFile) -> str:
    """The table key of a layer file: its folder and inode (a removed and re-created layer
    is another disk, even while the old one is still mounted for someone)."""
    try:
        return f"{disk.path.parent.name}:{disk.path.stat().st_ino}"
    except FileNotFoundError as exc:
        raise FailedPrecondition(
            f"{disk.path}: the layer file vanished", subject=str(disk.path)
        ) from exc


def _disk_key_if_present(disk: LayerFile) -> str | None:
    """:func:`_disk_key`, or None when the file is gone."""
    try:
        return _disk_key(disk)
    except FailedPrecondition:
        return None


def _exported(disk: LayerFile) -> bool:
    """Whether the storage daemon exports ``disk`` for its loop device (a VHDX sandbox)."""
    return disk.writable and not disk.raw


def _has_lost_found(content: Path, writable: bool) -> bool:
    """Whether a layer's ``lost+found`` is content: any in a sandbox's ``upper/``, in an
    image anything but the empty directory every ext4 has."""
    path = content / "lost+found"
    try:
        if writable or not path.is_dir() or path.is_symlink():
            return path.exists() or path.is_symlink()
        return any(os.scandir(path))
    except OSError:
        return True


__all__ += ["BINARY", "check_prerequisites", "ext4_size"]
