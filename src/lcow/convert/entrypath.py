"""An entry name's components (SPEC §6.6): split at ``/``, empty and ``.`` components dropped.

Every tar entry's name is split here, which cost a Python converter 1.3 µs an entry (a list
comprehension, a join for its parent's path, and the sums the path limits need), so the split
runs in C when ``lcow._tarscan`` is built; :func:`split_path_py` is its Python twin, and both
give the same results (``tests/unit/test_entry_path.py``).
"""

from __future__ import annotations

from collections.abc import Callable

from lcow._util import native

__all__ = ["Split", "split_path", "split_path_py"]

#: ``(parts, parent, longest, length)``: the components; the parent's path (all components but
#: the last, joined by ``/``); the longest component's length; the length of the path written
#: as ``/a/b`` (every component and a slash before each).
Split = tuple[list[bytes], bytes, int, int]


def split_path_py(name: bytes) -> Split | None:
    """``name`` split (see :data:`Split`); ``None`` when it holds a NUL byte or a ``..``
    component, which the caller reports."""
    parts = [p for p in name.split(b"/") if p and p != b"."]
    if b".." in parts or b"\x00" in name:
        return None
    longest = max(map(len, parts), default=0)
    return parts, b"/".join(parts[:-1]), longest, sum(map(len, parts)) + len(parts)


_native = native.load("_tarscan")
#: The split in use: C when built, else :func:`split_path_py`.
split_path: Callable[[bytes], Split | None] = getattr(_native, "split_path", split_path_py)
