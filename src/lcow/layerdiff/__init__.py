"""Changes, DiffSize and tree comparison over layer images (SPEC §5.5-§5.8)."""
