"""Hypothesis strategies: random layer tars that moby's unpacker would accept.

:func:`layer_entries` draws a sequence of tar entries while tracking the tree they build, so every
entry is valid under UnpackLayer semantics: parents are directories or missing (created on
demand), hard links point at existing non-directories outside their own path, and duplicates
(same path again, of any type) replace or merge as moby would.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import strategies as st

from tests.helpers import TarEntry

__all__ = ["layer_entries"]

_NS = 10**9
_NAME_BYTES = sorted(set(b"abcxyzABC019 -_.~+,=@\\\t\n#%&()[]{}'\"") | {0x80, 0xC3, 0xA9, 0xFF})
_IDS = [0, 1, 1000, 65534, 65535, 65536, 2**31, 2**32 - 2]
_XATTR_SUFFIX = st.text("abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=12)

names = st.one_of(
    st.lists(st.sampled_from(_NAME_BYTES), min_size=1, max_size=12).map(bytes),
    st.integers(200, 255).map(lambda n: b"L" * n),
).filter(lambda n: n not in (b".", b"..") and b"/" not in n and b"\0" not in n)

# Up to 2262 (int64 nanoseconds); later times up to ext4's 2446 limit are covered by the
# dedicated cases "times-after-2262" and test_times_outside_ext4_range_are_clamped.
mtimes = st.one_of(
    st.integers(-(2**31) * _NS, 2**63 - 1),
    st.integers(0, 2**31).map(lambda s: s * _NS),  # whole seconds
    st.just(0),
)

xattr_values = st.one_of(
    st.binary(max_size=64), st.binary(min_size=200, max_size=1200).map(lambda b: b or b"x")
)


@st.composite
def xattr_maps(draw: st.DrawFn) -> dict[str, bytes]:
    """User, trusted and security xattrs whose total fits one inode plus one block."""
    out: dict[str, bytes] = {}
    budget = 3000
    for _ in range(draw(st.integers(0, 5))):
        prefix = draw(st.sampled_from(["user.", "trusted.", "security."]))
        name = prefix + draw(_XATTR_SUFFIX)
        if name in ("security.capability", "security.selinux"):
            continue
        value = draw(xattr_values)
        cost = len(name) + len(value) + 24
        if cost > budget:
            continue
        budget -= cost
        out[name] = value
    return out


@st.composite
def sparse_segments(draw: st.DrawFn) -> tuple[int, list[tuple[int, bytes]]]:
    """(logical size, segments): all but the last segment a multiple of 512 bytes long."""
    segments: list[tuple[int, bytes]] = []
    offset = 0
    count = draw(st.integers(0, 6))
    for i in range(count):
        offset += draw(st.integers(0, 3 * 4096 + 7))
        last = i == count - 1
        length = draw(st.integers(1, 9000)) if last else 512 * draw(st.integers(1, 16))
        segments.append((offset, bytes([draw(st.integers(1, 255))]) * length))
        offset += length
    size = offset + draw(st.integers(0, 20_000))
    return size, segments


class _State:
    """The tree the drawn entries build: path -> kind ('dir' or other)."""

    def __init__(self) -> None:
        self.kinds: dict[bytes, str] = {b"": "dir"}

    def dirs(self) -> list[bytes]:
        return sorted(p for p, k in self.kinds.items() if k == "dir")

    def non_dirs(self) -> list[bytes]:
        return sorted(p for p, k in self.kinds.items() if k != "dir")

    def put(self, path: bytes, kind: str) -> None:
        old = self.kinds.get(path)
        if old is not None and not (old == "dir" and kind == "dir"):
            self.remove(path)
        parts = path.split(b"/")
        for i in range(1, len(parts)):
            self.kinds.setdefault(b"/".join(parts[:i]), "dir")
        self.kinds[path] = kind

    def remove(self, path: bytes) -> None:
        for p in [p for p in self.kinds if p == path or p.startswith(path + b"/")]:
            del self.kinds[p]


@st.composite
def layer_entries(  # noqa: PLR0912 - one draw per kind of entry and whiteout a valid layer may hold
    draw: st.DrawFn, max_entries: int = 20, whiteouts: bool = False
) -> list[TarEntry]:
    """A list of tar entries forming a valid layer (see the module docstring).

    With ``whiteouts``, AUFS markers are mixed in for ``-overlay``: ``.wh.<name>`` for a name not
    present (yet: a later entry may still create it) and ``<dir>/.wh..wh..opq`` for an existing
    or a new directory, possibly before the directory's own entry.
    """
    state = _State()
    entries: list[TarEntry] = []
    if draw(st.booleans()):
        entries.append(_entry(draw, b"./", "dir"))
    for _ in range(draw(st.integers(1, max_entries))):
        existing = [p for p in state.kinds if p and p != b"lost+found"]
        if existing and draw(st.integers(0, 4)) == 0:
            path = draw(st.sampled_from(sorted(existing)))  # a duplicate
        else:
            parent = draw(st.sampled_from(state.dirs()))
            extra = draw(st.lists(names, max_size=2)) if draw(st.integers(0, 3)) == 0 else []
            path = b"/".join([p for p in (parent, *extra) if p] + [draw(names)])
        if path == b"lost+found" or any(len(part) > 255 for part in path.split(b"/")):
            continue
        parts = path.split(b"/")
        if any(state.kinds.get(b"/".join(parts[:i]), "dir") != "dir" for i in range(1, len(parts))):
            continue  # a new parent would collide with an existing non-directory
        if whiteouts and parts[-1].startswith(b".wh."):
            continue
        kinds = ["file", "file", "dir", "symlink", "hardlink", "fifo", "chr", "blk", "sparse"]
        if whiteouts:
            kinds += ["whiteout", "opaque"]
        kind = draw(st.sampled_from(kinds))
        if kind == "whiteout" and path not in state.kinds:
            marker = b"/".join([*parts[:-1], b".wh." + parts[-1]])
            entries.append(TarEntry(marker, uid=draw(st.sampled_from(_IDS)), mtime_ns=draw(mtimes)))
            state.put(path, "chr")
            continue
        if kind == "opaque" and state.kinds.get(path, "dir") == "dir":
            entries.append(TarEntry(path + b"/.wh..wh..opq"))
            state.put(path, "dir")
            continue
        if kind in ("whiteout", "opaque"):
            kind = "file"
        if kind == "hardlink":
            targets = [t for t in state.non_dirs() if t != path and not t.startswith(path + b"/")]
            if not targets:
                kind = "file"
            else:
                target = draw(st.sampled_from(targets))
                entries.append(TarEntry(path, kind="hardlink", target=target))
                state.put(path, "hardlink")
                continue
        entries.append(_entry(draw, path, kind))
        state.put(path, "dir" if kind == "dir" else kind)
    return entries


def _entry(draw: st.DrawFn, path: bytes, kind: str) -> TarEntry:
    fields: dict[str, Any] = {
        "mode": draw(st.integers(0, 0o7777)),
        "uid": draw(st.sampled_from(_IDS)),
        "gid": draw(st.sampled_from(_IDS)),
        "mtime_ns": draw(mtimes),
    }
    if kind in ("file", "dir"):
        fields["xattrs"] = draw(xattr_maps())
    if kind == "file":
        fields["data"] = draw(st.one_of(st.binary(max_size=300), st.binary(max_size=20_000)))
    elif kind == "sparse":
        fields["size"], fields["sparse"] = draw(sparse_segments())
    elif kind == "symlink":
        fields["target"] = draw(
            st.binary(min_size=1, max_size=300).filter(lambda t: b"\0" not in t)
        )
    elif kind in ("chr", "blk"):
        fields["major"] = draw(st.integers(0, 4095))
        fields["minor"] = draw(st.integers(0, 0xFFFFF))
    return TarEntry(os.fsdecode(path) if path == b"./" else path, kind=kind, **fields)
