"""containerd 1.6 snapshots API stubs (generated)."""
