"""The data root exactly as LCOW lays it out (SPEC §1.1-§1.3).

::

    <root>/                 0700, made by init
      cache/ scratch/       0700; cache/sandbox.vhdx is the blank sandbox template
                            (cache/sandbox.img the raw one, made when first needed)
      <id>/                 one folder per layer (0700)
        layer.vhd           read-only layer: ext4 + fixed VHD footer (ApplyDiff)
        sandbox.vhdx        writable layer (CreateReadWrite, or Get on a Create-only layer)
        sandbox.img         lcow only: a throwaway writable layer, raw ext4 (see LayerFile)
        layerchain.json     ancestors' folders, nearest first; ``null`` for a base
        lcow-layer.json     lcow's own metadata (content size, verity root); Windows ignores it
      <id>-removing/        transient during Remove; swept by Cleanup

This module knows nothing of ext4: it maps ids to paths, reads and writes chains, and removes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lcow._util.atomic import atomic_output, fsync_dir, is_temporary, temporary_path
from lcow.errors import (
    AlreadyExists,
    CorruptImage,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)

__all__ = [
    "ID_MAX_LEN",
    "LAYER_CHAIN",
    "LAYER_META",
    "LAYER_VHD",
    "REMOVING_SUFFIX",
    "SANDBOXES",
    "SANDBOX_RAW",
    "SANDBOX_VHDX",
    "DataRoot",
    "LayerFile",
    "is_valid_id",
    "validate_id",
]

log = logging.getLogger(__name__)

LAYER_VHD = "layer.vhd"
SANDBOX_VHDX = "sandbox.vhdx"
SANDBOX_RAW = "sandbox.img"
SANDBOXES = (SANDBOX_VHDX, SANDBOX_RAW)
LAYER_CHAIN = "layerchain.json"
LAYER_META = "lcow-layer.json"
REMOVING_SUFFIX = "-removing"
# Folders of the root that are not layers: the sandbox template cache, VM scratch disks, and the
# host backend's mount points and table (lcow.backends.host).
RESERVED = frozenset({"cache", "scratch", "mounts"})
#: Longest id: ``.<id>.tmp-<12 hex>`` and the host backend's derived names stay far below
#: NAME_MAX (255); Docker's longest ids (``<64 hex>-init``) are 69 characters.
ID_MAX_LEN = 128
_ID_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{ID_MAX_LEN - 1}}}\Z")
_DIR_MODE = 0o700


def validate_id(layer_id: str) -> str:
    """Return ``layer_id`` if it is a valid layer id, else raise :class:`InvalidArgument`.

    The rule (SPEC §3 project decision, tightened): 1 to :data:`ID_MAX_LEN` characters of
    ``A-Z a-z 0-9 _ . -``, the first a letter or digit, not ending in ``-removing`` and not one of
    the root's own folders. Docker's ids (64 hex digits, ``<hex>-init``) and moby's graphtest
    names pass; no id can collide with a name the driver makes for itself (temporaries start
    with ``.``, removals end in ``-removing``), and every id fits the longest derived file name
    within ``NAME_MAX``.
    """
    if isinstance(layer_id, str) and len(layer_id) > ID_MAX_LEN:
        raise InvalidArgument(
            f"invalid layer id '{layer_id[:32]}...': {len(layer_id)} characters, more than "
            f"{ID_MAX_LEN}",
            subject=layer_id[:32],
        )
    if not isinstance(layer_id, str) or not _ID_PATTERN.match(layer_id):
        raise InvalidArgument(
            f"invalid layer id '{layer_id}': an id is 1-{ID_MAX_LEN} characters of A-Z, a-z, "
            "0-9, '_', '.' and '-', starting with a letter or digit",
            subject=str(layer_id),
        )
    if layer_id.endswith(REMOVING_SUFFIX) or layer_id in RESERVED:
        raise InvalidArgument(
            f"invalid layer id '{layer_id}': the data root uses that name itself",
            subject=layer_id,
        )
    return layer_id


def is_valid_id(name: str) -> bool:
    """Whether ``name`` passes :func:`validate_id` (folders of the root that are layers)."""
    try:
        validate_id(name)
    except InvalidArgument:
        return False
    return True


@dataclass(frozen=True)
class LayerFile:
    """The disk holding a folder's own content."""

    path: Path
    writable: bool  # a sandbox (True) or layer.vhd (False)

    @property
    def raw(self) -> bool:
        """A ``sandbox.img``: an empty ext4 in a sparse raw file rather than in a VHDX.

        lcow's own, for a writable layer whose content is only ever exported (containerd's
        unpack snapshots, converted at Commit and discarded): the host backend loop-mounts the
        file itself, with no storage daemon and no FUSE export between, and nothing needs the
        VHDX a VM would attach. The file is as durable as the VHDX (the loop device passes the
        file system's flushes on as ``fsync``)."""
        return self.path.name == SANDBOX_RAW


class DataRoot:
    """Paths and on-disk records of one data root."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.abspath(root))
        self.cache = self.root / "cache"
        self.scratch = self.root / "scratch"

    def create(self) -> None:
        """Make the root, ``cache/`` and ``scratch/`` (0700); drop stale scratch disks."""
        for path in (self.root, self.cache, self.scratch):
            try:
                path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            except OSError as exc:
                raise FailedPrecondition(
                    f"lcowdriver: init: failed to create '{path}': {exc.strerror}",
                    subject=str(path),
                ) from exc
        for stale in self.scratch.glob("**/*.vhdx"):
            log.info("lcowdriver: init: deleting stale scratch file %s", stale)
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    # -- paths -------------------------------------------------------------------------------

    def layer_dir(self, layer_id: str) -> Path:
        """``dir(id)``: the folder of a layer."""
        return self.root / validate_id(layer_id)

    def removing_dir(self, layer_id: str) -> Path:
        """Where a layer folder goes while it is being deleted."""
        return self.root / (validate_id(layer_id) + REMOVING_SUFFIX)

    def resolve_folder(self, recorded: str) -> Path:
        """A chain entry resolved by its last component against this root (moved roots and
        Windows-written chains keep working)."""
        name = recorded.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
        return self.root / validate_id(name)

    def layer_ids(self) -> list[str]:
        """Ids of every layer folder, sorted."""
        ids = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root):
                if entry.is_dir(follow_symlinks=False) and is_valid_id(entry.name):
                    ids.append(entry.name)
        return sorted(ids)

    # -- layerchain.json ---------------------------------------------------------------------

    def read_chain(self, layer_id: str) -> list[Path]:
        """Ancestor folders, nearest first (empty for a base or a missing file)."""
        path = self.layer_dir(layer_id) / LAYER_CHAIN
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise FailedPrecondition(
                f"lcowdriver: getlayerchain: {layer_id} unable to read layerchain file {path}: "
                f"{exc.strerror}",
                subject=layer_id,
            ) from exc
        try:
            value = json.loads(data)
            if value is None:
                return []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError("expected an array of strings or null")
            return [self.resolve_folder(v) for v in value]
        except (ValueError, RecursionError) as exc:  # InvalidArgument is a ValueError
            raise CorruptImage(
                f"lcowdriver: getlayerchain: {layer_id} failed to unmarshall layerchain file "
                f"{path}: {exc}",
                subject=layer_id,
            ) from exc

    def write_chain(
        self, layer_id: str, chain: list[Path], *, folder: Path | None = None, fsync: bool = False
    ) -> None:
        """Write ``layerchain.json`` (0600): absolute POSIX paths, ``null`` for a base.

        ``folder`` overrides where it goes (a layer folder still being built); ``fsync``
        syncs it before its rename (a staged layer's, published with its image).
        """
        folder = folder or self.layer_dir(layer_id)
        value = [str(p) for p in chain] if chain else None
        data = json.dumps(value, separators=(",", ":")).encode()
        try:
            with atomic_output(folder / LAYER_CHAIN, mode=0o600, fsync=fsync) as fd:
                os.write(fd, data)
        except OSError as exc:
            raise FailedPrecondition(
                f"lcowdriver: setlayerchain: {layer_id} failed to write layerchain file: "
                f"{exc.strerror}",
                subject=layer_id,
            ) from exc

    # -- layer files and metadata -----------------------------------------------------------

    @staticmethod
    def layer_file(folder: Path) -> LayerFile | None:
        """The folder's ``layer.vhd``, else its sandbox (``sandbox.vhdx`` or ``sandbox.img``),
        else ``None``."""
        vhd = folder / LAYER_VHD
        if vhd.exists():
            return LayerFile(vhd, writable=False)
        for name in SANDBOXES:
            if (folder / name).exists():
                return LayerFile(folder / name, writable=True)
        return None

    @staticmethod
    def require_layer_file(folder: Path) -> LayerFile:
        """Like :meth:`layer_file` but a folder without one is an error (LCOW's message)."""
        found = DataRoot.layer_file(folder)
        if found is None:
            raise NotFound(f"failed to locate layer or sandbox in {folder}", subject=str(folder))
        return found

    def read_meta(self, layer_id: str) -> dict[str, Any]:
        """lcow's own per-layer metadata (empty when absent or unreadable)."""
        try:
            value = json.loads((self.layer_dir(layer_id) / LAYER_META).read_bytes())
        except (OSError, ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            return {}
        return value if isinstance(value, dict) else {}

    def write_meta(
        self, layer_id: str, meta: dict[str, Any], *, folder: Path | None = None
    ) -> None:
        """Replace lcow's own per-layer metadata atomically and durably (ApplyDiff writes it
        before it renames the image it describes into place). ``folder`` overrides where it
        goes (a staged layer folder)."""
        target = (folder or self.layer_dir(layer_id)) / LAYER_META
        with atomic_output(target, mode=0o600, fsync=True) as fd:
            os.write(fd, json.dumps(meta, sort_keys=True).encode())

    # -- removal -----------------------------------------------------------------------------

    def remove_layer(self, layer_id: str) -> None:
        """Rename the folder to ``<id>-removing`` (missing is fine), then delete it."""
        folder = self.layer_dir(layer_id)
        removing = self.removing_dir(layer_id)
        try:
            os.rename(folder, removing)
        except FileNotFoundError:
            if not removing.exists():
                return
        except OSError as exc:
            if removing.exists():  # a previous removal was interrupted; finish both
                shutil.rmtree(removing, ignore_errors=True)
                os.rename(folder, removing)
            else:
                raise FailedPrecondition(
                    f"lcowdriver: remove: {layer_id}: {exc}", subject=layer_id
                ) from exc
        shutil.rmtree(removing)

    def retire_layer(self, layer_id: str) -> Path | None:
        """Remove's commit point without the deletion: rename the folder to a ``-removing``
        name of its own, which the caller deletes later (:meth:`sweep_removing` deletes what a
        crash leaves). Returns that name; None when there was no folder (an interrupted
        removal's ``<id>-removing`` is then finished as :meth:`remove_layer` does)."""
        folder = self.layer_dir(layer_id)
        retired = self.root / f"{layer_id}.{secrets.token_hex(6)}{REMOVING_SUFFIX}"
        try:
            os.rename(folder, retired)
        except OSError:
            self.remove_layer(layer_id)  # missing, or an error it reports with its subject
            return None
        return retired

    def sweep_removing(self) -> list[str]:
        """Delete every ``*-removing`` directory; returns the names that could not be removed."""
        failed = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root):
                if entry.name.endswith(REMOVING_SUFFIX) and entry.is_dir(follow_symlinks=False):
                    try:
                        shutil.rmtree(entry.path)
                    except OSError as exc:
                        log.warning("lcowdriver: cleanup failed to cleanup %s: %s", entry.name, exc)
                        failed.append(entry.name)
        return failed

    def new_folder(self, layer_id: str, chain: list[Path]) -> None:
        """Create ``dir(id)`` with its chain in one step: built under a temporary name, then
        renamed, so a crash never leaves a layer folder without its ``layerchain.json``."""
        folder = self.layer_dir(layer_id)
        tmp = Path(temporary_path(folder))
        tmp.mkdir(mode=_DIR_MODE)
        try:
            self.write_chain(layer_id, chain, folder=tmp)
            os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def stage_folder(self, layer_id: str) -> Path:
        """A new hidden folder in the root to build layer ``layer_id`` in, out of sight
        (``.<id>.tmp-<hex>``: not a layer id, so no listing shows it, and Cleanup sweeps it
        once no writer holds the layer's lock). :meth:`publish_folder` makes it the layer."""
        folder = Path(temporary_path(self.layer_dir(validate_id(layer_id))))
        folder.mkdir(mode=_DIR_MODE)
        return folder

    def publish_folder(self, stage: Path, layer_id: str, chain: list[Path]) -> None:
        """Make the staged folder ``stage`` the layer ``layer_id`` over ``chain``: its
        ``layerchain.json`` written, everything in it synced, then one durable rename. Call
        with the layer's lock and the root lock held; the layer must not exist.

        Raises:
            AlreadyExists: a folder of that id appeared (nothing is replaced).
        """
        folder = self.layer_dir(layer_id)
        self.write_chain(layer_id, chain, folder=stage, fsync=True)
        fsync_dir(stage)  # the entries of the files written in it (their data is synced)
        if folder.exists():  # checked under the locks every creator takes
            raise AlreadyExists(f"lcowdriver: layer {layer_id} already exists", subject=layer_id)
        os.rename(stage, folder)
        fsync_dir(self.root)

    @staticmethod
    def staged_id(name: str) -> str | None:
        """The layer id a root temporary ``name`` is built for (``None``: not a layer's)."""
        if not is_temporary(name):
            return None
        target = name[1:].rsplit(".tmp-", 1)[0]
        return target if is_valid_id(target) else None

    def sweep_root_temporaries(self, in_use: Callable[[str], bool] | None = None) -> None:
        """Delete the temporary layer folders (and files) interrupted writes left in the root.
        Call with the root lock held: :meth:`new_folder` builds its folders there. A staged
        layer folder (:meth:`stage_folder`) is built without the root lock, under its layer's:
        it is left alone while ``in_use(layer id)`` says a writer holds that lock."""
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root):
                if not is_temporary(entry.name):
                    continue
                staged = self.staged_id(entry.name)
                if staged is not None and in_use is not None and in_use(staged):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    @staticmethod
    def sweep_folder(folder: Path) -> None:
        """Delete what interrupted writes left in a layer folder (or ``cache/``): temporary
        files, and a sandbox beside a ``layer.vhd`` (ApplyDiff renames the new image
        into place, then deletes the sandbox it replaces; ``layer.vhd`` wins, so the sandbox is
        never read again). Call with the folder's layer lock held."""
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(folder):
                if is_temporary(entry.name):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
        if (folder / LAYER_VHD).exists():
            for name in SANDBOXES:
                with contextlib.suppress(OSError):
                    (folder / name).unlink()
