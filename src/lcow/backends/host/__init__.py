"""The host backend: layers mounted by the host kernel (loop devices + overlayfs) (issue 5)."""

from lcow.backends.host.backend import STATE_FOLDER, HostBackend, check_prerequisites

__all__ = ["STATE_FOLDER", "HostBackend", "check_prerequisites"]
