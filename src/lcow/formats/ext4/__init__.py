"""lcow.formats.ext4."""
