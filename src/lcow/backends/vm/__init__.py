"""The vm backend: layers mounted only inside QEMU service utility VMs (SPEC §4)."""

from lcow.backends.vm.backend import VmBackend, check_prerequisites
from lcow.backends.vm.options import VmOptions, parse_vm_options

__all__ = ["VmBackend", "VmOptions", "check_prerequisites", "parse_vm_options"]
