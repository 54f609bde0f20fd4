"""Conformance cases: ApplyDiff (layout, unpack size, replacing a sandbox, failures that
keep what was there) and CreateReadWrite (the default, sized and exact sandboxes, option
errors)."""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path

from lcow.errors import InvalidArgument, LcowError, NotFound
from lcow.testing.backend_suite.helpers import (
    chain_bytes,
    check_layer_vhd,
    layer_listing,
    layer_tar,
    leftovers,
    mode_of,
    pipe_feeder,
    raises,
    read_view_file,
    sandbox_root_names,
    sha256_of,
    unpack_size,
    vhdx_virtual_size,
    view_names,
)
from lcow.testing.backend_suite.spec import (
    CHAIN,
    DEFAULT_SANDBOX,
    GIB,
    LAYER_VHD,
    MIB,
    SANDBOX_ON_DISK_LIMIT,
    SANDBOX_VHDX,
    DriverFactory,
)

__all__ = [
    "test_apply_diff_failure",
    "test_apply_diff_failure_keeps_sandbox",
    "test_apply_diff_layout",
    "test_apply_diff_missing_layer",
    "test_apply_diff_replaces_sandbox",
    "test_apply_diff_unpack_size",
    "test_create_read_write_default",
    "test_create_read_write_exact_size",
    "test_create_read_write_sized",
    "test_sandbox_option_error",
]


# -- ApplyDiff -----------------------------------------------------------------------------------


def test_apply_diff_layout(make: DriverFactory, tmp: Path) -> None:
    """ApplyDiff writes ``layer.vhd`` (ext4 + valid fixed-VHD footer) beside the chain, returns
    the unpack size, leaves no temporaries."""
    root = tmp / "root"
    driver = make(root)
    driver.create("base", None)
    data = layer_tar({"etc": None, "etc/hostname": b"lcow\n", "big": bytes(100_000)})
    assert driver.apply_diff("base", None, io.BytesIO(data)) == unpack_size(data)
    folder = root / "base"
    assert layer_listing(folder) == {CHAIN, LAYER_VHD}
    assert mode_of(folder) == 0o700
    assert (folder / CHAIN).read_bytes() == b"null"
    check_layer_vhd(folder / LAYER_VHD)
    assert leftovers(root) == []
    assert sorted(view_names(driver, "base")) == ["big", "etc"]
    assert read_view_file(driver, "base", "/etc/hostname") == b"lcow\n"


def test_apply_diff_unpack_size(make: DriverFactory, tmp: Path) -> None:
    """The result is the sum of every tar entry's size field (whiteouts, links and directories
    included), and the stream is read to its very end, padding included."""
    root = tmp / "root"
    driver = make(root)
    driver.create("base", None)
    driver.apply_diff("base", None, io.BytesIO(layer_tar({"d": None, "d/x": b"1", "y": b"2"})))
    driver.create("upper", "base")
    data = layer_tar(
        {"d": None, "d/new": b"n" * 5000, "z": b"z" * 123},
        symlinks={"link": "d/new"},
        hardlinks={"hard": "z"},
        whiteouts=["y", "d/x"],
    )
    padded = data + bytes(256 * 1024)  # zero records after the end: more than a pipe buffer
    with pipe_feeder(padded) as (fd, written):
        assert driver.apply_diff("upper", "base", fd) == unpack_size(data)
        assert os.read(fd, 1) == b"", "ApplyDiff did not read the stream to its end"
        assert written[0] == len(padded)
    assert sorted(view_names(driver, "upper")) == ["d", "hard", "link", "z"]
    assert view_names(driver, "upper", "/d") == ["new"]


def test_apply_diff_replaces_sandbox(make: DriverFactory, tmp: Path) -> None:
    """ApplyDiff on a layer with a sandbox replaces it by ``layer.vhd``."""
    root = tmp / "root"
    driver = make(root)
    driver.create_read_write("rw", None, None)
    assert (root / "rw" / SANDBOX_VHDX).exists()
    data = layer_tar({"applied": b"yes"})
    assert driver.apply_diff("rw", None, io.BytesIO(data)) == unpack_size(data)
    assert layer_listing(root / "rw") == {CHAIN, LAYER_VHD}
    check_layer_vhd(root / "rw" / LAYER_VHD)
    assert view_names(driver, "rw") == ["applied"]
    assert leftovers(root) == []


def test_apply_diff_failure(make: DriverFactory, tmp: Path) -> None:
    """A truncated or garbage tar fails; the previous content (none, a layer.vhd, a sandbox) is
    left exactly as it was and no temporary file remains."""
    root = tmp / "root"
    driver = make(root)
    good = layer_tar({"keep": b"k" * 3000})
    bad = layer_tar({"a": b"a" * 10_000, "b": b"b" * 10_000})
    broken = (bad[:6000], b"definitely not a tar archive" * 40)

    driver.create("fresh", None)
    for stream in broken:
        raises(LcowError, functools.partial(driver.apply_diff, "fresh", None, io.BytesIO(stream)))
        assert os.listdir(root / "fresh") == [CHAIN]
    assert view_names(driver, "fresh") == []

    driver.create("ro", None)
    driver.apply_diff("ro", None, io.BytesIO(good))
    before = sha256_of(root / "ro" / LAYER_VHD)
    for stream in broken:
        raises(LcowError, functools.partial(driver.apply_diff, "ro", None, io.BytesIO(stream)))
        assert sha256_of(root / "ro" / LAYER_VHD) == before
        assert layer_listing(root / "ro") == {CHAIN, LAYER_VHD}
    assert read_view_file(driver, "ro", "/keep") == b"k" * 3000
    assert leftovers(root) == []


def test_apply_diff_failure_keeps_sandbox(make: DriverFactory, tmp: Path) -> None:
    """A failed ApplyDiff on a writable layer keeps its sandbox."""
    root = tmp / "root"
    driver = make(root)
    driver.create_read_write("rw", None, None)
    before = sha256_of(root / "rw" / SANDBOX_VHDX)
    truncated = layer_tar({"a": b"a" * 10_000})[:4000]
    raises(LcowError, lambda: driver.apply_diff("rw", None, io.BytesIO(truncated)))
    assert layer_listing(root / "rw") == {CHAIN, SANDBOX_VHDX}
    assert sha256_of(root / "rw" / SANDBOX_VHDX) == before
    assert leftovers(root) == []


def test_apply_diff_missing_layer(make: DriverFactory, tmp: Path) -> None:
    """ApplyDiff into an id that was never created fails and creates nothing."""
    root = tmp / "root"
    driver = make(root)
    raises(NotFound, lambda: driver.apply_diff("ghost", None, io.BytesIO(layer_tar({}))))
    assert not (root / "ghost").exists()
    assert leftovers(root) == []


# -- CreateReadWrite -----------------------------------------------------------------------------


def test_create_read_write_default(make: DriverFactory, tmp: Path) -> None:
    """The default sandbox: a 20 GB dynamic VHDX copied from ``cache/sandbox.vhdx``, a few MB on
    disk, holding an empty ext4."""
    root = tmp / "root"
    driver = make(root)
    driver.create("base", None)
    driver.create_read_write("rw", "base", None)
    sandbox = root / "rw" / SANDBOX_VHDX
    template = root / "cache" / SANDBOX_VHDX
    assert layer_listing(root / "rw") == {CHAIN, SANDBOX_VHDX}
    assert (root / "rw" / CHAIN).read_bytes() == chain_bytes([root / "base"])
    assert template.is_file()
    for path in (sandbox, template):
        assert vhdx_virtual_size(path) == DEFAULT_SANDBOX
        assert os.stat(path).st_blocks * 512 <= SANDBOX_ON_DISK_LIMIT, path
    assert sha256_of(sandbox) == sha256_of(template)
    assert sandbox_root_names(sandbox) == [b"lost+found"]
    driver.create_read_write("rw2", None, {})
    assert sha256_of(root / "rw2" / SANDBOX_VHDX) == sha256_of(template)
    assert (root / "rw2" / CHAIN).read_bytes() == b"null"
    assert leftovers(root) == []


def test_create_read_write_sized(make: DriverFactory, tmp: Path) -> None:
    """``lcow.sandboxsize=25`` (any key case) gives a 25 GiB sandbox that is never cached;
    ``lcow.sandboxsize=20`` is the default."""
    root = tmp / "root"
    driver = make(root)
    driver.create_read_write("big", None, {"lcow.sandboxsize": "25"})
    assert vhdx_virtual_size(root / "big" / SANDBOX_VHDX) == 25 * GIB
    assert os.stat(root / "big" / SANDBOX_VHDX).st_blocks * 512 <= SANDBOX_ON_DISK_LIMIT
    assert not (root / "cache" / SANDBOX_VHDX).exists(), "a 25 GB sandbox seeded the cache"
    driver.create_read_write("bigger", None, {"LCOW.SandboxSize": "30"})
    assert vhdx_virtual_size(root / "bigger" / SANDBOX_VHDX) == 30 * GIB
    driver.create_read_write("twenty", None, {"lcow.sandboxsize": "20"})
    assert vhdx_virtual_size(root / "twenty" / SANDBOX_VHDX) == DEFAULT_SANDBOX
    assert (root / "cache" / SANDBOX_VHDX).is_file()
    assert leftovers(root) == []


def test_create_read_write_exact_size(make: DriverFactory, tmp: Path) -> None:
    """Docker's ``size`` sets the sandbox's exact virtual size (binary multiples), below 20 GB
    too, and wins over ``lcow.sandboxsize``; never cached."""
    root = tmp / "root"
    driver = make(root)
    driver.create_read_write("small", None, {"size": "512M"})
    assert vhdx_virtual_size(root / "small" / SANDBOX_VHDX) == 512 * MIB
    driver.create_read_write("both", None, {"size": "1G", "lcow.sandboxsize": "25"})
    assert vhdx_virtual_size(root / "both" / SANDBOX_VHDX) == GIB
    assert not (root / "cache" / SANDBOX_VHDX).exists()
    assert leftovers(root) == []


def test_sandbox_option_error(make: DriverFactory, tmp: Path, value: str, template: str) -> None:
    """A bad ``lcow.sandboxsize`` fails with LCOW's exact message and, unlike LCOW, leaves no
    layer behind; a Create-only folder that existed before is kept as it was (one row of
    :data:`SANDBOX_OPTION_ERRORS`)."""
    root = tmp / "root"
    driver = make(root)
    exc = raises(
        InvalidArgument, lambda: driver.create_read_write("sb", None, {"lcow.sandboxsize": value})
    )
    assert str(exc) == template.format(id="sb", v=value)
    assert not driver.exists("sb")
    driver.create("kept", None)
    raises(
        InvalidArgument, lambda: driver.create_read_write("kept", None, {"lcow.sandboxsize": value})
    )
    assert driver.exists("kept")
    assert not (root / "kept" / SANDBOX_VHDX).exists()
    assert leftovers(root) == []
