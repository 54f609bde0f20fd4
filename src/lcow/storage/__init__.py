"""Data root layout: layer folders, layerchain.json, locks, removal (SPEC §1)."""
