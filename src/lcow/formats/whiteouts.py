"""AUFS and overlay whiteouts: the names, the tests and the mapping between them (SPEC §5.1-§5.3).

A layer says "this name is deleted" and "this directory hides everything below it" in one of
two forms:

======================  ===================================  ====================================
what                    AUFS form (in a layer tar)           overlay form (in an image, a view)
======================  ===================================  ====================================
``dir/name`` deleted    empty file ``dir/.wh.name``          character device 0/0 ``dir/name``
``dir`` opaque          empty file ``dir/.wh..wh..opq``      xattr ``trusted.overlay.opaque=y``
======================  ===================================  ====================================

Names starting ``.wh..wh.`` are AUFS metadata, never content (``/.wh..wh.plnk`` holds the
sources of hard links). Ingest turns the AUFS form into the overlay form, export the reverse.

Every name function takes ``bytes`` or ``str`` and answers in the same type; the constants come
in both (``*_STR`` for ``str``). Nothing here does I/O.
"""

from __future__ import annotations

import posixpath
import stat
from collections.abc import Mapping
from typing import AnyStr

__all__ = [
    "LINK_DIR",
    "META_PREFIX",
    "OPAQUE_MARKER",
    "OPAQUE_MARKER_STR",
    "OPAQUE_VALUE",
    "OPAQUE_XATTR",
    "OPAQUE_XATTR_STR",
    "OVERLAY_XATTR_PREFIXES",
    "WHITEOUT_MODE",
    "WHITEOUT_PREFIX",
    "WHITEOUT_PREFIX_STR",
    "WHITEOUT_RDEV",
    "hidden_name",
    "is_metadata_name",
    "is_opaque",
    "is_opaque_marker",
    "is_overlay_whiteout",
    "is_whiteout_name",
    "opaque_marker_path",
    "whiteout_path",
    "with_opaque",
    "without_opaque",
]

# -- AUFS names (tar) ----------------------------------------------------------------------------

#: ``.wh.<name>`` deletes ``<name>`` of its directory.
WHITEOUT_PREFIX = b".wh."
WHITEOUT_PREFIX_STR = ".wh."
#: ``.wh..wh.<anything>``: AUFS metadata.
META_PREFIX = b".wh..wh."
#: Makes its directory opaque.
OPAQUE_MARKER = b".wh..wh..opq"
OPAQUE_MARKER_STR = ".wh..wh..opq"
#: The top-level directory holding the sources of hard links (``/.wh..wh.plnk/<name>``).
LINK_DIR = b".wh..wh.plnk"

# -- overlay form (image, view) ------------------------------------------------------------------

#: A whiteout is a character device with these type bits (permissions 0000) ...
WHITEOUT_MODE = stat.S_IFCHR
#: ... and device number 0 (major 0, minor 0).
WHITEOUT_RDEV = 0
#: The attribute marking an opaque directory, and its value.
OPAQUE_XATTR = b"trusted.overlay.opaque"
OPAQUE_XATTR_STR = "trusted.overlay.opaque"
OPAQUE_VALUE = b"y"
#: overlayfs's own bookkeeping attributes (its ``trusted.`` and, unprivileged, ``user.`` ones).
OVERLAY_XATTR_PREFIXES = (b"trusted.overlay.", b"user.overlay.")

_S_IFMT = 0o170000


def _text(value: bytes, like: AnyStr) -> AnyStr:
    """``value`` in the type of ``like``."""
    if isinstance(like, bytes):
        return value
    return value.decode("ascii")


def is_whiteout_name(base: AnyStr) -> bool:
    """Whether the file name ``base`` is an AUFS marker (a whiteout, the opaque marker or other
    metadata: every name starting ``.wh.``)."""
    return base.startswith(_text(WHITEOUT_PREFIX, base))


def is_metadata_name(base: AnyStr) -> bool:
    """Whether ``base`` names AUFS metadata (``.wh..wh.*``, the opaque marker included)."""
    return base.startswith(_text(META_PREFIX, base))


def is_opaque_marker(base: AnyStr) -> bool:
    """Whether ``base`` is the opaque marker ``.wh..wh..opq``."""
    return base == _text(OPAQUE_MARKER, base)


def hidden_name(base: AnyStr) -> AnyStr:
    """The name the whiteout ``base`` (``.wh.<name>``) deletes: ``<name>``.

    Raises:
        ValueError: ``base`` is not an AUFS marker.
    """
    if not is_whiteout_name(base):
        raise ValueError(f"{base!r} is not a whiteout name")
    return base[len(WHITEOUT_PREFIX) :]


def whiteout_path(path: AnyStr) -> AnyStr:
    """The AUFS marker that deletes ``path``: ``dir/name`` -> ``dir/.wh.name``."""
    head, tail = posixpath.split(path)
    return posixpath.join(head, _text(WHITEOUT_PREFIX, path) + tail)


def opaque_marker_path(directory: AnyStr) -> AnyStr:
    """The AUFS marker that makes ``directory`` opaque (``dir`` or ``dir/``):
    ``dir/.wh..wh..opq``."""
    marker: AnyStr = _text(OPAQUE_MARKER, directory)
    sep: AnyStr = _text(b"/", directory)
    if directory.endswith(sep):
        return directory + marker
    return directory + sep + marker


def is_overlay_whiteout(mode: int, rdev: int) -> bool:
    """Whether an inode of ``mode`` and device number ``rdev`` is an overlay whiteout."""
    return mode & _S_IFMT == WHITEOUT_MODE and rdev == WHITEOUT_RDEV


def is_opaque(xattrs: Mapping[bytes, bytes]) -> bool:
    """Whether a directory with these extended attributes is opaque."""
    return xattrs.get(OPAQUE_XATTR) == OPAQUE_VALUE


def with_opaque(xattrs: Mapping[bytes, bytes] | None) -> dict[bytes, bytes]:
    """``xattrs`` with the opaque mark added."""
    return {**(xattrs or {}), OPAQUE_XATTR: OPAQUE_VALUE}


def without_opaque(xattrs: Mapping[bytes, bytes]) -> dict[bytes, bytes]:
    """``xattrs`` without the opaque mark (what an AUFS export keeps: the marker says it)."""
    return {k: v for k, v in xattrs.items() if k != OPAQUE_XATTR}
