"""Sample layer tars: the embedded data set of ``lcow demo`` and of the tests (issue 2).

:func:`write_sample_layers` writes three PAX tars, byte-for-byte deterministic, covering what a
layer converter must handle (SPEC §5.1-5.2, §6.3-6.7):

1. ``layer-1-base.tar``: a small root filesystem — the root entry, directories, regular and empty
   files, fast and slow symlinks (59/60-byte and 100-byte targets), hard links including one to a
   symlink, a fifo, character and block devices (also 12-bit majors and 20-bit minors), setuid,
   setgid and sticky modes, ``user.*``, ``trusted.*`` and ``security.capability`` xattrs as PAX
   ``SCHILY.xattr.*`` (in-inode and external-block sizes), a 255-byte file name and a 200+-byte
   path, a 64 MiB file of deterministic content (streamed, never held in memory), a PAX 1.0 sparse
   file with data at an unaligned offset and a trailing hole, 32-bit ids and nanosecond mtimes.
2. ``layer-2-whiteouts.tar``: AUFS whiteouts (``.wh.name``, for a file, a setuid file and a
   directory), opaque directories (``dir/.wh..wh..opq``), a whiteout and an opaque marker *before*
   their directory's own entry, and a modified file.
3. ``layer-3-replace.tar``: duplicates (the same path twice, the later wins, also for a 1 MiB
   file), file → directory and directory → file replacement, and a hard link whose target is
   replaced afterwards.

Only the standard library is used (``tarfile``); times are fixed, owners numeric with fixed names.
"""

from __future__ import annotations

import os
import random
import struct
import tarfile
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

__all__ = ["BIG_FILE_SIZE", "SAMPLE_EPOCH", "SAMPLE_LAYER_NAMES", "write_sample_layers"]

#: mtime of the first entry (2023-11-14T22:13:20Z); later entries count up from it.
SAMPLE_EPOCH = 1_700_000_000
#: size of ``usr/share/big.bin`` in the base layer.
BIG_FILE_SIZE = 64 << 20
#: file names of the tars, in layer order (lowest first).
SAMPLE_LAYER_NAMES = ("layer-1-base.tar", "layer-2-whiteouts.tar", "layer-3-replace.tar")

_OWNER_NAMES = {0: "root", 5: "tty", 6: "disk", 1000: "user"}
_CHUNK = 64 << 10
_PAX_BLOCK = 512

# struct vfs_cap_data, revision 2, effective bit set: CAP_NET_RAW (13) permitted.
_CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


class _Pattern:
    """A read-only stream of ``size`` deterministic pseudo-random bytes, made chunk by chunk."""

    def __init__(self, size: int, seed: int) -> None:
        self._size = size
        self._pos = 0
        self._block = random.Random(seed).randbytes(_CHUNK)

    def read(self, n: int = -1) -> bytes:
        left = self._size - self._pos
        n = left if n < 0 else min(n, left)
        out = bytearray()
        while len(out) < n:
            index, offset = divmod(self._pos, _CHUNK)
            chunk = index.to_bytes(8, "little") + self._block[8:]
            take = min(n - len(out), _CHUNK - offset)
            out += chunk[offset : offset + take]
            self._pos += take
        return bytes(out)


class _Layer:
    """Appends entries to a PAX tar; every entry gets the next deterministic mtime."""

    def __init__(self, tf: tarfile.TarFile, start: int) -> None:
        self._tf = tf
        self._start = start
        self._tick = 0

    def _info(
        self,
        name: str,
        kind: bytes,
        mode: int,
        *,
        uid: int = 0,
        gid: int = 0,
        xattrs: Mapping[str, bytes] | None = None,
    ) -> tarfile.TarInfo:
        self._tick += 1
        seconds = self._start + self._tick * 61
        nanos = (self._tick * 123_456_789) % 1_000_000_000
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.uname = _OWNER_NAMES.get(uid, "")
        info.gname = _OWNER_NAMES.get(gid, "")
        info.mtime = seconds
        pax = {"mtime": f"{seconds}.{nanos:09d}"}
        for key, value in (xattrs or {}).items():
            pax[f"SCHILY.xattr.{key}"] = value.decode("utf-8", "surrogateescape")
        info.pax_headers = pax
        return info

    def dir(self, name: str, mode: int = 0o755, **kw: Any) -> None:
        self._tf.addfile(self._info(name, tarfile.DIRTYPE, mode, **kw))

    def file(self, name: str, data: bytes, mode: int = 0o644, **kw: Any) -> None:
        info = self._info(name, tarfile.REGTYPE, mode, **kw)
        info.size = len(data)
        self._tf.addfile(info, _BytesReader(data))

    def big(self, name: str, size: int, seed: int, mode: int = 0o644) -> None:
        info = self._info(name, tarfile.REGTYPE, mode)
        info.size = size
        self._tf.addfile(info, cast(IO[bytes], _Pattern(size, seed)))

    def symlink(self, name: str, target: str) -> None:
        info = self._info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self._tf.addfile(info)

    def hardlink(self, name: str, target: str) -> None:
        info = self._info(name, tarfile.LNKTYPE, 0o644)
        info.linkname = target
        self._tf.addfile(info)

    def fifo(self, name: str, mode: int = 0o600) -> None:
        self._tf.addfile(self._info(name, tarfile.FIFOTYPE, mode))

    def device(
        self, name: str, kind: bytes, *, major: int, minor: int, mode: int, gid: int = 0
    ) -> None:
        info = self._info(name, kind, mode, gid=gid)
        info.devmajor, info.devminor = major, minor
        self._tf.addfile(info)

    def sparse(self, name: str, real_size: int, segments: list[tuple[int, bytes]]) -> None:
        """A GNU PAX 1.0 sparse member: a decimal map block, then only the data segments.

        GNU tar pads every segment to 512 bytes in the archive while Go's archive/tar and Python's
        tarfile read them back to back; keep all but the last segment a multiple of 512 long so
        both readings agree.
        """
        entries = [(offset, len(data)) for offset, data in segments]
        if not entries or entries[-1][0] + entries[-1][1] < real_size:
            entries.append((real_size, 0))  # GNU tar marks a trailing hole like this
        text = "\n".join([str(len(entries))] + [f"{o}\n{n}" for o, n in entries]) + "\n"
        pad = -len(text) % _PAX_BLOCK
        payload = text.encode("ascii") + b"\0" * pad + b"".join(d for _, d in segments)
        path = PurePosixPath(name)
        info = self._info(str(path.parent / "GNUSparseFile.0" / path.name), tarfile.REGTYPE, 0o644)
        info.pax_headers = {
            **info.pax_headers,
            "GNU.sparse.major": "1",
            "GNU.sparse.minor": "0",
            "GNU.sparse.name": name,
            "GNU.sparse.realsize": str(real_size),
        }
        info.size = len(payload)
        self._tf.addfile(info, _BytesReader(payload))


class _BytesReader:
    """Minimal read-only stream over bytes (what ``TarFile.addfile`` needs)."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._view) if n < 0 else min(len(self._view), self._pos + n)
        out = bytes(self._view[self._pos : end])
        self._pos = end
        return out


def _text(lines: int, word: str) -> bytes:
    return "".join(f"{word} line {i}\n" for i in range(lines)).encode()


def _base(layer: _Layer) -> None:
    layer.dir("./")
    layer.dir("etc")
    layer.file("etc/hostname", b"lcow-sample\n")
    layer.file(
        "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n"
    )
    layer.file("etc/os-release", b'NAME="lcow sample"\n', xattrs={"user.mime_type": b"text/plain"})
    layer.file("etc/motd", b"welcome\n")
    layer.file("etc/empty", b"")
    layer.file(
        "etc/big-xattrs",
        b"xattrs in an external block\n",
        xattrs={
            "user.blob": bytes(range(256)) * 8,
            "trusted.note": b"n" * 500,
            "user.small": b"1",
        },
    )
    layer.dir("dev")
    layer.device("dev/null", tarfile.CHRTYPE, major=1, minor=3, mode=0o666)
    layer.device("dev/console", tarfile.CHRTYPE, major=5, minor=1, mode=0o600)
    layer.device("dev/loop0", tarfile.BLKTYPE, major=7, minor=0, mode=0o660, gid=6)
    layer.device("dev/sda", tarfile.BLKTYPE, major=8, minor=0, mode=0o660, gid=6)
    layer.device("dev/wide-minor", tarfile.BLKTYPE, major=259, minor=0xFFFFF, mode=0o660, gid=6)
    layer.device("dev/wide-major", tarfile.CHRTYPE, major=0xFFF, minor=0x1FF, mode=0o600)
    layer.dir("run")
    layer.fifo("run/initctl")
    layer.dir("tmp", 0o1777)
    layer.dir("usr")
    layer.dir("usr/bin")
    layer.symlink("bin", "usr/bin")
    layer.file("usr/bin/dash", _text(200, "dash"), 0o755)
    layer.hardlink("usr/bin/sh", "usr/bin/dash")
    layer.file("usr/bin/su", _text(50, "su"), 0o4755)
    layer.file("usr/bin/wall", _text(20, "wall"), 0o2755, gid=5)
    layer.file(
        "usr/bin/ping", _text(30, "ping"), 0o755, xattrs={"security.capability": _CAP_NET_RAW}
    )
    layer.dir("usr/lib")
    layer.file("usr/lib/libfoo.so.1.2.3", _text(500, "libfoo"), 0o755)
    layer.symlink("usr/lib/libfoo.so.1", "libfoo.so.1.2.3")
    layer.hardlink("usr/lib/libfoo-hardlink-to-symlink.so", "usr/lib/libfoo.so.1")
    layer.symlink("usr/lib/target-59", "t" * 59)
    layer.symlink("usr/lib/target-60", "t" * 60)
    layer.symlink("usr/lib/slow-link", "../../" + "/".join(["a-long-directory-name"] * 4) + "/x")
    layer.dir("usr/share")
    layer.big("usr/share/big.bin", BIG_FILE_SIZE, seed=1)
    layer.dir("var")
    layer.dir("var/lib")
    layer.sparse(
        "var/lib/sparse.img",
        32 << 20,
        [(0, b"A" * 4096), ((1 << 20) + 100, b"B" * 5120), (16 << 20, b"C" * 8000)],
    )
    layer.dir("var/log")
    layer.file("var/log/dpkg.log", _text(100, "dpkg"))
    layer.dir("var/log/apt")
    layer.file("var/log/apt/history.log", _text(10, "apt"))
    layer.dir("home")
    layer.dir("home/user", 0o750, uid=1000, gid=1000)
    layer.file("home/user/" + "n" * 251 + ".txt", b"a 255-byte name\n", uid=1000, gid=1000)
    deep = "home/user/deep/" + "/".join(f"{i:02d}-" + "d" * 47 for i in range(4))
    parts = deep.split("/")
    for i in range(3, len(parts) + 1):
        layer.dir("/".join(parts[:i]), uid=1000, gid=1000)
    layer.file(deep + "/file-at-the-end-of-a-long-path", b"deep\n", uid=1000, gid=1000)
    layer.file("home/user/ids-32bit", b"ids\n", uid=3_000_000_000, gid=4_000_000_000)
    layer.dir("opt")
    layer.file("opt/gone", b"whited out by layer 2\n")
    layer.dir("srv")
    layer.file("srv/old", b"hidden by layer 2's opaque srv\n")


def _whiteouts(layer: _Layer) -> None:
    layer.file("opt/.wh.gone", b"")  # a whiteout before its directory's entry
    layer.dir("opt")
    layer.file("opt/new-app", b"new in layer 2\n", 0o755)
    layer.file("srv/.wh..wh..opq", b"")  # an opaque marker before its directory's entry
    layer.dir("srv", 0o750)
    layer.dir("srv/www")
    layer.file("srv/www/index.html", b"<h1>hi</h1>\n")
    layer.dir("etc")
    layer.file("etc/.wh.hostname", b"")
    layer.file("etc/passwd", b"root:x:0:0:root:/root:/bin/bash\n")
    layer.dir("var/log")
    layer.file("var/log/.wh..wh..opq", b"")
    layer.file("var/log/fresh.log", b"after the opaque marker\n")
    layer.file("usr/bin/.wh.su", b"")
    layer.file("home/user/.wh.deep", b"", uid=1000, gid=1000)


def _replacements(layer: _Layer) -> None:
    layer.dir("etc")
    layer.file("etc/motd", b"first motd\n")
    layer.file("etc/motd", b"second motd: the later entry wins\n")
    layer.dir("data")
    layer.big("data/blob", 1 << 20, seed=3)
    layer.file("data/blob", b"small now\n")
    layer.file("data/thing", b"a file that becomes a directory\n")
    layer.dir("data/thing")
    layer.file("data/thing/inner", b"inside the replacing directory\n")
    layer.dir("data/tree")
    layer.file("data/tree/a", b"a\n")
    layer.dir("data/tree/sub")
    layer.big("data/tree/sub/b", 256 << 10, seed=4)
    layer.file("data/tree", b"a file replacing a whole directory tree\n")
    layer.file("data/victim", b"original content\n")
    layer.hardlink("data/keeps-original", "data/victim")
    layer.file("data/victim", b"replaced content\n")


_LAYERS: tuple[tuple[str, Callable[[_Layer], None]], ...] = tuple(
    zip(SAMPLE_LAYER_NAMES, (_base, _whiteouts, _replacements), strict=True)
)


def write_sample_layers(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write the three sample layer tars into ``out_dir`` (created if missing).

    The output is identical on every run and machine.

    Args:
        out_dir: directory to write ``layer-1-base.tar``, ``layer-2-whiteouts.tar`` and
            ``layer-3-replace.tar`` into; existing files of those names are replaced.

    Returns:
        The paths of the tars, lowest layer first.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (name, build) in enumerate(_LAYERS):
        path = out / name
        tmp = path.with_name(f".{name}.tmp")
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tf:
            build(_Layer(tf, SAMPLE_EPOCH + index * 86_400))
        os.replace(tmp, path)
        paths.append(path)
    return paths
