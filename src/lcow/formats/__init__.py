"""lcow.formats."""
