# The C header scanner (src/lcow/_native/tarscan.c); see lcow.convert.tarstream.
from typing import Any

SLOW: int
END: int

def scan_entry(buf: bytearray, start: int, end: int, max_meta: int) -> tuple[Any, ...] | int: ...
