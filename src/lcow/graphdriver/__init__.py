"""The LCOW graph driver: options, operations, changes (SPEC §2, §3)."""
