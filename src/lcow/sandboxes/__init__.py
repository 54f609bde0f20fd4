"""Sandboxes: the empty ext4-in-VHDX a writable layer starts from (SPEC §4.5, §7.2).

Below both the graph driver and the backends: the driver caches a default-size template and
copies it, a backend makes other sizes (on the host here, or in a VM with the same options).

- :mod:`.fsprofile` — the file system: LCOW's ``mke2fs`` features and options, pinned.
- :mod:`.sizes` — the size policy: LCOW's GB sizes, Docker's exact ones, the VHDX limit.
- :mod:`.make` — ``mke2fs`` on a sparse raw file, packed into a dynamic VHDX (or, for a
  sandbox only ever exported, kept raw: ``sandbox.img``).
- :mod:`.copies` — a sparse, atomic copy of a template.
"""

from __future__ import annotations

from lcow.sandboxes.copies import copy_sandbox
from lcow.sandboxes.fsprofile import (
    BLOCK_SIZE,
    EXT4_FEATURES,
    INODE_SIZE,
    MKE2FS_CONF,
    mke2fs_argv,
    mke2fs_options,
)
from lcow.sandboxes.make import MkfsFailed, make_raw_sandbox, make_sandbox, make_sandbox_template
from lcow.sandboxes.sizes import (
    MAX_SANDBOX_GB,
    MIN_EXACT_SIZE,
    MIN_SANDBOX_GB,
    exact_sandbox_size,
    sandbox_size_bytes,
)

__all__ = [
    "BLOCK_SIZE",
    "EXT4_FEATURES",
    "INODE_SIZE",
    "MAX_SANDBOX_GB",
    "MIN_EXACT_SIZE",
    "MIN_SANDBOX_GB",
    "MKE2FS_CONF",
    "MkfsFailed",
    "copy_sandbox",
    "exact_sandbox_size",
    "make_raw_sandbox",
    "make_sandbox",
    "make_sandbox_template",
    "mke2fs_argv",
    "mke2fs_options",
    "sandbox_size_bytes",
]
