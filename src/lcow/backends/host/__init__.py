"""The host backend: layers mounted by the host kernel (loop devices + overlayfs) (issue 5)."""
