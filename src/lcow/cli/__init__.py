"""lcow.cli."""
