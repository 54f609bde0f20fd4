"""What every backend offers the driver, and the file-system view Get returns (SPEC §3, §4.8).

A backend turns a layer's disk list (its own folder first, then its ancestors) into a
:class:`ContainerFS`: the union of their content with overlay semantics. The driver owns ids,
folders, counts and locks; a backend only opens and closes views.

A :class:`BackendFactory` is how a backend is found by name and built (the registry,
:mod:`lcow.backends.registry`, maps ``lcow.backend`` to one): it declares the ``lcow.*`` keys
it reads, parses them into its own :class:`BackendOptions`, says "driver not supported" before
anything is created, and builds the backend over a data root. The driver depends on these
protocols only, never on a concrete backend.
"""

from __future__ import annotations

import stat as stat_module
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

from lcow.backends.taroptions import TarOptions
from lcow.storage.dataroot import LayerFile

__all__ = [
    "Backend",
    "BackendFactory",
    "BackendOptions",
    "ContainerFS",
    "FileInfo",
    "LayerDisk",
    "go_file_mode",
]


@dataclass(frozen=True)
class LayerDisk:
    """One layer of a view: its folder and the disk holding its own content (``None`` when the
    layer has none yet — an empty layer)."""

    folder: Path
    disk: LayerFile | None


@dataclass(frozen=True)
class FileInfo:
    """``lstat``/``stat`` of one path in a view, with owners (remotefs's FileInfo had none)."""

    name: str
    size: int
    mode: int  # st_mode: type and permission bits
    mtime_ns: int
    uid: int
    gid: int
    nlink: int = 1
    rdev: int = 0
    ino: int = 0

    @property
    def is_dir(self) -> bool:
        """True for directories."""
        return stat_module.S_ISDIR(self.mode)

    def to_remotefs(self) -> dict[str, object]:
        """LCOW's remotefs JSON form (``NameVar``, ``SizeVar``, Go ``ModeVar`` …)."""
        return {
            "NameVar": self.name,
            "SizeVar": self.size,
            "ModeVar": go_file_mode(self.mode),
            "ModTimeVar": self.mtime_ns,
            "IsDirVar": self.is_dir,
        }


def go_file_mode(mode: int) -> int:
    """Go's ``os.FileMode`` for a POSIX ``st_mode`` (SPEC §4.8)."""
    value = mode & 0o777
    fmt = stat_module.S_IFMT(mode)
    value |= {
        stat_module.S_IFDIR: 1 << 31,
        stat_module.S_IFLNK: 1 << 27,
        stat_module.S_IFBLK: 1 << 26,
        stat_module.S_IFIFO: 1 << 25,
        stat_module.S_IFSOCK: 1 << 24,
        stat_module.S_IFCHR: (1 << 26) | (1 << 21),
    }.get(fmt, 0)
    if mode & stat_module.S_ISUID:
        value |= 1 << 23
    if mode & stat_module.S_ISGID:
        value |= 1 << 22
    if mode & stat_module.S_ISVTX:
        value |= 1 << 20
    return value


class ContainerFS(Protocol):
    """The object Get returns: remote file access to a layer's view (SPEC §4.8).

    The 20 remotefs operations, with snake_case names. Paths are absolute inside the view
    (``/etc/passwd``), are data (never shell text), and never reach outside the view: symlinks
    resolve as if the view's root were ``/``. Failures raise :class:`OSError` subclasses
    (``FileNotFoundError`` …) with the errno and the path inside the view, as ``os`` does.
    Read-only backends raise :class:`~lcow.errors.NotSupported` from the write operations.
    """

    @property
    def path(self) -> str:
        """Where the view lives: a host directory (host backend) or a guest path."""
        ...

    # -- reading -------------------------------------------------------------------------

    def stat(self, path: str) -> FileInfo:
        """Information about ``path``, symlinks followed (inside the view)."""
        ...

    def lstat(self, path: str) -> FileInfo:
        """Information about ``path`` itself."""
        ...

    def readlink(self, path: str) -> str:
        """A symlink's target."""
        ...

    def readdir(self, path: str) -> list[FileInfo]:
        """Entries of a directory, sorted by name."""
        ...

    def open(self, path: str) -> BinaryIO:
        """A readable binary file object (symlinks followed inside the view)."""
        ...

    def readfile(self, path: str) -> bytes:
        """A whole file."""
        ...

    def resolve_path(self, path: str) -> str:
        """``path`` with every symlink resolved, never leaving the view's root."""
        ...

    def archive_path(
        self, path: str, out: Callable[[bytes], object], options: TarOptions | None = None
    ) -> None:
        """Write a tar of ``path`` (recursively) to ``out``."""
        ...

    # -- writing (host and vm backends) ----------------------------------------------------

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        """Create one directory (its parent must exist)."""
        ...

    def mkdir_all(self, path: str, mode: int = 0o755) -> None:
        """Create a directory and any missing parents; an existing directory is fine."""
        ...

    def remove(self, path: str) -> None:
        """Remove a file, symlink, special file or empty directory."""
        ...

    def remove_all(self, path: str) -> None:
        """Remove ``path`` and everything below it; a missing path is fine."""
        ...

    def link(self, old: str, new: str) -> None:
        """Hard-link ``new`` to the existing ``old``."""
        ...

    def symlink(self, target: str, new: str) -> None:
        """Create symlink ``new`` pointing at ``target`` (stored verbatim)."""
        ...

    def lchmod(self, path: str, mode: int) -> None:
        """Set permission bits (incl. setuid/setgid/sticky) without following a symlink."""
        ...

    def lchown(self, path: str, uid: int, gid: int) -> None:
        """Set owners without following a symlink."""
        ...

    def mknod(self, path: str, mode: int, major: int, minor: int) -> None:
        """Create a device node or other special file (``mode`` includes the type)."""
        ...

    def mkfifo(self, path: str, mode: int) -> None:
        """Create a named pipe."""
        ...

    def open_file(self, path: str, flags: int, perm: int = 0o644) -> BinaryIO:
        """``os.open`` flags (``O_RDWR|O_CREAT`` …) → a binary file object with read, write,
        seek and close."""
        ...

    def write_file(self, path: str, data: bytes, perm: int = 0o644) -> None:
        """Create or truncate a file with ``data``."""
        ...

    def extract_archive(
        self, dest: str, stream: BinaryIO, options: TarOptions | None = None
    ) -> None:
        """Unpack a tar stream below directory ``dest``; entries never land outside it."""
        ...

    def close(self) -> None:
        """Release what the view object holds (not the mount: that is Put's job)."""
        ...


class Backend(Protocol):
    """Opens, counts and closes views (SPEC §3 Get/Put: per-id counts, the first Get
    prepares, the last Put undoes)."""

    name: str
    writable: bool  # views can be written: Get gives an empty layer a sandbox first
    persistent: bool  # views and their counts outlive the process (another one may Put)

    def acquire(self, layer_id: str, disks: list[LayerDisk]) -> ContainerFS:
        """Count a Get of ``layer_id``; the first opens a view over ``disks`` (own content
        first, then ancestors nearest first)."""
        ...

    def release(self, layer_id: str) -> None:
        """Count a Put; the last closes the view. Without a Get: nothing."""
        ...

    def release_all(self, layer_id: str) -> None:
        """Close the view whatever its count (Remove)."""
        ...

    def count(self, layer_id: str) -> int:
        """Outstanding Gets of ``layer_id``."""
        ...

    def in_use(self, disk: LayerFile) -> bool:
        """Whether a view holds ``disk`` so that it must not be replaced."""
        ...

    def reading(self, disk: LayerFile) -> AbstractContextManager[Path]:
        """A path to read ``disk``'s image consistently from while the block runs (a
        mounted, writable disk is flushed and held still)."""
        ...

    def make_sandbox(self, target: Path, size: int) -> None:
        """Write ``target``: a new dynamic VHDX of ``size`` bytes holding an empty ext4 with
        LCOW's features (SPEC §4.5), for sizes the template cache does not serve."""
        ...

    def cleanup(self) -> None:
        """Release everything the backend holds (never fails)."""
        ...


class BackendOptions(Protocol):
    """A backend's own settings, parsed by its factory from InitDriver's ``lcow.*`` options.

    A frozen dataclass in practice (``VmOptions``, ``HostOptions`` …). The driver never looks
    inside: it hands what :meth:`BackendFactory.parse_options` returned back to the same
    factory's :meth:`~BackendFactory.check` and :meth:`~BackendFactory.create`.
    """


OptionsT = TypeVar("OptionsT", bound=BackendOptions)


class BackendFactory(Protocol[OptionsT]):
    """Builds one kind of backend from InitDriver's options (SPEC §2, §3 InitDriver).

    Registered under a name (``lcow.backend=<name>``) in :mod:`lcow.backends.registry`: the
    built-ins ``userspace``, ``host`` and ``vm``, or a third party's through the
    ``lcow.backends`` entry-point group.
    """

    @property
    def option_keys(self) -> frozenset[str]:
        """The ``lcow.*`` keys (lower case) this backend reads; with the driver's own, the
        keys InitDriver accepts when this backend is chosen."""
        ...

    def parse_options(self, pairs: Mapping[str, str], *, root: Path) -> OptionsT:
        """This backend's settings from InitDriver's options.

        Args:
            pairs: every ``key=value`` option, keys stripped and lower-cased.
            root: the data root (defaults may be placed below it); not created yet.

        Raises:
            InvalidArgument: a bad value, with a message naming the key.
        """
        ...

    def check(self, options: OptionsT) -> None:
        """Raise :class:`~lcow.errors.NotSupported` (``driver not supported: …``) naming what
        this host lacks; called before the data root is created."""
        ...

    def create(self, root: Path, options: OptionsT) -> Backend:
        """The backend over the data root ``root`` (which exists by now)."""
        ...
