"""The sample layer set (lcow.samples): deterministic, and containing every feature it promises."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pytest

from lcow.samples import BIG_FILE_SIZE, SAMPLE_LAYER_NAMES, write_sample_layers
from tests.helpers import requires, run
from tests.treemodel import expect_from_tar


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _members(path: Path) -> dict[str, list[tarfile.TarInfo]]:
    out: dict[str, list[tarfile.TarInfo]] = {}
    with tarfile.open(path, encoding="utf-8", errors="surrogateescape") as tf:
        for info in tf:
            out.setdefault(info.name.rstrip("/"), []).append(info)
    return out


def test_names_and_determinism(sample_layers: list[Path], tmp_path: Path) -> None:
    assert [p.name for p in sample_layers] == list(SAMPLE_LAYER_NAMES)
    again = write_sample_layers(tmp_path / "again")
    assert [_sha(p) for p in again] == [_sha(p) for p in sample_layers]
    assert not [p for p in (tmp_path / "again").iterdir() if p.name.startswith(".")]


def test_base_layer_features(sample_layers: list[Path]) -> None:
    m = _members(sample_layers[0])
    assert m["."][0].isdir()
    assert m["usr/share/big.bin"][0].size == BIG_FILE_SIZE
    assert m["usr/bin/sh"][0].islnk() and m["usr/bin/sh"][0].linkname == "usr/bin/dash"
    link_to_symlink = m["usr/lib/libfoo-hardlink-to-symlink.so"][0]
    assert link_to_symlink.islnk() and m[link_to_symlink.linkname][0].issym()
    assert len(m["usr/lib/target-59"][0].linkname) == 59
    assert len(m["usr/lib/slow-link"][0].linkname) > 60
    assert m["run/initctl"][0].isfifo()
    assert m["dev/null"][0].ischr() and m["dev/sda"][0].isblk()
    assert m["dev/wide-minor"][0].devminor == 0xFFFFF
    assert m["usr/bin/su"][0].mode == 0o4755 and m["tmp"][0].mode == 0o1777
    assert "SCHILY.xattr.security.capability" in m["usr/bin/ping"][0].pax_headers
    assert "SCHILY.xattr.user.mime_type" in m["etc/os-release"][0].pax_headers
    assert any(len(n.rsplit("/", 1)[-1].encode()) == 255 for n in m)
    assert any(len(n.encode()) > 200 and "/" in n for n in m)
    assert m["home/user/ids-32bit"][0].uid == 3_000_000_000
    sparse = m["var/lib/sparse.img"][0]
    assert sparse.issparse() and sparse.size == 32 << 20
    assert all(m[n][0].pax_headers["mtime"].count(".") == 1 for n in m)


def test_whiteout_layer_features(sample_layers: list[Path]) -> None:
    with tarfile.open(sample_layers[1]) as tf:
        names = [i.name for i in tf]
    assert names.index("opt/.wh.gone") < names.index("opt"), "whiteout before its directory"
    assert names.index("srv/.wh..wh..opq") < names.index("srv"), "opaque marker before its dir"
    assert {"etc/.wh.hostname", "var/log/.wh..wh..opq", "home/user/.wh.deep"} <= set(names)


def test_replace_layer_features(sample_layers: list[Path]) -> None:
    m = _members(sample_layers[2])
    assert len(m["etc/motd"]) == 2 and len(m["data/blob"]) == 2
    assert [i.type for i in m["data/thing"]] == [tarfile.REGTYPE, tarfile.DIRTYPE]
    assert [i.type for i in m["data/tree"]] == [tarfile.DIRTYPE, tarfile.REGTYPE]


def test_expected_trees(sample_layers: list[Path]) -> None:
    overlay = expect_from_tar(sample_layers[1], convert_whiteouts=True)
    assert overlay[b"etc/hostname"].kind == "chr" and overlay[b"etc/hostname"].rdev == (0, 0)
    assert overlay[b"srv"].xattrs == {"trusted.overlay.opaque": b"y"}
    replaced = expect_from_tar(sample_layers[2])
    assert replaced[b"data/tree"].kind == "reg" and b"data/tree/a" not in replaced
    assert replaced[b"data/keeps-original"].digest != replaced[b"data/victim"].digest


@requires("tar")
@pytest.mark.parametrize("index", [0, 1, 2])
def test_gnu_tar_reads_the_samples(sample_layers: list[Path], index: int) -> None:
    proc = run(["tar", "-tvf", sample_layers[index]])
    assert proc.returncode == 0, proc.stderr
    assert "Unexpected EOF" not in proc.stderr


@requires("tar")
def test_gnu_tar_extracts_the_sparse_file_like_tarfile(
    sample_layers: list[Path], tmp_path: Path
) -> None:
    proc = run(["tar", "-xf", sample_layers[0], "-C", tmp_path, "var/lib/sparse.img"])
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(sample_layers[0]) as tf:
        f = tf.extractfile("var/lib/sparse.img")
        assert f is not None
        expected = f.read()
    assert (tmp_path / "var/lib/sparse.img").read_bytes() == expected
