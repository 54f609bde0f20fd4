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

:func:`write_sample_image` packs the three layers into an image tarball, as ``docker save``
writes it (``manifest.json``, ``<id>/layer.tar``; or Docker 25's OCI-based form) or as an OCI
image layout (``oci-layout``, ``index.json``, ``blobs/sha256/``), with layers stored plain,
gzip or zstd and every digest and diff ID correct. Its output is deterministic too.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal, cast

__all__ = [
    "BIG_FILE_SIZE",
    "SAMPLE_EPOCH",
    "SAMPLE_IMAGE_NAME",
    "SAMPLE_LAYER_NAMES",
    "write_sample_image",
    "write_sample_layers",
]

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

    def _info(  # noqa: PLR0913 - the tar header fields a sample sets; owners and xattrs keyword-only
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

    def device(  # noqa: PLR0913 - a device node's own fields (major, minor, mode, gid), all keyword-only
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
    _base_system(layer)
    _base_data(layer)


def _base_system(layer: _Layer) -> None:
    """The base layer's /etc, /dev, /run, /tmp and /usr: files, devices, a FIFO, symlinks
    and hard links, with special modes, owners and xattrs."""
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


def _base_data(layer: _Layer) -> None:
    """The base layer's /var, /home, /opt and /srv: a sparse file, long names and paths,
    32-bit ids, and what the later layers white out or hide."""
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


# --------------------------------------------------------------------------------------------
# image tarballs

#: the repository tag of the sample image.
SAMPLE_IMAGE_NAME = "lcow-sample:latest"

ImageFormat = Literal["docker", "docker-oci", "oci"]
Compression = Literal["none", "gzip", "zstd"]

_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
_LAYER_TYPES = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


class _Blob:
    """A file of the image and its digest."""

    def __init__(self, path: Path) -> None:
        self.path = path
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        self.digest = f"sha256:{digest.hexdigest()}"
        self.size = path.stat().st_size

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]


def _json_bytes(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _compress(tar: Path, out: Path, compression: Compression) -> Path:
    if compression == "none":
        return tar
    if compression == "gzip":
        import gzip

        with (
            open(tar, "rb") as src,
            open(out, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=1) as gz,
        ):
            shutil.copyfileobj(src, gz, 1 << 20)
        return out
    import zstandard

    with open(tar, "rb") as src, open(out, "wb") as dst:
        zstandard.ZstdCompressor(level=3).copy_stream(src, dst, size=tar.stat().st_size)
    return out


def _config(diff_ids: list[str]) -> bytes:
    created = "2023-11-14T22:13:20Z"
    return _json_bytes(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"], "WorkingDir": "/"},
            "history": [
                {"created": created, "created_by": f"lcow samples: layer {i + 1}"}
                for i in range(len(diff_ids))
            ],
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    )


def _add(tf: tarfile.TarFile, name: str, content: bytes | Path | None) -> None:
    """Add a directory (``content=None``), bytes or a file with fixed owner, mode and time."""
    info = tarfile.TarInfo(name)
    info.mtime = SAMPLE_EPOCH
    info.uid = info.gid = 0
    if content is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tf.addfile(info)
    elif isinstance(content, bytes):
        info.mode, info.size = 0o644, len(content)
        tf.addfile(info, cast(IO[bytes], _BytesReader(content)))
    else:
        info.mode, info.size = 0o644, content.stat().st_size
        with open(content, "rb") as f:
            tf.addfile(info, f)


def _docker_members(
    blobs: list[_Blob], diff_ids: list[str], config: bytes
) -> list[tuple[str, bytes | Path | None]]:
    """Docker before 25: ``<config hex>.json``, ``<v1 id>/{VERSION,json,layer.tar}``."""
    config_hex = hashlib.sha256(config).hexdigest()
    members: list[tuple[str, bytes | Path | None]] = []
    layer_names = []
    parent = ""
    for blob, diff_id in zip(blobs, diff_ids, strict=True):
        v1 = hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()
        v1_json: dict[str, object] = {"id": v1, "created": "2023-11-14T22:13:20Z"}
        if parent:
            v1_json["parent"] = parent
        members += [
            (f"{v1}/", None),
            (f"{v1}/VERSION", b"1.0"),
            (f"{v1}/json", _json_bytes(v1_json)),
            (f"{v1}/layer.tar", blob.path),
        ]
        layer_names.append(f"{v1}/layer.tar")
        parent = v1
    repo, tag = SAMPLE_IMAGE_NAME.rsplit(":", 1)
    manifest = [
        {"Config": f"{config_hex}.json", "RepoTags": [SAMPLE_IMAGE_NAME], "Layers": layer_names}
    ]
    members += [
        (f"{config_hex}.json", config),
        ("manifest.json", _json_bytes(manifest)),
        ("repositories", _json_bytes({repo: {tag: parent}})),
    ]
    return members


def _oci_members(
    blobs: list[_Blob], config: bytes, compression: Compression, *, docker_manifest: bool
) -> list[tuple[str, bytes | Path | None]]:
    """An OCI image layout (and Docker 25's ``manifest.json`` beside it)."""
    config_hex = hashlib.sha256(config).hexdigest()
    manifest = _json_bytes(
        {
            "schemaVersion": 2,
            "mediaType": _OCI_MANIFEST,
            "config": {
                "mediaType": _OCI_CONFIG,
                "digest": f"sha256:{config_hex}",
                "size": len(config),
            },
            "layers": [
                {"mediaType": _LAYER_TYPES[compression], "digest": b.digest, "size": b.size}
                for b in blobs
            ],
        }
    )
    manifest_hex = hashlib.sha256(manifest).hexdigest()
    repo, tag = SAMPLE_IMAGE_NAME.rsplit(":", 1)
    index = {
        "schemaVersion": 2,
        "mediaType": _OCI_INDEX,
        "manifests": [
            {
                "mediaType": _OCI_MANIFEST,
                "digest": f"sha256:{manifest_hex}",
                "size": len(manifest),
                "annotations": {
                    "io.containerd.image.name": f"docker.io/library/{repo}:{tag}",
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }
    members: list[tuple[str, bytes | Path | None]] = [
        ("blobs/", None),
        ("blobs/sha256/", None),
        *((f"blobs/sha256/{b.hex}", b.path) for b in blobs),
        (f"blobs/sha256/{config_hex}", config),
        (f"blobs/sha256/{manifest_hex}", manifest),
        ("index.json", _json_bytes(index)),
        ("oci-layout", _json_bytes({"imageLayoutVersion": "1.0.0"})),
    ]
    if docker_manifest:
        entry = {
            "Config": f"blobs/sha256/{config_hex}",
            "RepoTags": [SAMPLE_IMAGE_NAME],
            "Layers": [f"blobs/sha256/{b.hex}" for b in blobs],
        }
        members.append(("manifest.json", _json_bytes([entry])))
    return members


def write_sample_image(
    path: str | os.PathLike[str],
    format: ImageFormat = "docker",
    *,
    compression: Compression = "none",
    layers: Sequence[str | os.PathLike[str]] | None = None,
) -> Path:
    """Write an image tarball of the sample layers (``lcow-sample:latest``).

    Args:
        path: the tarball to write (replaced if it exists; written under a temporary name).
        format: ``docker`` (``docker save`` before Docker 25: ``manifest.json``,
            ``<config hex>.json``, ``<v1 id>/layer.tar``, ``repositories``), ``docker-oci``
            (Docker 25+: an OCI layout plus ``manifest.json`` naming ``blobs/sha256/<hex>``) or
            ``oci`` (an OCI image layout only).
        compression: how layer blobs are stored: ``none``, ``gzip`` or ``zstd``.
        layers: tar files to use instead of the three sample layers, bottom first.

    Returns:
        ``path``.

    Raises:
        ValueError: an unknown format or compression.
    """
    if format not in ("docker", "docker-oci", "oci"):
        raise ValueError(f"unknown image format {format!r} (docker, docker-oci, oci)")
    if compression not in _LAYER_TYPES:
        raise ValueError(f"unknown compression {compression!r} (none, gzip, zstd)")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".lcow-sample-") as work:
        tars = [Path(p) for p in layers] if layers is not None else write_sample_layers(work)
        diff_ids = [_Blob(t).digest for t in tars]
        blobs = [
            _Blob(_compress(t, Path(work) / f"blob-{i}", compression)) for i, t in enumerate(tars)
        ]
        config = _config(diff_ids)
        if format == "docker":
            members = _docker_members(blobs, diff_ids, config)
        else:
            members = _oci_members(blobs, config, compression, docker_manifest=format != "oci")
        tmp = Path(work) / "image.tar"
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            for name, content in members:
                _add(tf, name, content)
        os.replace(tmp, out)
    return out
