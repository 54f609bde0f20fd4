"""``lcow import``: docker-save and OCI image tarballs into a data root (issue 4 item 7).

The images come from :func:`lcow.samples.write_sample_image`; chain IDs are recomputed here from
the layer tars with hashlib alone. Hostile tarballs are made by rewriting good ones (a flipped
byte, a dropped blob, an escaping name, a broken manifest) and must fail with exit status 3 and a
clear message, leaving no layer folder, ``-removing`` folder or spool file behind. Every imported
``layer.vhd`` must pass ``e2fsck -fn``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lcow.cli.main import main
from lcow.cli.status import ExitStatus
from lcow.samples import write_sample_image
from lcow.storage.dataroot import DataRoot
from tests.helpers import TarEntry, assert_e2fsck_clean, requires, write_tar

# ---------------------------------------------------------------------------------- helpers


def chain_ids(tars: list[Path]) -> list[str]:
    """Docker's chain IDs of ``tars`` (bottom first), as hex, computed without lcow."""
    out: list[str] = []
    chain = ""
    for tar in tars:
        diff_id = "sha256:" + hashlib.sha256(tar.read_bytes()).hexdigest()
        chain = (
            diff_id
            if not chain
            else "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
        )
        out.append(chain.split(":", 1)[1])
    return out


class Lcow:
    """``lcow --root <root> ...`` in-process, with captured output."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root = root
        self._capsys = capsys
        self.out = self.err = ""

    def __call__(self, *argv: str) -> int:
        self._capsys.readouterr()
        status = main(["--root", str(self.root), *argv])
        captured = self._capsys.readouterr()
        self.out, self.err = captured.out, captured.err
        return status

    def import_json(self, image: Path) -> dict[str, Any]:
        status = self("--json", "import", str(image))
        assert status == ExitStatus.OK, self.err
        value: dict[str, Any] = json.loads(self.out)
        return value

    def layer_ids(self) -> list[str]:
        return DataRoot(self.root).layer_ids() if self.root.exists() else []

    def assert_clean(self, before: list[str]) -> None:
        """No layer folder but ``before``, no ``-removing`` folder, nothing spooled."""
        assert self.layer_ids() == before
        if self.root.exists():
            assert not list(self.root.glob("*-removing"))
            assert not list((self.root / "scratch").iterdir())
            for layer in before:
                assert not [p for p in (self.root / layer).iterdir() if ".tmp-" in p.name]


@pytest.fixture
def lcow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Lcow:
    return Lcow(tmp_path / "root", capsys)


_IMAGES: dict[tuple[str, str], Path] = {}


@pytest.fixture(scope="session")
def sample_image(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """``sample_image(format, compression)``: the sample image, written once per session."""
    folder = tmp_path_factory.mktemp("images")

    def make(fmt: str, compression: str = "none") -> Path:
        key = (fmt, compression)
        if key not in _IMAGES:
            _IMAGES[key] = write_sample_image(
                folder / f"{fmt}-{compression}.tar",
                fmt,  # type: ignore[arg-type]
                compression=compression,  # type: ignore[arg-type]
            )
        return _IMAGES[key]

    return make


@pytest.fixture(scope="session")
def small_tars(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three small layers (whiteouts, an opaque directory, a hard link) for the hostile cases."""
    folder = tmp_path_factory.mktemp("small")
    return [
        write_tar(
            folder / "1.tar",
            [
                TarEntry("etc", "dir", mode=0o755),
                TarEntry("etc/hostname", data=b"one\n"),
                TarEntry("etc/link", "hardlink", target="etc/hostname"),
                TarEntry("opt", "dir", mode=0o755),
                TarEntry("opt/a", data=b"a\n", xattrs={"user.k": b"v"}),
            ],
        ),
        write_tar(
            folder / "2.tar",
            [
                TarEntry("etc", "dir", mode=0o755),
                TarEntry("etc/.wh.hostname"),
                TarEntry("opt", "dir", mode=0o755),
                TarEntry("opt/.wh..wh..opq"),
                TarEntry("opt/b", data=b"b\n"),
            ],
        ),
        write_tar(folder / "3.tar", [TarEntry("srv", "dir"), TarEntry("srv/c", data=b"c" * 999)]),
    ]


def members(image: Path) -> dict[str, bytes | None]:
    """Every member of an image tarball: bytes for files, ``None`` for directories."""
    out: dict[str, bytes | None] = {}
    with tarfile.open(image) as tf:
        for info in tf:
            stream = tf.extractfile(info) if info.isfile() else None
            out[info.name] = stream.read() if stream is not None else None
    return out


def rewrite(
    src: Path,
    dst: Path,
    *,
    replace: dict[str, bytes] | None = None,
    drop: set[str] | None = None,
    extra: list[tarfile.TarInfo] | None = None,
) -> Path:
    """Copy an image tarball, replacing, dropping or adding members."""
    replace, drop = replace or {}, drop or set()
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tout:
        for info in tin:
            if info.name in drop:
                continue
            if info.name in replace:
                data = replace[info.name]
                info.size = len(data)
                tout.addfile(info, io.BytesIO(data))
            else:
                tout.addfile(info, tin.extractfile(info) if info.isfile() else None)
        for info in extra or []:
            tout.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return dst


def docker_layer_names(image: Path) -> list[str]:
    manifest = json.loads(members(image)["manifest.json"] or b"")
    layers: list[str] = manifest[0]["Layers"]
    return layers


def oci_layer_names(image: Path) -> list[str]:
    found = members(image)
    index = json.loads(found["index.json"] or b"")
    digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads(found[f"blobs/sha256/{digest}"] or b"")
    return [f"blobs/sha256/{layer['digest'].split(':')[1]}" for layer in manifest["layers"]]


def flip_a_data_byte(data: bytes) -> bytes:
    """The same length, one byte of ``srv/c`` (3.tar) different: still a well-formed tar."""
    raw = bytearray(data)
    index = raw.find(b"c" * 999)
    assert index > 0
    raw[index] = ord("d")
    return bytes(raw)


def _info(name: str, kind: bytes = tarfile.REGTYPE, *, size: int = 1, link: str = "") -> Any:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size if kind == tarfile.REGTYPE else 0, link
    return info


# ---------------------------------------------------------------------------------- good images

FORMATS = [
    ("docker", "none"),
    ("docker", "gzip"),
    ("docker", "zstd"),
    ("docker-oci", "none"),
    ("oci", "none"),
    ("oci", "gzip"),
    ("oci", "zstd"),
]


@pytest.mark.parametrize(("fmt", "compression"), FORMATS, ids=[f"{f}-{c}" for f, c in FORMATS])
def test_import_creates_the_chain_by_chain_id(
    lcow: Lcow,
    sample_layers: list[Path],
    sample_image: Callable[[str, str], Path],
    fmt: str,
    compression: str,
) -> None:
    expected = chain_ids(sample_layers)
    value = lcow.import_json(sample_image(fmt, compression))
    assert value["Format"] == ("oci-layout" if fmt == "oci" else "docker-archive")
    layers = value["Layers"]
    assert [layer["Id"] for layer in layers] == expected
    assert [layer["ChainID"] for layer in layers] == [f"sha256:{i}" for i in expected]
    assert [layer["Parent"] for layer in layers] == [None, *expected[:-1]]
    assert all(layer["Created"] for layer in layers)
    assert {layer["Compression"] for layer in layers} == {compression}
    for layer, tar in zip(layers, sample_layers, strict=True):
        assert layer["DiffID"] == "sha256:" + hashlib.sha256(tar.read_bytes()).hexdigest()
        with tarfile.open(tar) as tf:
            assert layer["Size"] == sum(info.size for info in tf)  # ApplyDiff's unpack size
    (image,) = value["Images"]
    assert image["Layers"] == expected and image["Top"] == expected[-1]
    assert "lcow-sample:latest" in image["Tags"][0]
    root = DataRoot(lcow.root)
    assert root.layer_ids() == sorted(expected)
    for position, layer_id in enumerate(expected):
        folder = lcow.root / layer_id
        assert (folder / "layer.vhd").is_file()
        assert [p.name for p in root.read_chain(layer_id)] == expected[:position][::-1]
        assert root.read_meta(layer_id)["diff_id"] == layers[position]["DiffID"]


def test_import_prints_the_ids(
    lcow: Lcow, sample_layers: list[Path], sample_image: Callable[[str, str], Path]
) -> None:
    assert lcow("import", str(sample_image("docker", "none"))) == ExitStatus.OK
    assert lcow.out.split() == chain_ids(sample_layers)
    assert "3 new, 0 already present" in lcow.err and "lcow-sample:latest" in lcow.err


def test_reimport_is_idempotent(
    lcow: Lcow, sample_layers: list[Path], sample_image: Callable[[str, str], Path]
) -> None:
    image = sample_image("docker", "none")
    lcow.import_json(image)
    stamps = {i: (lcow.root / i / "layer.vhd").stat().st_mtime_ns for i in lcow.layer_ids()}
    again = lcow.import_json(image)
    assert [layer["Id"] for layer in again["Layers"]] == chain_ids(sample_layers)
    assert not any(layer["Created"] for layer in again["Layers"])
    assert {i: (lcow.root / i / "layer.vhd").stat().st_mtime_ns for i in lcow.layer_ids()} == stamps
    # the same image in another format shares every layer
    other = lcow.import_json(sample_image("oci", "zstd"))
    assert not any(layer["Created"] for layer in other["Layers"])
    assert len(lcow.layer_ids()) == 3


def test_import_skips_layers_that_exist(
    lcow: Lcow, sample_layers: list[Path], tmp_path: Path, sample_image: Callable[[str, str], Path]
) -> None:
    base_only = write_sample_image(tmp_path / "base.tar", "oci", layers=sample_layers[:1])
    assert [layer["Created"] for layer in lcow.import_json(base_only)["Layers"]] == [True]
    full = lcow.import_json(sample_image("docker", "zstd"))
    assert [layer["Created"] for layer in full["Layers"]] == [False, True, True]


def test_imported_view_reads_through_the_union(
    lcow: Lcow, sample_layers: list[Path], sample_image: Callable[[str, str], Path]
) -> None:
    top = chain_ids(sample_layers)[-1]
    lcow.import_json(sample_image("oci", "none"))
    assert lcow("cat", top, "/etc/passwd") == ExitStatus.OK
    assert lcow.out == "root:x:0:0:root:/root:/bin/bash\n"
    assert lcow("cat", top, "/etc/hostname") == ExitStatus.NOT_FOUND  # whiteout in layer 2
    assert lcow("cat", top, "/srv/old") == ExitStatus.NOT_FOUND  # opaque srv in layer 2
    assert lcow("cat", top, "/etc/motd") == ExitStatus.OK
    assert lcow.out == "second motd: the later entry wins\n"
    assert lcow("--json", "tree", top, "/usr/bin") == ExitStatus.OK
    names = [r["Path"] for r in json.loads(lcow.out)]
    assert "/usr/bin/su" not in names and "/usr/bin/sh" in names


@requires("e2fsck")
@pytest.mark.parametrize(("fmt", "compression"), [("docker", "none"), ("oci", "zstd")])
def test_imported_layers_pass_e2fsck(
    lcow: Lcow, sample_image: Callable[[str, str], Path], fmt: str, compression: str
) -> None:
    lcow.import_json(sample_image(fmt, compression))
    layers = lcow.layer_ids()
    assert len(layers) == 3
    for layer in layers:
        assert_e2fsck_clean(lcow.root / layer / "layer.vhd")


@pytest.mark.parametrize("packer", ["gzip", "zstd"])
def test_compressed_outer_tarball(
    lcow: Lcow,
    sample_layers: list[Path],
    small_tars: list[Path],
    tmp_path: Path,
    packer: str,
) -> None:
    image = write_sample_image(tmp_path / "image.tar", "docker", layers=small_tars)
    packed = tmp_path / f"image.tar.{packer}"
    if packer == "gzip":
        packed.write_bytes(gzip.compress(image.read_bytes()))
    else:
        import zstandard

        packed.write_bytes(zstandard.ZstdCompressor().compress(image.read_bytes()))
    value = lcow.import_json(packed)
    assert [layer["Id"] for layer in value["Layers"]] == chain_ids(small_tars)
    lcow.assert_clean(sorted(chain_ids(small_tars)))


@pytest.mark.parametrize("how", ["file", "pipe"])
def test_import_from_stdin(lcow: Lcow, small_tars: list[Path], tmp_path: Path, how: str) -> None:
    image = write_sample_image(tmp_path / "image.tar", "oci", compression="gzip", layers=small_tars)
    argv = [sys.executable, "-m", "lcow", "--root", str(lcow.root), "import", "-"]
    if how == "file":  # stdin redirected from the file: read in place
        with open(image, "rb") as stdin:
            proc = subprocess.run(argv, stdin=stdin, capture_output=True, check=False)
    else:  # a pipe: spooled to an anonymous file in <root>/scratch
        proc = subprocess.run(argv, input=image.read_bytes(), capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().split() == chain_ids(small_tars)
    assert b"imported <stdin>" in proc.stderr
    lcow.assert_clean(sorted(chain_ids(small_tars)))


# ---------------------------------------------------------------------------------- hostile


@pytest.fixture(scope="session")
def small_images(
    small_tars: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("small-images")
    out = {
        fmt: write_sample_image(folder / f"{fmt}.tar", fmt, layers=small_tars)
        for fmt in ("docker", "docker-oci", "oci")
    }
    out["docker-gzip"] = write_sample_image(
        folder / "docker-gzip.tar", "docker", compression="gzip", layers=small_tars
    )
    return out


Case = Callable[[dict[str, Path], Path], Path]


def _tamper_layer(fmt: str) -> Case:
    def make(images: dict[str, Path], dst: Path) -> Path:
        src = images[fmt]
        names = docker_layer_names(src) if fmt != "oci" else oci_layer_names(src)
        data = members(src)[names[-1]] or b""
        return rewrite(src, dst, replace={names[-1]: flip_a_data_byte(data)})

    return make


def _tamper_config(images: dict[str, Path], dst: Path) -> Path:
    src = images["docker"]
    config = json.loads(members(src)["manifest.json"] or b"")[0]["Config"]
    data = (members(src)[config] or b"").replace(b'"os":"linux"', b'"os":"LINUX"')
    return rewrite(src, dst, replace={config: data})


def _drop_layer(fmt: str) -> Case:
    def make(images: dict[str, Path], dst: Path) -> Path:
        src = images[fmt]
        names = docker_layer_names(src) if fmt != "oci" else oci_layer_names(src)
        return rewrite(src, dst, drop={names[1]})

    return make


def _extra_member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> Case:
    def make(images: dict[str, Path], dst: Path) -> Path:
        return rewrite(images["docker"], dst, extra=[_info(name, kind, link=link)])

    return make


def _symlinked_layer(images: dict[str, Path], dst: Path) -> Path:
    src = images["docker"]
    name = docker_layer_names(src)[0]
    link = _info(name, tarfile.SYMTYPE, link="../../../../etc/passwd")
    return rewrite(src, dst, drop={name}, extra=[link])


def _manifest(edit: Callable[[Any], Any]) -> Case:
    def make(images: dict[str, Path], dst: Path) -> Path:
        src = images["docker"]
        manifest = json.loads(members(src)["manifest.json"] or b"")
        return rewrite(src, dst, replace={"manifest.json": json.dumps(edit(manifest)).encode()})

    return make


def _escaping_reference(manifest: Any) -> Any:
    manifest[0]["Layers"][0] = "../outside/layer.tar"
    return manifest


def _short_layers(manifest: Any) -> Any:
    manifest[0]["Layers"] = manifest[0]["Layers"][:2]
    return manifest


def _raw(name: str, data: bytes, fmt: str = "docker") -> Case:
    def make(images: dict[str, Path], dst: Path) -> Path:
        return rewrite(images[fmt], dst, replace={name: data})

    return make


def _unsupported_diff_id(images: dict[str, Path], dst: Path) -> Path:
    """A config (under a name that states no digest) whose first diff ID is sha512."""
    src = images["docker"]
    found = members(src)
    manifest = json.loads(found["manifest.json"] or b"")
    config = json.loads(found[manifest[0]["Config"]] or b"")
    config["rootfs"]["diff_ids"][0] = "sha512:" + "ab" * 64
    manifest[0]["Config"] = "config.json"
    extra = _info("config.json", size=0)
    tmp = rewrite(
        src, dst.with_suffix(".tmp"), replace={"manifest.json": json.dumps(manifest).encode()}
    )
    data = json.dumps(config).encode()
    extra.size = len(data)
    with tarfile.open(tmp) as tin, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tout:
        for info in tin:
            tout.addfile(info, tin.extractfile(info) if info.isfile() else None)
        tout.addfile(extra, io.BytesIO(data))
    return dst


def _oci_layer_size_mismatch(images: dict[str, Path], dst: Path) -> Path:
    """The manifest's last layer descriptor claims one byte more (index re-pointed to it)."""
    src = images["oci"]
    found = members(src)
    index = json.loads(found["index.json"] or b"")
    old = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads(found[f"blobs/sha256/{old}"] or b"")
    manifest["layers"][-1]["size"] += 1
    data = json.dumps(manifest).encode()
    digest = hashlib.sha256(data).hexdigest()
    index["manifests"][0].update(digest=f"sha256:{digest}", size=len(data))
    tmp = rewrite(
        src,
        dst.with_suffix(".tmp"),
        replace={"index.json": json.dumps(index).encode()},
        drop={f"blobs/sha256/{old}"},
    )
    with tarfile.open(tmp) as tin, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tout:
        for info in tin:
            tout.addfile(info, tin.extractfile(info) if info.isfile() else None)
        blob = _info(f"blobs/sha256/{digest}", size=len(data))
        tout.addfile(blob, io.BytesIO(data))
    return dst


def _not_an_image(images: dict[str, Path], dst: Path) -> Path:
    return write_tar(dst, [TarEntry("hello.txt", data=b"hi\n")])


def _truncated_gzip_layer(images: dict[str, Path], dst: Path) -> Path:
    src = images["docker-gzip"]
    name = docker_layer_names(src)[-1]
    data = members(src)[name] or b""
    return rewrite(src, dst, replace={name: data[: len(data) // 2]})


def _layer_not_a_tar(images: dict[str, Path], dst: Path) -> Path:
    src = images["docker"]
    name = docker_layer_names(src)[-1]
    return rewrite(src, dst, replace={name: b"\x07" * 2048})


HOSTILE: list[tuple[str, Case, str]] = [
    ("docker-bad-diff-id", _tamper_layer("docker"), "diff ID mismatch"),
    ("docker-oci-bad-digest", _tamper_layer("docker-oci"), "digest mismatch"),
    ("oci-bad-digest", _tamper_layer("oci"), "digest mismatch"),
    ("bad-config-digest", _tamper_config, "digest mismatch"),
    ("docker-missing-layer", _drop_layer("docker"), "missing from the image archive"),
    ("oci-missing-layer", _drop_layer("oci"), "missing from the image archive"),
    ("member-climbs-out", _extra_member("../evil"), "escapes the image archive"),
    ("member-absolute", _extra_member("/etc/evil"), "escapes the image archive"),
    (
        "hardlink-climbs-out",
        _extra_member("x", tarfile.LNKTYPE, "../../etc/passwd"),
        "escapes the image archive",
    ),
    ("symlinked-layer-escapes", _symlinked_layer, "escapes the image archive"),
    ("reference-escapes", _manifest(_escaping_reference), "escapes the image archive"),
    ("manifest-not-json", _raw("manifest.json", b"{this is not json"), "not valid JSON"),
    ("manifest-not-a-list", _manifest(lambda m: {"Config": "x"}), "non-empty JSON array"),
    ("manifest-empty", _manifest(lambda m: []), "non-empty JSON array"),
    ("layer-count-mismatch", _manifest(_short_layers), "lists 2 layers but its config"),
    ("index-not-json", _raw("index.json", b"[", fmt="oci"), "not valid JSON"),
    ("oci-layout-version", _raw("oci-layout", b'{"imageLayoutVersion":"9"}', "oci"), "Version"),
    ("not-an-image", _not_an_image, "not an image archive"),
    ("unsupported-diff-id", _unsupported_diff_id, "unsupported digest algorithm 'sha512'"),
    ("oci-layer-size-mismatch", _oci_layer_size_mismatch, "does not match the descriptor's"),
    ("truncated-gzip-layer", _truncated_gzip_layer, "gzip"),
    ("layer-not-a-tar", _layer_not_a_tar, "layer.tar: not a valid layer tar: "),
]


@pytest.mark.parametrize(("case", "text"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_tarballs_fail_cleanly(
    lcow: Lcow, small_images: dict[str, Path], tmp_path: Path, case: Case, text: str
) -> None:
    bad = case(small_images, tmp_path / "bad.tar")
    assert lcow("import", str(bad)) == ExitStatus.BAD_INPUT, lcow.err
    assert lcow.out == ""
    assert lcow.err.startswith("lcow: ") and text in lcow.err, lcow.err
    assert "Traceback" not in lcow.err
    lcow.assert_clean([])


def test_a_bad_digest_removes_only_the_layers_of_this_import(
    lcow: Lcow, small_tars: list[Path], small_images: dict[str, Path], tmp_path: Path
) -> None:
    base = write_sample_image(tmp_path / "base.tar", "docker", layers=small_tars[:1])
    lcow.import_json(base)
    before = lcow.layer_ids()
    bad = _tamper_layer("oci")(small_images, tmp_path / "bad.tar")
    assert lcow("import", str(bad)) == ExitStatus.BAD_INPUT
    assert "digest mismatch: expected sha256:" in lcow.err
    lcow.assert_clean(before)  # layer 2 was created, then removed with the failed layer 3
    good = lcow.import_json(small_images["oci"])
    assert [layer["Created"] for layer in good["Layers"]] == [False, True, True]


# ---------------------------------------------------------------------------------- samples


@pytest.mark.parametrize("fmt", ["docker", "docker-oci", "oci"])
def test_sample_image_is_deterministic(small_tars: list[Path], tmp_path: Path, fmt: str) -> None:
    one = write_sample_image(tmp_path / "a" / "one.tar", fmt, layers=small_tars)  # type: ignore[arg-type]
    two = write_sample_image(tmp_path / "b" / "two.tar", fmt, compression="none", layers=small_tars)  # type: ignore[arg-type]
    assert one.read_bytes() == two.read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["one.tar"]


def test_sample_image_rejects_unknown_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown image format"):
        write_sample_image(tmp_path / "x.tar", "tgz")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown compression"):
        write_sample_image(tmp_path / "x.tar", "oci", compression="bz2")  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())
