"""The ext4 a sandbox holds: LCOW's mkfs flags pinned, as ``mke2fs`` options (SPEC §4.5).

LCOW formatted a fresh ``sandbox.vhdx`` inside its utility VM with::

    mkfs.ext4 -q -E lazy_itable_init=1 -O ^has_journal,sparse_super2,uninit_bg,^resize_inode

The Project decision asks VM-less formatting to be equivalent: no journal, no resize inode,
sparse_super2, lazily initialised groups, 4 KiB blocks and 256-byte inodes. The host
(:mod:`lcow.sandboxes.make`) and the vm backend's guest use the same options from here, so
every backend makes the same file system.

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
``user_xattr,acl``. A private ``mke2fs.conf`` (:data:`MKE2FS_CONF`, passed as
``MKE2FS_CONFIG``) pins the remaining profile settings.

``-E lazy_itable_init=1,nodiscard`` keeps mke2fs from zeroing inode tables or discarding (which
on a file punches holes everywhere): a 20 GB template is made in well under a second and
occupies a few hundred KiB.
"""

from __future__ import annotations

__all__ = [
    "BLOCK_SIZE",
    "EXT4_FEATURES",
    "INODE_SIZE",
    "MKE2FS_CONF",
    "mke2fs_argv",
    "mke2fs_options",
]

TIB = 1 << 40
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


def _inode_ratio(size: int) -> int:
    """Bytes per inode as the stock mke2fs.conf size classes give it (default, big, huge)."""
    if size < 4 * TIB:
        return 16384
    if size < 16 * TIB:
        return 32768
    return 65536


def mke2fs_options(size: int) -> list[str]:
    """The ``mke2fs`` options that format a ``size``-byte disk as a sandbox, without the
    binary, the device and the block count (the vm guest's agent appends the device and
    formats all of it).

    Args:
        size: bytes to format (a multiple of 4096).
    """
    features = list(EXT4_FEATURES)
    if size // BLOCK_SIZE > _MAX_32BIT_BLOCKS:
        features.append("64bit")
    return [
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
    ]


def mke2fs_argv(mke2fs: str, device: str, size: int) -> list[str]:
    """The ``mke2fs`` command that formats ``device`` (``size`` bytes) as a sandbox.

    Args:
        mke2fs: path of the mke2fs binary.
        device: the raw file or block device.
        size: bytes to format (a multiple of 4096).

    Returns:
        The argument vector.
    """
    return [mke2fs, *mke2fs_options(size), device, str(size // BLOCK_SIZE)]
