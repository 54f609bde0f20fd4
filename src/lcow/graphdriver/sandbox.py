"""Sandbox templates: an empty ext4 in a dynamic VHDX, made without a VM (SPEC §4.5, §7.2).

LCOW formatted a fresh ``sandbox.vhdx`` inside its utility VM with::

    mkfs.ext4 -q -E lazy_itable_init=1 -O ^has_journal,sparse_super2,uninit_bg,^resize_inode

The Project decision asks VM-less formatting to be equivalent: no journal, no resize inode,
sparse_super2, lazily initialised groups, 4 KiB blocks and 256-byte inodes. Here ``mke2fs`` from
e2fsprogs formats a sparse raw file of ``size_gb · 2^30`` bytes beside the target, and
:func:`~lcow.formats.vhd.vhdx_writer.raw_to_dynamic_vhdx` packs it into a dynamic VHDX with
1 MiB blocks (only blocks holding a non-zero byte are stored). The VHDX appears under its name
only when complete (temporary name, fsync, rename); the raw file is always removed (after a
SIGKILL its ``.<name>.tmp-*`` leftovers are what Cleanup sweeps). :func:`copy_sandbox` copies a
template keeping its holes (``copy_file_range`` on ext4 would make the copy dense) and never
overwrites.

**Feature flags (our choice).** The in-VM ``mkfs.ext4`` used whatever defaults the opengcs
image's ``mke2fs.conf`` had, so LCOW's exact feature set is not pinned anywhere. We pin it, so
the host's ``/etc/mke2fs.conf`` (Debian 12: ``metadata_csum``, ``64bit``; 1.47: ``orphan_file``)
cannot leak in: ``-O none,`` + :data:`EXT4_FEATURES` — e2fsprogs' classic ext4 set
(``ext_attr dir_index filetype extent flex_bg sparse_super large_file huge_file dir_nlink
extra_isize``) with LCOW's edits applied (no ``has_journal``, no ``resize_inode``, plus
``sparse_super2`` and ``uninit_bg``). No ``metadata_csum``: mke2fs silently drops ``uninit_bg``
when ``metadata_csum`` is on, so LCOW's explicit ``uninit_bg`` implies a checksum-less group
descriptor layout, and leaving it out keeps the sandbox mountable by older guest kernels (< 3.18)
and matches the read-only layers tar2ext4 writes. ``64bit`` is added only when the block count
needs it (sandboxes over 16 TiB). Blocks are 4 KiB, inodes 256 bytes, the bytes-per-inode
ratio follows the stock ``mke2fs.conf`` size classes (16 KiB below 4 TiB, 32 KiB below 16 TiB,
64 KiB above), reserved blocks 5 %, root directory owned by 0:0, default mount options
``user_xattr,acl``. A private ``mke2fs.conf`` (``MKE2FS_CONFIG``) pins the remaining profile
settings; ``MKE2FS_*``/``E2FSPROGS_*`` variables of the caller are not passed on.

``-E lazy_itable_init=1,nodiscard`` keeps mke2fs from zeroing inode tables or discarding (which
on a file punches holes everywhere): a 20 GB template is made in well under a second and
occupies a few hundred KiB.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence

from lcow._util.atomic import atomic_output
from lcow.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotSupported
from lcow.formats.vhd.vhdx_writer import MAX_VIRTUAL_SIZE, raw_to_dynamic_vhdx

__all__ = [
    "BLOCK_SIZE",
    "EXT4_FEATURES",
    "INODE_SIZE",
    "MAX_SANDBOX_GB",
    "MIN_SANDBOX_GB",
    "MKE2FS_CONF",
    "MkfsFailed",
    "copy_sandbox",
    "make_sandbox",
    "make_sandbox_template",
    "mke2fs_argv",
    "sandbox_size_bytes",
]

GIB = 1 << 30
TIB = 1 << 40
MIN_SANDBOX_GB = 20  # LCOW's default and minimum (lcow.sandboxsize)
MIN_EXACT_SIZE = 8 << 20  # smallest exact size (Docker's ``size``) accepted
MAX_SANDBOX_GB = MAX_VIRTUAL_SIZE // GIB  # 65536: the VHDX limit of 64 TiB
BLOCK_SIZE = 4096
INODE_SIZE = 256
EXT4_FEATURES = (
    "ext_attr",
    "dir_index",
    "filetype",
    "extent",
    "flex_bg",
    "sparse_super",
    "sparse_super2",
    "large_file",
    "huge_file",
    "dir_nlink",
    "extra_isize",
    "uninit_bg",
)
_RESERVED_PERCENT = 5
_MAX_32BIT_BLOCKS = (1 << 32) - 1
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
_MIB = 1 << 20
_COPY_CHUNK = _MIB

# Only what the command line does not already fix; "ext4" must exist or mke2fs -t ext4 aborts.
MKE2FS_CONF = """\
[defaults]
\tbase_features = sparse_super,large_file,filetype,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384
\thash_alg = half_md4
\tlazy_itable_init = true
\tauto_64-bit_support = 0

[fs_types]
\text4 = {
\t\tfeatures = extent
\t}
\tdefault = {
\t\tinode_ratio = 16384
\t}
\tbig = {
\t\tinode_ratio = 32768
\t}
\thuge = {
\t\tinode_ratio = 65536
\t}
"""


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


def sandbox_size_bytes(size_gb: int) -> int:
    """Bytes of a sandbox of ``size_gb`` GB (2^30 bytes each).

    Raises:
        InvalidArgument: ``size_gb`` is below 20 (LCOW's minimum) or above 65536 (VHDX's 64 TiB).
    """
    if isinstance(size_gb, bool) or not isinstance(size_gb, int):
        raise InvalidArgument(f"sandbox size {size_gb!r} is not a whole number of GB")
    if size_gb < MIN_SANDBOX_GB:
        raise InvalidArgument(
            f"sandbox size {size_gb} GB is less than the minimum of {MIN_SANDBOX_GB} GB",
            subject=str(size_gb),
        )
    if size_gb > MAX_SANDBOX_GB:
        raise InvalidArgument(
            f"sandbox size {size_gb} GB is more than the VHDX maximum of {MAX_SANDBOX_GB} GB "
            "(64 TiB)",
            subject=str(size_gb),
        )
    return size_gb * GIB


def _inode_ratio(size: int) -> int:
    """Bytes per inode as the stock mke2fs.conf size classes give it (default, big, huge)."""
    if size < 4 * TIB:
        return 16384
    if size < 16 * TIB:
        return 32768
    return 65536


def mke2fs_argv(mke2fs: str, device: str, size: int) -> list[str]:
    """The ``mke2fs`` command that formats ``device`` (``size`` bytes) as a sandbox.

    Args:
        mke2fs: path of the mke2fs binary.
        device: the raw file or block device.
        size: bytes to format (a multiple of 4096).

    Returns:
        The argument vector.
    """
    blocks = size // BLOCK_SIZE
    features = list(EXT4_FEATURES)
    if blocks > _MAX_32BIT_BLOCKS:
        features.append("64bit")
    return [
        mke2fs,
        "-q",
        "-F",
        "-t",
        "ext4",
        "-b",
        str(BLOCK_SIZE),
        "-I",
        str(INODE_SIZE),
        "-i",
        str(_inode_ratio(size)),
        "-m",
        str(_RESERVED_PERCENT),
        "-O",
        "none," + ",".join(features),
        "-E",
        "lazy_itable_init=1,nodiscard,root_owner=0:0",
        device,
        str(blocks),
    ]


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
    if size < MIN_EXACT_SIZE or size > MAX_VIRTUAL_SIZE:
        raise InvalidArgument(
            f"sandbox size {size} bytes is outside {MIN_EXACT_SIZE} bytes .. {MAX_SANDBOX_GB} GB",
            subject=str(size),
        )
    _make(path, -(-size // _MIB) * _MIB)


def _make(path: str | os.PathLike[str], size: int) -> None:
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


def _copy_data(src_fd: int, dst_fd: int, size: int) -> None:
    """Copy the data extents of ``src_fd`` into ``dst_fd``, leaving holes (and zeros) as holes."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(src_fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            start, end = pos, size  # no hole support: everything is data
        else:
            end = min(os.lseek(src_fd, start, os.SEEK_HOLE), size)
        while start < end:
            chunk = os.pread(src_fd, min(_COPY_CHUNK, end - start), start)
            if not chunk:
                raise OSError(errno.EIO, "source file shrank while being copied")
            if chunk != bytes(len(chunk)):
                view = memoryview(chunk)
                offset = start
                while view:
                    n = os.pwrite(dst_fd, view, offset)
                    view = view[n:]
                    offset += n
            start += len(chunk)
        pos = end


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_sandbox(template: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy a sandbox template to ``dst`` keeping it sparse; never overwrites (SPEC §4.5).

    The copy is written under a temporary name, synced, then hard-linked to ``dst`` (which fails
    if ``dst`` exists, also when another process created it meanwhile) and the temporary name
    removed, so ``dst`` is either complete or absent.

    Raises:
        AlreadyExists: ``dst`` exists.
        OSError: reading or writing failed (``FileNotFoundError`` without a template).
    """
    target = os.fspath(dst)
    if os.path.lexists(target):
        raise AlreadyExists(f"{target}: sandbox already exists", subject=target)
    directory = os.path.dirname(target) or "."
    tmp = os.path.join(directory, f".{os.path.basename(target)}.tmp-{secrets.token_hex(6)}")
    src_fd = os.open(template, os.O_RDONLY | os.O_CLOEXEC)
    try:
        out_fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(src_fd).st_size
            os.ftruncate(out_fd, size)
            _copy_data(src_fd, out_fd, size)
            os.fsync(out_fd)
        finally:
            os.close(out_fd)
        try:
            os.link(tmp, target)
        except FileExistsError as exc:
            raise AlreadyExists(f"{target}: sandbox already exists", subject=target) from exc
        _fsync_dir(directory)
    finally:
        os.close(src_fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
