"""lcow.convert."""
