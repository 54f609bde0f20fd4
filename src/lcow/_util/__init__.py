"""lcow._util."""
