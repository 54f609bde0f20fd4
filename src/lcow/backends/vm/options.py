"""The vm backend's options: ``lcow.*`` keys of SPEC §2 that only the utility VM reads.

``lcow.kirdpath`` (default ``<root>/uvm``, then ``lcow uvm build``'s folder), ``lcow.kernel``,
``lcow.initrd``, ``lcow.vhdx``, ``lcow.bootparameters``, and two keys the driver reads too:
``lcow.globalmode`` (one VM for every layer) and ``lcow.timeout`` (parsed by the same rules,
:mod:`lcow._util.initopts`, so both agree and fail with LCOW's messages).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from lcow._util.initopts import DEFAULT_TIMEOUT, UTILITY_VM_KEYS, bool_option, timeout_option

__all__ = ["VM_KEYS", "VmOptions", "parse_vm_options"]

VM_KEYS = UTILITY_VM_KEYS


@dataclass(frozen=True, kw_only=True)
class VmOptions:
    """What the vm backend reads from InitDriver's options.

    Attributes:
        kirdpath: folder of the VM kernel and initrd.
        kirdpath_given: ``lcow.kirdpath`` was given: look only there (else the default folder
            of ``lcow uvm build`` is tried too).
        global_mode: one utility VM for every layer (``lcow.globalmode``).
        kernel: kernel file name in ``kirdpath``.
        initrd: initrd file name in ``kirdpath``.
        vhdx: boot disk path (``lcow.vhdx``; not implemented).
        boot_parameters: extra kernel command line.
        timeout: seconds for VM start and commands; an idle timeout on streams.
    """

    kirdpath: str
    kirdpath_given: bool = False
    global_mode: bool = False
    kernel: str = "bootx64.efi"
    initrd: str = "initrd.img"
    vhdx: str = ""
    boot_parameters: str = ""
    timeout: int = DEFAULT_TIMEOUT


def parse_vm_options(pairs: Mapping[str, str], *, root: str | os.PathLike[str]) -> VmOptions:
    """The vm backend's options from InitDriver's (keys lower-cased).

    Args:
        pairs: ``key → value`` (:func:`lcow._util.initopts.split_options`).
        root: the data root (the default kirdpath is below it).

    Raises:
        InvalidArgument: a bad ``lcow.globalmode`` or ``lcow.timeout`` (LCOW's messages).
    """
    kirdpath = pairs.get("lcow.kirdpath") or os.path.join(root, "uvm")
    return VmOptions(
        kirdpath=kirdpath,
        kirdpath_given="lcow.kirdpath" in pairs,
        global_mode=bool_option(pairs, "lcow.globalmode"),
        kernel=pairs.get("lcow.kernel") or "bootx64.efi",
        initrd=pairs.get("lcow.initrd") or "initrd.img",
        vhdx=pairs.get("lcow.vhdx") or os.path.join(kirdpath, "uvm.vhdx"),
        boot_parameters=pairs.get("lcow.bootparameters", ""),
        timeout=timeout_option(pairs),
    )
