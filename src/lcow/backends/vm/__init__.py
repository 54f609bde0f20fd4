"""The vm backend: layers mounted only inside QEMU service utility VMs (SPEC §4)."""

from lcow.backends.vm.backend import VmBackend, check_prerequisites

__all__ = ["VmBackend", "check_prerequisites"]
