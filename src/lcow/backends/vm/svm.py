"""The service VM table and what each VM counts (SPEC §4.1 to §4.4, §4.7).

A locked map ``id → ServiceVM``: *add* inserts at 1 or increments, and fails with ``service VM
is shutting down`` while the entry stops; *terminate* decrements (or forces 0) and stops the VM
at zero. Each VM counts its attached disks (host path → LUN, users) and union mounts (name →
users) under its own lock. Rollback of a failed hot-add runs under the lock already held — it
never takes it again (moby#36113's deadlock).

A VM whose QEMU died is *dead*: every operation on it fails with a clear error, its entry is
dropped (process reaped, runtime folder and scratch file removed), and the next operation
starts a fresh VM.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lcow.backends.vm.channel import Channel, ChannelBroken, GuestError
from lcow.backends.vm.qemu import PORTS, QemuVM, VmConfig
from lcow.errors import FailedPrecondition, LcowError
from lcow.sandboxes import copy_sandbox, make_sandbox

__all__ = ["GLOBAL_ID", "AttachedDisk", "ServiceVM", "VmDied", "VmTable"]

log = logging.getLogger(__name__)

GLOBAL_ID = "_lcow_global_svm_"
SCRATCH_MOUNT = "/tmp/scratch"


class VmDied(FailedPrecondition):
    """The utility VM stopped under an operation (the next operation starts a fresh one)."""


@dataclass
class AttachedDisk:
    """A disk hot-added to a VM: its LUN, guest mount point and users."""

    lun: int
    writable: bool
    mount: str
    lost_found: bool  # its lost+found is layer content (not the empty one every ext4 has)
    verity: bool
    users: int = 1


@dataclass
class DiskSpec:
    """A disk a view needs: host path, writable, optional dm-verity root hash and offset."""

    path: Path
    writable: bool
    root_hash: str | None = None
    hash_offset: int = 0

    @property
    def key(self) -> str:
        return str(self.path)


@dataclass
class ServiceVM:
    """One entry of the table (SPEC §4.1)."""

    id: str
    count: int = 1
    vm: QemuVM | None = None
    started: threading.Event = field(default_factory=threading.Event)
    stopped: threading.Event = field(default_factory=threading.Event)
    start_error: BaseException | None = None
    stopping: bool = False
    dead: bool = False
    scratch: Path | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    disks: dict[str, AttachedDisk] = field(default_factory=dict)
    unions: dict[str, int] = field(default_factory=dict)
    channels: queue.LifoQueue[Channel] = field(default_factory=queue.LifoQueue)

    # -- channels --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def channel(self) -> Iterator[Channel]:
        """A connected channel to the agent, held for one exchange; a VM death becomes
        :class:`VmDied`."""
        if self.dead or self.vm is None:
            raise VmDied(f"utility VM {self.id} is not running", subject=self.id)
        try:
            ch = self.channels.get(timeout=self.vm.config.timeout)
        except queue.Empty:
            raise FailedPrecondition(
                f"utility VM {self.id}: every agent channel is busy", subject=self.id
            ) from None
        try:
            if not ch.connected:
                ch.connect_patiently(self.vm.config.timeout)
            yield ch
        except ChannelBroken as exc:
            if self.vm is not None and self.vm.exited(grace=0.5):
                self.dead = True
                raise VmDied(
                    f"utility VM {self.id} died during the operation: {exc}", subject=self.id
                ) from exc
            raise
        finally:
            self.channels.put(ch)

    def call(self, *argv: str | int | bytes) -> bytes:
        """One management command on any free channel; the agent's failure becomes a
        :class:`FailedPrecondition` naming the VM."""
        with self.channel() as ch:
            try:
                return ch.call(*argv)
            except GuestError as exc:
                raise FailedPrecondition(
                    f"utility VM {self.id}: {exc.text}", subject=self.id
                ) from None

    def check_alive(self) -> None:
        """Mark the VM dead if QEMU has exited."""
        if self.vm is not None and not self.vm.alive():
            self.dead = True

    # -- disks (SPEC §4.4), under self.lock ------------------------------------------------------

    def _free_lun(self) -> int:
        used = {d.lun for d in self.disks.values()}
        lun = 1  # LUN 0 is the scratch disk
        while lun in used:
            lun += 1
        return lun

    def hot_add(self, specs: list[DiskSpec]) -> list[str]:
        """Attach and mount each disk not attached yet, count a user of each; returns their
        keys. On failure the disks this call added or counted are released again (under the
        lock the caller holds)."""
        assert self.vm is not None
        done: list[str] = []
        try:
            for spec in specs:
                attached = self.disks.get(spec.key)
                if attached is not None:
                    attached.users += 1
                    done.append(spec.key)
                    continue
                lun = self._free_lun()
                node = f"d{lun}"
                fmt = "vhdx" if spec.writable else "vpc"
                self.vm.hot_add(node, spec.path, fmt, lun, read_only=not spec.writable)
                mount = f"/tmp/d{lun}"
                try:
                    argv: list[str | int] = ["mount", lun, mount, "rw" if spec.writable else "ro"]
                    if spec.root_hash:
                        blocks = spec.hash_offset // 4096
                        argv += [spec.root_hash, blocks, blocks + 1]
                    flag = self.call(*argv)
                except BaseException:
                    with contextlib.suppress(LcowError, OSError):
                        self.vm.hot_remove(node)
                    raise
                self.disks[spec.key] = AttachedDisk(
                    lun, spec.writable, mount, flag == b"1", bool(spec.root_hash)
                )
                done.append(spec.key)
        except BaseException:
            with contextlib.suppress(LcowError, OSError):
                self.hot_remove(done)
            raise
        return done

    def hot_remove(self, keys: list[str]) -> None:
        """Drop a user of each disk; unmount and detach those left without one. Unknown keys
        are skipped; every disk is tried, the first error raised."""
        first: BaseException | None = None
        for key in keys:
            disk = self.disks.get(key)
            if disk is None:
                continue
            if disk.users > 1:
                disk.users -= 1
                continue
            try:
                if not self.dead:
                    self.call("umount", disk.mount, disk.lun if disk.verity else "")
                    assert self.vm is not None
                    self.vm.hot_remove(f"d{disk.lun}")
                del self.disks[key]
            except (LcowError, OSError) as exc:
                first = first or exc
        if first is not None:
            raise first

    def format_disk(self, path: Path, options: list[str]) -> str:
        """Format the VHDX ``path`` in the guest (SPEC §4.5): attach it without mounting, have
        the agent run mke2fs with ``options`` on the whole device (found by its LUN), detach
        it. The disk is detached whatever happens — on failure first, then the error is
        raised — so the image is closed by QEMU before the caller renames or deletes it.
        Returns the guest device. Under ``self.lock``.

        Raises:
            FailedPrecondition: QMP or mke2fs failed (:class:`VmDied` if the VM died).
        """
        assert self.vm is not None
        lun = self._free_lun()
        node = f"d{lun}"
        self.vm.hot_add(node, path, "vhdx", lun, read_only=False)
        try:
            device = self.call("mkfs", lun, *options)
        except BaseException:
            self.check_alive()
            if not self.dead:
                try:
                    self._detach_unmounted(node, path, lun)
                except (LcowError, OSError) as exc:
                    log.warning("vm %s: detaching %s after a failed mkfs: %s", self.id, path, exc)
            raise
        self._detach_unmounted(node, path, lun)
        return device.decode(errors="replace")

    def _detach_unmounted(self, node: str, path: Path, lun: int) -> None:
        """Detach a disk attached without a mount; if QMP fails, keep its LUN taken (it may
        still be attached) so no later hot-add collides with it."""
        assert self.vm is not None
        try:
            self.vm.hot_remove(node)
        except BaseException:
            self.disks[f"(not detached) {path}"] = AttachedDisk(lun, True, "", False, False)
            raise

    # -- unions (SPEC §4.7), under self.lock -----------------------------------------------------

    def add_union(self, name: str, lowers: list[str], upper: str | None) -> None:
        """Mount the overlay ``name`` or count another user."""
        if name in self.unions:
            self.unions[name] += 1
            return
        if not lowers:
            raise FailedPrecondition("createUnionMount: error must have at least 1 layer")
        argv: list[str | int] = ["overlay", name, ":".join(lowers)]
        if upper is not None:
            argv += [f"{upper}/upper", f"{upper}/work"]
        self.call(*argv)
        self.unions[name] = 1

    def remove_union(self, name: str) -> None:
        """Drop a user of the overlay ``name``; unmount it at zero (unknown names: no-op)."""
        users = self.unions.get(name)
        if users is None:
            return
        if users > 1:
            self.unions[name] = users - 1
            return
        if not self.dead:
            self.call("umount", name)
        del self.unions[name]

    def attached(self, path: Path) -> AttachedDisk | None:
        """The attachment of a host disk file, if any."""
        return self.disks.get(str(path))


class VmTable:
    """The locked ``id → ServiceVM`` map with start/join and terminate (SPEC §4.2, §4.3).

    Args:
        config: how VMs boot.
        scratch_dir: ``<root>/scratch`` (``<id>.vhdx`` per running VM).
        scratch_template: ``<root>/cache/scratch.vhdx``, made on first use.
        global_mode: unforced terminations are no-ops.
    """

    def __init__(
        self, config: VmConfig, scratch_dir: Path, scratch_template: Path, global_mode: bool
    ) -> None:
        self.config = config
        self.scratch_dir = scratch_dir
        self.scratch_template = scratch_template
        self.global_mode = global_mode
        self._lock = threading.Lock()
        self._scratch_lock = threading.Lock()
        self._vms: dict[str, ServiceVM] = {}
        #: every QEMU this table started, newest last (tests audit that each one is gone)
        self.started: list[QemuVM] = []

    def entries(self) -> list[ServiceVM]:
        """Every VM in the table."""
        with self._lock:
            return list(self._vms.values())

    def get(self, svm_id: str) -> ServiceVM | None:
        """The live entry of ``svm_id`` (a dead one is dropped first)."""
        with self._lock:
            entry = self._vms.get(svm_id)
        if entry is not None and entry.started.is_set():
            entry.check_alive()
            if entry.dead:
                self.drop_dead(entry)
                return None
        return entry

    # -- start or join (SPEC §4.2) ---------------------------------------------------------------

    def start_or_join(self, svm_id: str) -> ServiceVM:
        """Take a reference on ``svm_id``'s VM, starting it if new; returns it running.

        Raises:
            FailedPrecondition: ``failed to start service utility VM (...)``.
        """
        while True:
            with self._lock:
                entry = self._vms.get(svm_id)
                if entry is not None and (entry.stopping or entry.dead):
                    waiting = entry
                else:
                    waiting = None
                    if entry is None:
                        entry = ServiceVM(svm_id)
                        self._vms[svm_id] = entry
                        new = True
                    else:
                        entry.count += 1
                        new = False
            if waiting is not None:  # shutting down: wait for its stop, then retry
                if waiting.dead:
                    self.drop_dead(waiting)
                waiting.stopped.wait(self.config.timeout)
                continue
            assert entry is not None
            if not new:
                entry.started.wait()
                if entry.start_error is not None:
                    self._unref(entry)
                    raise entry.start_error
                entry.check_alive()
                if entry.dead:
                    self._unref(entry)
                    self.drop_dead(entry)
                    continue
                return entry
            try:
                self._boot(entry)
            except BaseException as exc:
                entry.start_error = exc
                entry.started.set()
                with self._lock:
                    if self._vms.get(svm_id) is entry:
                        del self._vms[svm_id]
                self._remove_scratch(entry)
                entry.stopped.set()
                raise
            entry.started.set()
            return entry

    def _boot(self, entry: ServiceVM) -> None:
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        scratch = self.scratch_dir / f"{entry.id}.vhdx"
        with self._scratch_lock:
            if not self.scratch_template.exists():
                make_sandbox(self.scratch_template, None)
            with contextlib.suppress(FileNotFoundError):
                scratch.unlink()  # a stale one of an earlier VM of this id
            copy_sandbox(self.scratch_template, scratch)
        entry.scratch = scratch
        vm = QemuVM(entry.id, self.config, scratch)
        self.started.append(vm)
        vm.start()
        entry.vm = vm
        for port in range(PORTS):
            entry.channels.put(vm.channel(port))

    # -- terminate (SPEC §4.3) -------------------------------------------------------------------

    def _unref(self, entry: ServiceVM) -> bool:
        """Drop a reference; True when it was the last (the caller stops the VM)."""
        with self._lock:
            entry.count = max(entry.count - 1, 0)
            if entry.count == 0 and self._vms.get(entry.id) is entry:
                entry.stopping = True
                return True
            return False

    def terminate(self, svm_id: str, *, force: bool = False) -> None:
        """Drop a reference on ``svm_id``'s VM (``force``: all); stop it at zero. Global mode
        without force: nothing."""
        if self.global_mode and not force:
            return
        with self._lock:
            entry = self._vms.get(svm_id)
            if entry is None:
                return
            if entry.stopping:
                stopping = entry
            else:
                stopping = None
                if force:
                    entry.count = 0
                else:
                    entry.count -= 1
                if entry.count > 0:
                    return
                entry.stopping = True
        if stopping is not None:
            stopping.stopped.wait(self.config.timeout)
            return
        self._stop(entry)

    def _stop(self, entry: ServiceVM) -> None:
        entry.started.wait(self.config.timeout)
        try:
            while True:  # idle channels; one in use is closed by its user's failure
                try:
                    entry.channels.get_nowait().close()
                except queue.Empty:
                    break
            if entry.vm is not None:
                entry.vm.kill()  # images are flushed on every guest flush; nothing to save
        finally:
            self._remove_scratch(entry)
            with self._lock:
                if self._vms.get(entry.id) is entry:
                    del self._vms[entry.id]
            entry.disks.clear()
            entry.unions.clear()
            entry.stopped.set()

    def drop_dead(self, entry: ServiceVM) -> None:
        """Forget a VM whose QEMU died: reap it, remove its files."""
        with self._lock:
            if self._vms.get(entry.id) is not entry or entry.stopping:
                return
            entry.stopping = True
        log.warning("vm: utility VM %s died; it will be restarted on next use", entry.id)
        self._stop(entry)

    def _remove_scratch(self, entry: ServiceVM) -> None:
        if entry.scratch is not None:
            try:
                entry.scratch.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("vm: failed to delete scratch %s: %s", entry.scratch, exc)

    def shutdown_all(self) -> None:
        """Force-terminate every VM (Cleanup)."""
        for entry in self.entries():
            try:
                self.terminate(entry.id, force=True)
            except (LcowError, OSError) as exc:
                log.warning("vm: cleanup: %s: %s", entry.id, exc)
