#!/usr/bin/env python3
"""Regenerate the committed seed corpora under ``fuzz/corpus/<harness>/``.

    .venv/bin/python fuzz/make_seeds.py            # all harnesses
    .venv/bin/python fuzz/make_seeds.py ext4_reader

Seeds are small, valid inputs of each format, made by lcow and by tools we did not write
(``mke2fs -d``, ``qemu-img``) where they are installed; images are stored in the sparse
encoding of ``_common.pack_sparse``. Existing seed files of a harness are replaced.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # _common; tests.harness (the tar builders)

from _common import pack_sparse  # noqa: E402
from tests.harness.hostile import tarbuild as h  # noqa: E402

from lcow.convert.options import ConvertOptions  # noqa: E402
from lcow.convert.tar2ext4 import tar2ext4  # noqa: E402
from lcow.formats.vhd.footer import build_fixed_footer  # noqa: E402
from lcow.formats.vhd.identity import unique_id_of  # noqa: E402
from lcow.formats.vhd.vhdx_writer import create_dynamic_vhdx, raw_to_dynamic_vhdx  # noqa: E402

_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


def _tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=_SBIN)


def tar_seeds() -> dict[str, bytes]:
    """Tars of every member kind the reader understands, plain, gzip and zstd."""
    import zstandard

    acl = (
        b"\x02\x00\x00\x00"
        + b"".join(tag + b"\xff\xff\xff\xff" for tag in (b"\x01\x00\x06\x00", b"\x04\x00\x04\x00"))
        + b"\x20\x00\x04\x00\xff\xff\xff\xff"
    )
    seeds = {
        "files.tar": h.file(b"a", b"hello") + h.directory(b"d/") + h.file(b"d/f", b"x" * 700)
        + h.symlink(b"s", b"a") + h.hardlink(b"l", b"a") + h.END,
        "pax-xattr.tar": h.file(
            b"p" * 120, b"x", xattrs={b"user.a": b"1", b"trusted.overlay.opaque": b"y"}
        ) + h.END,
        "gnu-long.tar": h.gnu_long(b"L" * 150) + h.file(b"short", b"z")
        + h.gnu_long(b"t" * 120, b"K") + h.symlink(b"sl", b"x") + h.END,
        "sparse1.tar": h.sparse_v1(b"sp", 20000, [(4096, b"a" * 100), (12000, b"b" * 50)])
        + h.END,
        "oldsparse.tar": h.gnu_old_sparse(b"os", 16384, [(0, 512), (8192, 512)], b"q" * 1024)
        + h.END,
        "whiteouts.tar": h.directory(b"w/") + h.file(b"w/.wh.gone") + h.file(b"w/.wh..wh..opq")
        + h.file(b".wh..wh.plnk/1", b"hl") + h.hardlink(b"hl", b".wh..wh.plnk/1") + h.END,
        "devices.tar": h.member(b"c", type=b"3", major=1, minor=3)
        + h.member(b"b", type=b"4", major=8, minor=1) + h.member(b"p", type=b"6") + h.END,
        "acl.tar": h.file(b"acl", b"", xattrs={b"system.posix_acl_access": acl}) + h.END,
        "times.tar": h.file(
            b"t", b"",
            records=[(b"mtime", b"1700000000.123456789"), (b"atime", b"-5.5"),
                     (b"uid", b"1000"), (b"gid", b"1000")],
        ) + h.END,
    }  # fmt: skip
    seeds["gzip.tar.gz"] = gzip.compress(seeds["files.tar"], mtime=0)
    seeds["zstd.tar.zst"] = zstandard.ZstdCompressor().compress(seeds["whiteouts.tar"])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("gnu/" + "g" * 120)
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    seeds["tarfile-gnu.tar"] = buf.getvalue()
    return seeds


def _tree(root: Path) -> None:
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "e" / "f").write_bytes(b"in e")
    (root / "small").write_bytes(b"small")
    (root / "inl").write_bytes(b"i" * 100)
    (root / "big").write_bytes(bytes(range(256)) * 40)
    os.symlink("small", root / "sym")
    os.symlink("L" * 300, root / "longsym")
    os.link(root / "small", root / "hard")
    os.setxattr(root / "small", "user.a", b"1")
    (root / "many").mkdir()
    for i in range(120):  # an htree directory with 1 KiB blocks
        (root / "many" / f"name-{i:04d}").write_bytes(b"")


_MKE2FS = {
    "mke2fs-ext4.img": ("-t", "ext4", "-b", "1024", "-O", "^has_journal"),
    "mke2fs-csum-inline.img": ("-t", "ext4", "-b", "1024", "-O", "^has_journal,inline_data"),
    "mke2fs-64bit.img": ("-t", "ext4", "-b", "4096", "-O", "^has_journal,64bit"),
    "mke2fs-ext2.img": ("-t", "ext2", "-b", "1024"),
}


def ext4_images(work: Path) -> dict[str, bytes]:
    """Raw ext4 images: lcow's own (with and without inline data) and mke2fs -d variants."""
    images: dict[str, bytes] = {}
    tar = work / "seed.tar"
    tar.write_bytes(tar_seeds()["files.tar"][:-1024] + tar_seeds()["whiteouts.tar"])
    for name, inline in (("lcow.img", False), ("lcow-inline.img", True)):
        tar2ext4(tar, work / name, ConvertOptions(convert_whiteouts=True, inline_data=inline))
        images[name] = (work / name).read_bytes()
    mke2fs = _tool("mke2fs")
    if mke2fs is None:
        print("mke2fs not found: only lcow's images", file=sys.stderr)
        return images
    src = work / "tree"
    _tree(src)
    for name, flags in _MKE2FS.items():
        size = "1M" if "64bit" in name else "512K"
        subprocess.run(
            [mke2fs, "-q", "-F", *flags, "-N", "200", "-d", str(src), str(work / name), size],
            check=True, capture_output=True,
        )  # fmt: skip
        images[name] = (work / name).read_bytes()
    return images


def ext4_seeds(work: Path) -> dict[str, bytes]:
    """The ext4 images, sparse-encoded."""
    return {name + ".sparse": pack_sparse(data) for name, data in ext4_images(work).items()}


def vhd_seeds(work: Path) -> dict[str, bytes]:
    """Small fixed VHDs (data + footer) and footers of other disk types."""
    seeds = {}
    for size in (512, 4096):
        data = bytes(size)
        seeds[f"fixed-{size}.vhd"] = data + build_fixed_footer(size, unique_id=unique_id_of(data))
    footer = bytearray(build_fixed_footer(4096, unique_id=unique_id_of(bytes(4096))))
    footer[60:64] = (3).to_bytes(4, "big")  # disk type: dynamic
    footer[64:68] = bytes(4)
    checksum = (~sum(footer)) & 0xFFFFFFFF
    footer[64:68] = checksum.to_bytes(4, "big")
    seeds["dynamic-type.vhd"] = bytes(4096) + bytes(footer)
    seeds["vhdx-signature.bin"] = b"vhdxfile" + bytes(504)
    del work
    return seeds


def vhdx_seeds(work: Path) -> dict[str, bytes]:
    """Dynamic VHDXs: empty and holding an ext4 image (lcow's writer), and qemu-img's."""
    seeds = {}
    create_dynamic_vhdx(work / "empty.vhdx", 8 << 20)
    seeds["empty.vhdx.sparse"] = pack_sparse((work / "empty.vhdx").read_bytes())
    image = work / "fs.img"
    image.write_bytes(ext4_images(work)["lcow.img"])
    fd = os.open(image, os.O_RDONLY)
    try:
        raw_to_dynamic_vhdx(fd, work / "fs.vhdx", image.stat().st_size)
    finally:
        os.close(fd)
    seeds["ext4.vhdx.sparse"] = pack_sparse((work / "fs.vhdx").read_bytes())
    qemu = _tool("qemu-img")
    if qemu is not None:
        out = work / "qemu.vhdx"
        subprocess.run(
            [qemu, "create", "-q", "-f", "vhdx", "-o", "block_size=1M", str(out), "4M"],
            check=True, capture_output=True,
        )  # fmt: skip
        seeds["qemu.vhdx.sparse"] = pack_sparse(out.read_bytes())
    return seeds


def layerchain_seeds(work: Path) -> dict[str, bytes]:
    """Chains as Docker (Windows and Linux paths) and lcow write them, and metadata."""
    del work
    values: dict[str, object] = {
        "null.json": None,
        "linux.json": ["/var/lib/docker/lcow/aaa", "/var/lib/docker/lcow/bbb"],
        "windows.json": ["C:\\ProgramData\\docker\\lcow\\ccc"],
        "empty.json": [],
        "meta.json": {"content_size": 12, "vhd_size": 4608, "diff_id": "sha256:00"},
    }
    return {name: json.dumps(v).encode() for name, v in values.items()}


def plugin_seeds(work: Path) -> dict[str, bytes]:
    """One request of each method as dockerd sends it (first byte: index in ``METHODS``)."""
    from lcow.plugin.requests import METHODS

    del work
    bodies = {
        "GraphDriver.Init": {"Home": "/var/lib/docker/lcow", "Opts": ["lcow.globalmode=true"],
                             "UIDMaps": [{"container_id": 0, "host_id": 1000, "size": 1}],
                             "GIDMaps": None},
        "GraphDriver.Create": {"ID": "abc", "Parent": "def", "MountLabel": "",
                               "StorageOpt": {"size": "20G"}},
        "GraphDriver.CreateReadWrite": {"ID": "abc-init", "Parent": "", "StorageOpt": None},
        "GraphDriver.Get": {"ID": "abc", "MountLabel": ""},
        "GraphDriver.Diff": {"ID": "abc", "Parent": "def"},
        "GraphDriver.Remove": {"ID": "abc"},
    }  # fmt: skip
    seeds = {}
    for index, method in enumerate(METHODS):
        body = json.dumps(bodies.get(method, {"ID": "abc"})).encode()
        seeds[f"{index:02d}-{method}.bin"] = bytes([index]) + body
    query = b"GraphDriver.ApplyDiff?id=abc&parent=def\n"
    seeds["raw-applydiff.bin"] = bytes([len(METHODS)]) + query
    return seeds


SEEDS: dict[str, Callable[[Path], dict[str, bytes]]] = {
    "tar_reader": lambda work: tar_seeds(),
    "ext4_reader": ext4_seeds,
    "vhd_footer": vhd_seeds,
    "vhdx": vhdx_seeds,
    "layerchain": layerchain_seeds,
    "plugin_request": plugin_seeds,
}


def main(argv: list[str]) -> int:
    """Write the seeds of the harnesses named in ``argv`` (default: all)."""
    names = argv or list(SEEDS)
    for name in names:
        target = HERE / "corpus" / name
        with tempfile.TemporaryDirectory() as work:
            seeds = SEEDS[name](Path(work))
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for file_name, data in seeds.items():
            (target / file_name).write_bytes(data)
        total = sum(len(d) for d in seeds.values())
        print(f"{name}: {len(seeds)} seeds, {total} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
