"""Sandbox templates: an empty ext4 in a dynamic VHDX, made without a VM (SPEC §4.5, §7.2).

``mke2fs`` from e2fsprogs formats a sparse raw file beside the target with the options of
:mod:`lcow.sandboxes.fsprofile`, and :func:`~lcow.formats.vhd.vhdx_writer.raw_to_dynamic_vhdx`
packs it into a dynamic VHDX with 1 MiB blocks (only blocks holding a non-zero byte are
stored). The VHDX appears under its name only when complete (temporary name, fsync, rename);
the raw file is always removed (after a SIGKILL its ``.<name>.tmp-*`` leftovers are what
Cleanup sweeps). The private ``mke2fs.conf`` is written beside the raw file, and the caller's
``MKE2FS_*``/``E2FSPROGS_*`` variables are not passed on.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence

from lcow._util.atomic import atomic_output, fsync_dir
from lcow.errors import FailedPrecondition, NotSupported
from lcow.formats.vhd.vhdx_writer import raw_to_dynamic_vhdx
from lcow.sandboxes.fsprofile import MKE2FS_CONF, mke2fs_argv
from lcow.sandboxes.sizes import MIN_SANDBOX_GB, exact_sandbox_size, sandbox_size_bytes

__all__ = ["MkfsFailed", "make_raw_sandbox", "make_sandbox", "make_sandbox_template"]

_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


class MkfsFailed(FailedPrecondition):
    """``mke2fs`` is missing or exited non-zero.

    Attributes:
        argv: the command run (empty when mke2fs was not found).
        returncode: its exit status (``None`` when it did not run).
        stderr: its diagnostics.
    """

    def __init__(
        self,
        message: str,
        *,
        subject: str | None = None,
        argv: Sequence[str] = (),
        returncode: int | None = None,
        stderr: str = "",
    ) -> None:
        super().__init__(message, subject=subject)
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


def _find_mke2fs() -> str:
    path = shutil.which("mke2fs") or shutil.which("mke2fs", path=_SBIN)
    if path is None:
        raise MkfsFailed("mke2fs not found: install e2fsprogs to create sandboxes")
    return path


def _mkfs_env(conf: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MKE2FS_", "E2FSPROGS_"))}
    env["MKE2FS_CONFIG"] = conf
    env["LC_ALL"] = "C"
    return env


def _run_mke2fs(raw: str, conf: str, size: int) -> None:
    # mke2fs gets the file as an inherited descriptor (/dev/fd/N), never by path: if this
    # process is killed and Cleanup deletes the temporary, an orphaned mke2fs keeps writing to
    # the unlinked inode instead of creating the file again.
    fd = os.open(raw, os.O_RDWR | os.O_CLOEXEC)
    try:
        argv = mke2fs_argv(_find_mke2fs(), f"/dev/fd/{fd}", size)
        try:
            proc = subprocess.run(
                argv, capture_output=True, env=_mkfs_env(conf), check=False, pass_fds=(fd,)
            )
        finally:
            os.close(fd)
    except OSError as exc:
        raise MkfsFailed(f"{argv[0]}: cannot run: {exc.strerror}", argv=argv) from exc
    if proc.returncode != 0:
        stderr = proc.stderr.decode("utf-8", "replace").strip()
        raise MkfsFailed(
            f"{raw}: mke2fs failed with exit code {proc.returncode}: {stderr}",
            subject=raw,
            argv=argv,
            returncode=proc.returncode,
            stderr=stderr,
        )


def _sparse_file(path: str, size: int) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            raise NotSupported(
                f"{path}: the file system here cannot hold a sparse file of {size} bytes",
                subject=path,
            ) from exc
        raise
    finally:
        os.close(fd)


def make_sandbox_template(path: str | os.PathLike[str], size_gb: int = MIN_SANDBOX_GB) -> None:
    """Write ``path``: a dynamic VHDX (1 MiB blocks) of ``size_gb`` GB holding an empty ext4.

    An existing file at ``path`` is replaced atomically (LCOW re-seeds its cache by overwriting).

    Args:
        path: the VHDX to write (e.g. ``<root>/cache/sandbox.vhdx``); its directory must exist.
        size_gb: virtual size in GB (2^30 bytes), 20..65536.

    Raises:
        InvalidArgument: bad ``size_gb``.
        MkfsFailed: mke2fs is missing or failed.
        NotSupported: the directory's file system cannot hold the sparse raw file.
        OSError: writing failed.
    """
    _make(path, sandbox_size_bytes(size_gb))


def make_sandbox(path: str | os.PathLike[str], size: int | None = None) -> None:
    """:func:`make_sandbox_template` with the size in bytes, as the driver's options give it.

    Args:
        path: the VHDX to write; its directory must exist.
        size: virtual size in bytes (rounded up to a 1 MiB multiple), or ``None`` for 20 GB.

    An explicit size may be below LCOW's 20 GB minimum (that minimum belongs to
    ``lcow.sandboxsize``): Docker's generic ``size`` option asks for an exact quota such as
    ``512M``.

    Raises:
        InvalidArgument: ``size`` below 8 MiB (too small for a useful ext4) or above 64 TiB.
        MkfsFailed: mke2fs is missing or failed.
        NotSupported: the directory's file system cannot hold the sparse raw file.
        OSError: writing failed.
    """
    if size is None:
        _make(path, sandbox_size_bytes(MIN_SANDBOX_GB))
        return
    _make(path, exact_sandbox_size(size))


def make_raw_sandbox(path: str | os.PathLike[str], size: int | None = None) -> None:
    """:func:`make_sandbox`, but the ext4 stays in its sparse raw file, which becomes ``path``
    (a ``sandbox.img``; see :attr:`lcow.storage.dataroot.LayerFile.raw`).

    Raises:
        As :func:`make_sandbox`.
    """
    _make(path, exact_sandbox_size(size) if size is not None else
          sandbox_size_bytes(MIN_SANDBOX_GB), vhdx=False)  # fmt: skip


def _make(path: str | os.PathLike[str], size: int, *, vhdx: bool = True) -> None:
    target = os.path.abspath(path)  # absolute: never read as an option by mke2fs
    directory = os.path.dirname(target)
    stem = f".{os.path.basename(target)}.tmp-{secrets.token_hex(6)}"  # swept by Cleanup
    raw = os.path.join(directory, stem + ".raw")
    conf = os.path.join(directory, stem + ".mke2fs.conf")
    try:
        with open(conf, "x", encoding="ascii") as f:
            f.write(MKE2FS_CONF)
        _sparse_file(raw, size)
        _run_mke2fs(raw, conf, size)
        if not vhdx:
            fd = os.open(raw, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(raw, target)
            fsync_dir(directory)
            return
        raw_fd = os.open(raw, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with atomic_output(target, fsync=True, mode=0o600) as out_fd:
                raw_to_dynamic_vhdx(raw_fd, out_fd, size)
        finally:
            os.close(raw_fd)
    finally:
        for leftover in (raw, conf):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
