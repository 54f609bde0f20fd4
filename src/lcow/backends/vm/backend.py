"""The vm backend: views mounted only inside service utility VMs (SPEC §4; issue "vm").

Layer images are never mounted by the host kernel: each disk is hot-added to a QEMU VM over
SCSI (``layer.vhd`` as ``vpc``, ``sandbox.vhdx`` as ``vhdx``) and mounted by the guest kernel;
the guest's overlayfs makes the union; the agent runs the file operations (:mod:`.vmfs`).

Modes (``lcow.globalmode``): per-id — a VM per layer id, torn down when its last reference goes
— or global — one VM ``_lcow_global_svm_`` for every view, living until Cleanup.

Counting follows LCOW: Get is lazy (no VM, no disk); the first file operation of a view joins
its VM (a VM reference), hot-adds its disks (per-VM disk counts) and mounts its union (per-VM
union counts). The last Put of an id undoes exactly that; Remove does it whatever the count
and, per-id, force-terminates the id's VM; Cleanup force-terminates every VM. Counts live in
memory (``persistent = False``): the VMs die with the process (parent-death signal).

Sandboxes of a non-default size are formatted in a VM, as LCOW did (SPEC §3, §4.5): an empty
dynamic VHDX (1 MiB blocks) is made on the host under a temporary name, attached to the VM
without a mount, formatted by the guest's mke2fs with the host template's options, detached,
and renamed into place only when all of that worked. The default size keeps coming from the
cached template (made on the host), which needs no VM.

A view over layers nobody wrote yet shows an empty root; a sandbox's ``lost+found`` and an
image's empty ``lost+found`` are hidden by a whiteout lower (``/tmp/mask``) exactly as the host
backend does, so both backends show the same trees.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lcow._util.atomic import replace_durably, temporary_path
from lcow.backends.base import LayerDisk
from lcow.backends.vm.assets import find_assets
from lcow.backends.vm.channel import Channel
from lcow.backends.vm.options import VmOptions
from lcow.backends.vm.qemu import VmConfig, accelerator, check_qemu, sweep_stale_runtime
from lcow.backends.vm.svm import GLOBAL_ID, DiskSpec, ServiceVM, VmDied, VmTable
from lcow.backends.vm.vmfs import VmFS
from lcow.errors import FailedPrecondition, LcowError
from lcow.formats.vhd.vhdx_writer import create_dynamic_vhdx
from lcow.sandboxes import exact_sandbox_size, mke2fs_options
from lcow.storage.dataroot import LAYER_META, LayerFile

__all__ = ["VmBackend", "check_prerequisites"]

log = logging.getLogger(__name__)

MASK = "/tmp/mask"
MIB = 1 << 20


def check_prerequisites(options: VmOptions) -> None:
    """Raise ``driver not supported`` naming what is missing (QEMU, the VM assets)."""
    check_qemu()
    _assets(options)


def _assets(options: VmOptions) -> VmConfig:
    assets = find_assets(
        options.kirdpath, options.kernel, options.initrd, explicit=options.kirdpath_given
    )
    return VmConfig(assets, options.boot_parameters, float(options.timeout))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _spec(disk: LayerFile) -> DiskSpec:
    spec = DiskSpec(disk.path, disk.writable)
    if not disk.writable:
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads((disk.path.parent / LAYER_META).read_bytes())
            if isinstance(meta, dict) and meta.get("root_hash"):
                spec.root_hash = str(meta["root_hash"])
                spec.hash_offset = int(meta["hash_offset"])
    return spec


@dataclass
class _View:
    """One Get-counted view and what its activation took."""

    backend: VmBackend
    layer_id: str
    disks: list[DiskSpec]
    own_writable: bool
    count: int = 1
    lock: threading.RLock = field(default_factory=threading.RLock)
    entry: ServiceVM | None = None
    keys: list[str] = field(default_factory=list)
    union: str | None = None
    path: str = ""

    @contextlib.contextmanager
    def session(self) -> Iterator[Channel]:
        """A channel to the view's VM, starting and mounting on first use (or after the VM
        died)."""
        entry = self.backend._activate(self)
        with entry.channel() as ch:
            yield ch


class VmBackend:
    """Views inside QEMU utility VMs.

    Args:
        root: the data root (scratch files go to ``scratch/``, the template to ``cache/``).
        options: mode, kernel/initrd, boot parameters, timeout.

    Raises:
        NotSupported: no QEMU or no VM assets (``driver not supported``).
    """

    name = "vm"
    writable = True
    persistent = False

    def __init__(self, root: Path, options: VmOptions) -> None:
        check_qemu()
        self.config = _assets(options)
        for stale in sweep_stale_runtime():
            log.warning("vm: removed the runtime folder of a dead VM: %s", stale)
        self.global_mode = options.global_mode
        self.accel = accelerator()
        self.table = VmTable(
            self.config, root / "scratch", root / "cache" / "scratch.vhdx", options.global_mode
        )
        self._views: dict[str, _View] = {}
        self._lock = threading.Lock()

    # -- Backend API -----------------------------------------------------------------------------

    def acquire(self, layer_id: str, disks: list[LayerDisk]) -> VmFS:
        """Count a Get; nothing starts until the view's first file operation."""
        with self._lock:
            view = self._views.get(layer_id)
            if view is not None:
                view.count += 1
                return VmFS(view)
            specs = [_spec(d.disk) for d in disks if d.disk is not None]
            own_writable = disks[0].disk is not None and disks[0].disk.writable
            view = _View(self, layer_id, specs, own_writable)
            view.path = f"/tmp/{layer_id}-mount"
            self._views[layer_id] = view
            return VmFS(view)

    def release(self, layer_id: str) -> None:
        """Count a Put; the last one unmounts, detaches and releases the VM."""
        with self._lock:
            view = self._views.get(layer_id)
            if view is None:
                return
            if view.count > 1:
                view.count -= 1
                return
            del self._views[layer_id]
        self._deactivate(view, force=False)

    def release_all(self, layer_id: str) -> None:
        """Tear the view down whatever its count; per-id mode also force-terminates the id's VM
        (Remove)."""
        with self._lock:
            view = self._views.pop(layer_id, None)
        try:
            if view is not None:
                self._deactivate(view, force=False)
        finally:
            if not self.global_mode:
                self.table.terminate(layer_id, force=True)

    def count(self, layer_id: str) -> int:
        """Outstanding Gets of ``layer_id``."""
        with self._lock:
            view = self._views.get(layer_id)
            return 0 if view is None else view.count

    def in_use(self, disk: LayerFile) -> bool:
        """Whether ``disk`` is attached to a running VM."""
        return any(e.attached(disk.path) is not None for e in self.table.entries() if not e.dead)

    @contextlib.contextmanager
    def reading(self, disk: LayerFile) -> Iterator[Path]:
        """The disk file, read consistently: a sandbox mounted in a VM is frozen there (its
        writes reach the image file, new ones wait) while the block runs."""
        frozen: list[tuple[ServiceVM, str]] = []
        if disk.writable:
            for entry in self.table.entries():
                attached = entry.attached(disk.path)
                if attached is not None:
                    entry.check_alive()
                if attached is not None and not entry.dead:
                    with entry.lock:
                        entry.call("freeze", attached.mount)
                    frozen.append((entry, attached.mount))
        try:
            yield disk.path
        finally:
            for entry, mount in frozen:
                with contextlib.suppress(LcowError, OSError):
                    entry.call("thaw", mount)

    def make_sandbox(self, target: Path, size: int) -> None:
        """Write ``target``, a sandbox of ``size`` bytes formatted inside a utility VM (SPEC §3
        CreateReadWrite, §4.5): the layer's own VM in per-id mode (torn down after, unless a
        view holds it), the global VM in global mode.

        The empty VHDX is made under a temporary name (``.sandbox.vhdx.tmp-*``, what Cleanup
        sweeps after a crash), formatted in the guest, detached, synced and only then renamed
        to ``target``; on any failure the temporary file is removed and ``target`` untouched.

        Raises:
            InvalidArgument: ``size`` below 8 MiB or above 64 TiB.
            FailedPrecondition: the VM did not start, or attaching, formatting or detaching
                failed (``lcowdriver: createreadwrite: <id>: …``; :class:`VmDied` when the VM
                died under it).
            OSError: the host file could not be written.
        """
        self.format_sandbox(target, exact_sandbox_size(size))

    def format_sandbox(self, target: Path, size: int) -> None:
        """:meth:`make_sandbox` without its size policy: whatever ``size`` (a multiple of 512)
        the guest's mke2fs accepts; its refusal is a failure like any other."""
        options = mke2fs_options(size)  # the host formatting's: the same file system
        layer_id = target.parent.name
        svm_id = GLOBAL_ID if self.global_mode else layer_id
        tmp = Path(temporary_path(target))
        started = time.monotonic()
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                create_dynamic_vhdx(fd, size, block_size=MIB)
            finally:
                os.close(fd)
            try:
                device = self._format(svm_id, tmp, options)
            except (LcowError, OSError) as exc:
                detail = str(exc)
                if "unknown command mkfs" in detail:
                    detail += " (the VM assets predate in-guest formatting: run 'lcow uvm build')"
                kind = VmDied if isinstance(exc, VmDied) else FailedPrecondition
                raise kind(
                    f"lcowdriver: createreadwrite: {layer_id}: formatting the sandbox in utility "
                    f"VM {svm_id} failed: {detail}",
                    subject=layer_id,
                ) from exc
            _fsync(tmp)
            replace_durably(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        log.info(
            "vm: createreadwrite: %s: sandbox of %d bytes formatted in utility VM %s (%s) "
            "in %.2f s",
            layer_id, size, svm_id, device, time.monotonic() - started,
        )  # fmt: skip

    def _format(self, svm_id: str, path: Path, options: list[str]) -> str:
        """Take a reference on ``svm_id``'s VM, format ``path`` there, release it (a VM that
        died is dropped; the next operation starts a fresh one)."""
        entry = self.table.start_or_join(svm_id)
        try:
            with entry.lock:
                return entry.format_disk(path, options)
        finally:
            entry.check_alive()
            if entry.dead:
                self.table.drop_dead(entry)
            else:
                self.table.terminate(svm_id)

    def cleanup(self) -> None:
        """Forget every view and force-terminate every VM; never fails."""
        with self._lock:
            views = list(self._views.values())
            self._views.clear()
        for view in views:
            with view.lock:
                view.entry = None
        self.table.shutdown_all()

    def vms(self) -> list[ServiceVM]:
        """The VMs running now (for status and tests)."""
        return [e for e in self.table.entries() if not e.dead]

    # -- activation ------------------------------------------------------------------------------

    def _svm_id(self, view: _View) -> str:
        return GLOBAL_ID if self.global_mode else view.layer_id

    def _activate(self, view: _View) -> ServiceVM:
        """Join the VM, hot-add the disks, mount the union — once per view (again after the
        VM died)."""
        with view.lock:
            entry = view.entry
            if entry is not None:
                entry.check_alive()
                if not entry.dead:
                    return entry
                view.entry = None
                self.table.drop_dead(entry)
            svm_id = self._svm_id(view)
            entry = self.table.start_or_join(svm_id)
            try:
                with entry.lock:
                    keys = entry.hot_add(view.disks)
                    try:
                        view.path, view.union = self._union(entry, view, keys)
                    except BaseException:
                        entry.hot_remove(keys)
                        raise
            except BaseException:
                entry.check_alive()
                if entry.dead:
                    self.table.drop_dead(entry)
                else:
                    self.table.terminate(svm_id)
                raise
            view.entry, view.keys = entry, keys
            return entry

    def _union(self, entry: ServiceVM, view: _View, keys: list[str]) -> tuple[str, str | None]:
        """The guest path of the view, and the union mount made for it (if any)."""
        target = f"/tmp/{view.layer_id}-mount"
        if not keys:  # nothing anywhere: an empty, read-only root
            entry.call("mkdirp", target)
            return target, None
        disks = [entry.disks[k] for k in keys]
        below = disks[1:] if view.own_writable else disks
        lowers = [f"{d.mount}/upper" if d.writable else d.mount for d in below]
        if view.own_writable and not lowers:
            return f"{disks[0].mount}/upper", None
        if not any(d.lost_found for d in below):
            lowers.insert(0, MASK)
        elif not view.own_writable and len(lowers) == 1:
            return lowers[0], None  # one layer: mounted directly (v18.03)
        entry.add_union(target, lowers, disks[0].mount if view.own_writable else None)
        return target, target

    def _deactivate(self, view: _View, *, force: bool) -> None:
        """Undo what the view's activation took: union, disks, the VM reference."""
        with view.lock:
            entry, view.entry = view.entry, None
            if entry is None:
                return
            entry.check_alive()
            if entry.dead:
                self.table.drop_dead(entry)
                return
            first: BaseException | None = None
            with entry.lock:
                try:
                    if view.union is not None:
                        entry.remove_union(view.union)
                except (LcowError, OSError) as exc:
                    first = exc
                try:
                    entry.hot_remove(view.keys)
                except (LcowError, OSError) as exc:
                    first = first or exc
            self.table.terminate(entry.id, force=force)
            if first is not None:
                if isinstance(first, VmDied):
                    return
                raise FailedPrecondition(
                    f"lcowdriver: put: {view.layer_id}: {first}", subject=view.layer_id
                ) from first
