"""lcow.formats.vhd."""
