"""How the registry builds the vm backend (``lcow.backend=vm``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lcow.backends.vm.backend import VmBackend, check_prerequisites
from lcow.backends.vm.options import VM_KEYS, VmOptions, parse_vm_options

__all__ = ["FACTORY", "VmFactory"]


class VmFactory:
    """Needs QEMU and the VM assets of ``lcow uvm build`` (:func:`check_prerequisites`)."""

    option_keys: frozenset[str] = VM_KEYS

    def parse_options(self, pairs: Mapping[str, str], *, root: Path) -> VmOptions:
        """:func:`~lcow.backends.vm.options.parse_vm_options`."""
        return parse_vm_options(pairs, root=root)

    def check(self, options: VmOptions) -> None:
        """``driver not supported`` naming what is missing (QEMU, the assets)."""
        check_prerequisites(options)

    def create(self, root: Path, options: VmOptions) -> VmBackend:
        """The backend over ``root``; no VM starts until a view is used."""
        return VmBackend(root, options)


FACTORY = VmFactory()
