"""A cut or damaged input never becomes a shorter layer (data-safety issue, items A and B).

Every path that reads a tar — ``tar2ext4`` from a path, a pipe, a file object and a slice of
an image archive, ``Driver.apply_diff``, ``lcow import`` (compressed layer blobs and a
compressed outer tarball), ``extract_archive`` (``lcow.backends.untar``) — is fed the same
table of cuts: inside a zstd frame, just the zstd checksum, at a frame boundary of
concatenated frames, just the gzip trailer, inside a gzip member, at a member boundary, and a
plain tar cut at a block boundary (no end-of-archive marker, or only one of its two zero
blocks). Each must fail with an ``InvalidArgument`` naming the input and leave nothing behind;
the whole inputs (concatenated frames and members included) must still convert. Decompression
itself is judged by zstd(1) and gzip(1) as oracles: what they reject, lcow rejects.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from lcow import tar2ext4
from lcow._util.decompress import decompress
from lcow.backends.untar import untar
from lcow.cli.main import main
from lcow.convert.input import FileSlice
from lcow.errors import InvalidArgument
from lcow.graphdriver.driver import Driver
from lcow.images.importer import import_image
from tests.helpers import requires, tool

BLOCK = 512


def _tar(count: int = 40) -> bytes:
    """A tar of ``count`` small files, its end marker (and padding) at the end."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for i in range(count):
            data = (b"%04d" % i) * 200
            info = tarfile.TarInfo(f"d/f{i:03d}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


TAR = _tar()
#: Where the members end: the first zero block of the end marker.
MARKER = len(TAR.rstrip(b"\0")) + (-len(TAR.rstrip(b"\0")) % BLOCK)
#: A header boundary in the middle (member 20 of 40 starts here).
MIDDLE = 20 * (BLOCK + 1024)


def _zstd(data: bytes, *, checksum: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_checksum=checksum).compress(data)


def _two_zstd_frames() -> tuple[bytes, int]:
    first = _zstd(TAR[:MIDDLE])
    return first + _zstd(TAR[MIDDLE:]), len(first)


def _two_gzip_members() -> tuple[bytes, int]:
    first = gzip.compress(TAR[:MIDDLE], mtime=0)
    return first + gzip.compress(TAR[MIDDLE:], mtime=0), len(first)


ZSTD = _zstd(TAR)
GZIP = gzip.compress(TAR, mtime=0)
ZSTD2, ZSTD2_BOUNDARY = _two_zstd_frames()
GZIP2, GZIP2_BOUNDARY = _two_gzip_members()

#: name -> (input, what the message must say). The cut at a frame or member boundary
#: decompresses cleanly to a tar without its end marker: the tar reader catches it.
CUTS: dict[str, tuple[bytes, str]] = {
    "zstd-header-only": (ZSTD[:6], "truncated zstd stream"),
    "zstd-mid-frame": (ZSTD[: len(ZSTD) // 2], "truncated zstd stream"),
    "zstd-checksum-only": (ZSTD[:-4], "truncated zstd stream: the input ends inside the frame's"),
    "zstd-last-byte": (ZSTD[:-1], "truncated zstd stream"),
    "zstd-no-checksum-cut": (_zstd(TAR, checksum=False)[:-1], "truncated zstd stream"),
    "zstd-frame-boundary": (ZSTD2[:ZSTD2_BOUNDARY], "no end-of-archive marker"),
    "zstd-second-frame-cut": (ZSTD2[:-4], "truncated zstd stream"),
    "gzip-header-only": (GZIP[:5], "truncated gzip stream"),
    "gzip-mid-member": (GZIP[: len(GZIP) // 2], "truncated gzip stream"),
    "gzip-trailer-only": (GZIP[:-8], "truncated gzip stream"),
    "gzip-trailer-length": (GZIP[:-4], "truncated gzip stream"),
    "gzip-last-byte": (GZIP[:-1], "truncated gzip stream"),
    "gzip-member-boundary": (GZIP2[:GZIP2_BOUNDARY], "no end-of-archive marker"),
    "gzip-second-member-cut": (GZIP2[:-3], "truncated gzip stream"),
    "tar-block-boundary": (TAR[:MIDDLE], "no end-of-archive marker"),
    "tar-before-marker": (TAR[:MARKER], "no end-of-archive marker"),
    "tar-one-zero-block": (TAR[: MARKER + BLOCK], "one zero block"),
    "tar-empty": (b"", "empty input, not a tar archive"),
}
WHOLE: dict[str, bytes] = {
    "plain": TAR,
    "zstd": ZSTD,
    "gzip": GZIP,
    "zstd-two-frames": ZSTD2,
    "gzip-two-members": GZIP2,
    "zstd-no-checksum": _zstd(TAR, checksum=False),
}


def _write(tmp_path: Path, data: bytes, name: str = "in.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- oracles: what zstd(1) and gzip(1) say about the compressed cuts ---------------------------


@requires("zstd", "gzip")
@pytest.mark.parametrize("case", [c for c in CUTS if c.startswith(("zstd", "gzip"))])
def test_the_compressed_cuts_are_judged_as_the_real_tools_judge_them(
    case: str, tmp_path: Path
) -> None:
    data, _ = CUTS[case]
    program = "zstd" if case.startswith("zstd") else "gzip"
    binary = tool(program)
    assert binary is not None
    proc = subprocess.run([binary, "-dc"], input=data, capture_output=True, check=False)
    ours: str | None = None
    try:
        b"".join(decompress(program, io.BytesIO(data).read, name="cut"))
    except InvalidArgument as exc:
        ours = str(exc)
    if case.endswith("boundary"):  # a whole but shorter stream: both accept it
        assert proc.returncode == 0 and ours is None
        assert proc.stdout == TAR[:MIDDLE]
    else:
        assert proc.returncode != 0, f"{program} accepted {case}"
        assert ours is not None and ours.startswith("cut: "), ours


# -- the converter ------------------------------------------------------------------------------


def _via_path(src: Path) -> Callable[[Path], object]:
    return lambda out: tar2ext4(src, out)


def _via_pipe(src: Path) -> Callable[[Path], object]:
    def run(out: Path) -> object:
        read_fd, write_fd = os.pipe()

        def feed() -> None:
            try:
                with open(write_fd, "wb") as pipe:
                    pipe.write(src.read_bytes())
            except BrokenPipeError:
                pass

        feeder = threading.Thread(target=feed)
        feeder.start()
        try:
            return tar2ext4(read_fd, out)
        finally:
            os.close(read_fd)
            feeder.join()

    return run


def _via_object(src: Path) -> Callable[[Path], object]:
    return lambda out: tar2ext4(io.BytesIO(src.read_bytes()), out)


def _via_slice(src: Path) -> Callable[[Path], object]:
    def run(out: Path) -> object:
        outer = src.with_name("outer.bin")
        outer.write_bytes(b"P" * 1536 + src.read_bytes() + TAR)  # a whole tar follows
        fd = os.open(outer, os.O_RDONLY)
        try:
            return tar2ext4(FileSlice(fd, 1536, src.stat().st_size, "img.tar: blob"), out)
        finally:
            os.close(fd)

    return run


VIAS = {"path": _via_path, "pipe": _via_pipe, "object": _via_object, "slice": _via_slice}
NAMES = {"path": "in.bin", "pipe": "<stream>", "object": "<stream>", "slice": "img.tar: blob"}


@pytest.mark.parametrize("via", list(VIAS))
@pytest.mark.parametrize("case", list(CUTS))
def test_tar2ext4_refuses_every_cut(case: str, via: str, tmp_path: Path) -> None:
    data, says = CUTS[case]
    src = _write(tmp_path, data)
    out = tmp_path / "out" / "layer.img"
    out.parent.mkdir()
    with pytest.raises(InvalidArgument) as info:
        VIAS[via](src)(out)
    message = str(info.value)
    assert says in message
    if via == "path":
        assert message.startswith(f"{src}: "), message
    else:
        assert message.startswith(NAMES[via] + ": "), message
    assert os.listdir(out.parent) == []


@pytest.mark.parametrize("via", list(VIAS))
@pytest.mark.parametrize("case", list(WHOLE))
def test_tar2ext4_takes_every_whole_input(case: str, via: str, tmp_path: Path) -> None:
    src = _write(tmp_path, WHOLE[case])
    result = VIAS[via](src)(tmp_path / "layer.img")
    assert result.entries == 40  # type: ignore[attr-defined]


def test_the_command_line_exits_3_naming_the_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _write(tmp_path, CUTS["zstd-checksum-only"][0], "t.zst")
    out = tmp_path / "t.img"
    assert main(["tar2ext4", "-i", str(src), "-o", str(out)]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"lcow: {src}: truncated zstd stream"), err
    assert not out.exists()
    root = tmp_path / "root"
    assert main(["--root", str(root), "create", "L"]) == 0
    assert main(["--root", str(root), "apply-diff", "L", "-i", str(src)]) == 3
    assert "truncated zstd stream" in capsys.readouterr().err
    assert sorted(os.listdir(root / "L")) == ["layerchain.json"]


@pytest.mark.parametrize("case", list(CUTS))
def test_apply_diff_refuses_every_cut(case: str, tmp_path: Path) -> None:
    data, says = CUTS[case]
    src = _write(tmp_path, data)
    driver = Driver(tmp_path / "root", ["lcow.backend=userspace"])
    driver.create("L")
    with pytest.raises(InvalidArgument, match=says.replace("(", r"\(")):
        driver.apply_diff("L", None, src)
    assert sorted(os.listdir(tmp_path / "root" / "L")) == ["layerchain.json"]


def test_a_header_that_is_no_header_is_not_quoted(tmp_path: Path) -> None:
    """Junk says 'not a tar archive'; a bad header later names the entry before it."""
    junk = _write(tmp_path, b"# services\x00\x00\x01 not a tar at all\n" * 40, "junk")
    with pytest.raises(InvalidArgument) as info:
        tar2ext4(junk, tmp_path / "a.img")
    assert str(info.value).startswith(f"{junk}: not a tar archive")
    assert "services" not in str(info.value) and "\x00" not in str(info.value)
    bad = bytearray(TAR)
    bad[MIDDLE : MIDDLE + 100] = b"\x01\x02evil\x00name".ljust(100, b"\xff")  # checksum now off
    src = _write(tmp_path, bytes(bad), "bad.tar")
    with pytest.raises(InvalidArgument) as info:
        tar2ext4(src, tmp_path / "b.img")
    message = str(info.value)
    assert message == (
        f"{src}: invalid tar header at offset {MIDDLE} (checksum mismatch) (after entry d/f019)"
    )
    assert not (tmp_path / "a.img").exists() and not (tmp_path / "b.img").exists()


# -- import: compressed layer blobs and a compressed outer tarball ------------------------------


def _lenient(data: bytes) -> bytes:
    """What a reader that does not check completeness makes of ``data`` (the digest a
    forged manifest would carry for a cut blob)."""
    if data.startswith(b"\x28\xb5\x2f\xfd"):
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data))
        return reader.read()
    if data.startswith(b"\x1f\x8b"):
        return zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(data)
    return data


def _docker_save(path: Path, blob: bytes) -> None:
    diff_id = "sha256:" + hashlib.sha256(_lenient(blob)).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": ["cut:latest"], "Layers": ["l/layer.tar"]}]
    ).encode()
    with tarfile.open(path, "w") as tf:
        for name, data in (
            (config_name, config),
            ("manifest.json", manifest),
            ("l/layer.tar", blob),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("case", list(CUTS))
def test_import_refuses_every_cut_layer_blob(case: str, tmp_path: Path) -> None:
    data, says = CUTS[case]
    image = tmp_path / "image.tar"
    _docker_save(image, data)
    driver = Driver(tmp_path / "root", ["lcow.backend=userspace"])
    with pytest.raises(InvalidArgument) as info:
        import_image(driver, image)
    assert says in str(info.value) and "l/layer.tar" in str(info.value)
    assert driver_layers(tmp_path / "root") == []


def driver_layers(root: Path) -> list[str]:
    """Layers of a data root holding content (a ``layer.vhd``)."""
    return sorted(p.name for p in root.iterdir() if (p / "layer.vhd").exists())


@pytest.mark.parametrize(
    ("kind", "cut"),
    [("gzip", 8), ("gzip", 1), ("zstd", 4), ("zstd", 1), ("gzip", "half"), ("zstd", "half")],
)
def test_import_refuses_a_cut_compressed_image_tarball(
    kind: str, cut: int | str, tmp_path: Path
) -> None:
    plain = tmp_path / "plain.tar"
    _docker_save(plain, TAR)
    raw = plain.read_bytes()
    packed = gzip.compress(raw, mtime=0) if kind == "gzip" else _zstd(raw)
    keep = len(packed) // 2 if cut == "half" else len(packed) - int(cut)
    image = _write(tmp_path, packed[:keep], "image.tar.z")
    driver = Driver(tmp_path / "root", ["lcow.backend=userspace"])
    with pytest.raises(InvalidArgument, match=rf"^{image}: truncated {kind} stream"):
        import_image(driver, image)
    assert driver_layers(tmp_path / "root") == []
    whole = _write(tmp_path, packed, "whole.tar.z")
    import_image(driver, whole)
    assert len(driver_layers(tmp_path / "root")) == 1


# -- extract_archive: the tarfile-based extractor -----------------------------------------------


@requires("root")
@pytest.mark.parametrize("case", list(CUTS))
def test_extract_archive_refuses_every_cut(case: str, tmp_path: Path) -> None:
    data, says = CUTS[case]
    dest = tmp_path / "dest"
    dest.mkdir()
    fd = os.open(dest, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(InvalidArgument) as info:
            untar(fd, io.BytesIO(data))
    finally:
        os.close(fd)
    assert says in str(info.value)
    assert str(info.value).startswith("archive: ")


@requires("root")
@pytest.mark.parametrize("case", list(WHOLE))
def test_extract_archive_takes_every_whole_input(case: str, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    fd = os.open(dest, os.O_PATH | os.O_DIRECTORY)
    try:
        untar(fd, io.BytesIO(WHOLE[case]))
    finally:
        os.close(fd)
    assert len(os.listdir(dest / "d")) == 40


def test_the_caller_may_name_the_input(tmp_path: Path) -> None:
    """The driver can say what a stream is (a layer id) instead of ``<stream>``."""
    with pytest.raises(InvalidArgument, match=r"^layer 1234: truncated zstd stream"):
        tar2ext4(io.BytesIO(CUTS["zstd-mid-frame"][0]), tmp_path / "x.img", name="layer 1234")
    assert not (tmp_path / "x.img").exists()
