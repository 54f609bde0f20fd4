"""Mount backends behind one interface: userspace, host, vm (SPEC §1)."""
