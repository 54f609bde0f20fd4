"""The fsspec adapter reads a layer view like any fsspec file system."""

from __future__ import annotations

import io
import stat
import tarfile
from pathlib import Path

import pytest

from lcow.backends.fsspec_view import ViewFileSystem
from lcow.errors import NotSupported
from lcow.graphdriver.driver import Driver


def _tar(entries: list[tuple[str, bytes | None, str | None]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, link in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            elif data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


@pytest.fixture
def fs(tmp_path: Path) -> ViewFileSystem:
    driver = Driver(tmp_path / "root")
    driver.create("base")
    driver.apply_diff(
        "base", None, _tar([("etc", None, None), ("etc/hosts", b"127.0.0.1\n", None)])
    )
    driver.create("top", "base")
    driver.apply_diff(
        "top",
        "base",
        _tar(
            [
                ("etc", None, None),
                ("etc/motd", b"hello", None),
                ("etc/link", None, "motd"),
                ("etc/.wh.hosts", b"", None),
            ]
        ),
    )
    return ViewFileSystem(driver.get("top"))


def test_ls_info_cat_follow_the_union(fs: ViewFileSystem) -> None:
    assert fs.ls("/", detail=False) == ["/etc"]
    assert fs.ls("/etc", detail=False) == ["/etc/link", "/etc/motd"]  # hosts is whited out
    info = fs.info("/etc/motd")
    assert info["type"] == "file" and info["size"] == 5 and stat.S_IMODE(info["mode"]) == 0o644
    assert fs.info("/etc/link")["destination"] == "motd"
    assert fs.cat_file("/etc/motd") == b"hello"
    assert fs.cat_file("/etc/motd", start=1, end=3) == b"el"
    assert fs.find("/") == ["/etc/link", "/etc/motd"]
    assert not fs.exists("/etc/hosts")
    with fs.open("lcow:///etc/motd") as fh:
        assert fh.read() == b"hello"


def test_writes_are_refused(fs: ViewFileSystem) -> None:
    with pytest.raises(NotSupported):
        fs.open("/etc/new", "wb")
