"""Conformance cases: String, Status, GetMetadata, GetLayerPath and Exists; InitDriver and
its options; Create and ``layerchain.json``; ids every operation refuses."""

from __future__ import annotations

import functools
import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from lcow.errors import AlreadyExists, CorruptImage, InvalidArgument, NotFound
from lcow.testing.backend_suite.helpers import (
    chain_bytes,
    layer_tar,
    leftovers,
    mode_of,
    raises,
    read_view_file,
    sha256_of,
    view_names,
    visible_names,
)
from lcow.testing.backend_suite.spec import BAD_IDS, CHAIN, LAYER_VHD, SANDBOX_VHDX, DriverFactory

__all__ = [
    "test_bad_ids",
    "test_corrupt_chain",
    "test_create_again",
    "test_create_layout",
    "test_create_missing_parent",
    "test_exists",
    "test_init_layout",
    "test_init_option_error",
    "test_init_options_accepted",
    "test_init_unknown_lcow_key",
    "test_metadata_and_layer_path",
    "test_moved_root",
    "test_string_and_status",
    "test_windows_chain",
]


# -- String, Status, GetMetadata, GetLayerPath, Exists -----------------------------------------


def test_string_and_status(make: DriverFactory, tmp: Path) -> None:
    """``String() == "lcow"``; Status starts with ``("LCOW", "")``, then string pairs."""
    driver = make(tmp / "root")
    assert str(driver) == "lcow"
    status = driver.status()
    assert status[0] == ("LCOW", "")
    assert all(
        isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(s, str) for s in pair)
        for pair in status
    ), status


def test_metadata_and_layer_path(make: DriverFactory, tmp: Path) -> None:
    """GetMetadata is ``{"dir": <root>/<id>}`` without an existence check; GetLayerPath is the
    folder; both refuse invalid ids."""
    root = tmp / "root"
    driver = make(root)
    assert driver.get_metadata("nothere") == {"dir": str(root / "nothere")}
    assert not (root / "nothere").exists()
    driver.create("layer", None)
    assert driver.get_metadata("layer") == {"dir": str(root / "layer")}
    assert driver.get_layer_path("layer") == str(root / "layer")
    for bad in BAD_IDS:
        raises(InvalidArgument, functools.partial(driver.get_metadata, bad))


def test_exists(make: DriverFactory, tmp: Path) -> None:
    """Exists is lstat of the folder: a folder without a disk exists; an invalid id is refused
    (no layer can have it)."""
    root = tmp / "root"
    driver = make(root)
    assert not driver.exists("x")
    driver.create("x", None)
    assert driver.exists("x")
    assert not (root / "x" / LAYER_VHD).exists() and not (root / "x" / SANDBOX_VHDX).exists()
    (root / "handmade").mkdir()
    assert driver.exists("handmade")
    driver.remove("x")
    assert not driver.exists("x")
    for bad in BAD_IDS:
        raises(InvalidArgument, functools.partial(driver.exists, bad))


# -- InitDriver and options -----------------------------------------------------------------------


def test_init_layout(make: DriverFactory, tmp: Path) -> None:
    """Init makes root, cache/ and scratch/ 0700 and deletes stale ``scratch/**/*.vhdx``."""
    root = tmp / "deep" / "root"
    make(root)
    for path in (root, root / "cache", root / "scratch"):
        assert path.is_dir() and mode_of(path) == 0o700, (path, oct(mode_of(path)))
    (root / "scratch" / "svm.vhdx").write_bytes(b"x")
    (root / "scratch" / "sub").mkdir()
    (root / "scratch" / "sub" / "_lcow_global_svm_.vhdx").write_bytes(b"x")
    (root / "scratch" / "notes.txt").write_bytes(b"kept")
    make(root)
    assert not (root / "scratch" / "svm.vhdx").exists()
    assert not (root / "scratch" / "sub" / "_lcow_global_svm_.vhdx").exists()
    assert (root / "scratch" / "notes.txt").read_bytes() == b"kept"


def test_init_option_error(
    make: DriverFactory, tmp: Path, options: Sequence[str], message: str
) -> None:
    """A bad InitDriver option fails with LCOW's exact message (one row of
    :data:`INIT_OPTION_ERRORS`)."""
    exc = raises(InvalidArgument, lambda: make(tmp / "root", list(options)))
    assert isinstance(exc, ValueError)
    assert str(exc) == message


def test_init_unknown_lcow_key(make: DriverFactory, tmp: Path) -> None:
    """An unknown ``lcow.*`` key is an error naming the key, whatever its case."""
    for key in ("lcow.foo", "LCOW.Foo", "lcow.sandbox_size"):
        exc = raises(InvalidArgument, functools.partial(make, tmp / "root", [f"{key}=1"]))
        assert key.lower() in str(exc).lower(), str(exc)


def test_init_options_accepted(make: DriverFactory, tmp: Path) -> None:
    """``None``, entries without ``=``, other drivers' keys and any key case are fine."""
    make(tmp / "none", None)
    make(tmp / "empty", [])
    make(tmp / "other", ["dm.basesize=10G", "overlay2.size=1G", "noequals", "=x", "foo=bar=baz"])
    driver = make(tmp / "case", ["LCOW.GlobalMode=T", "Lcow.Timeout=7"])
    assert driver.options.global_mode is True
    assert driver.options.timeout == 7
    for spelled in ("1", "t", "T", "TRUE", "true", "True"):
        assert make(tmp / "b", [f"lcow.globalmode={spelled}"]).options.global_mode is True
    for spelled in ("0", "f", "F", "FALSE", "false", "False"):
        assert make(tmp / "b", [f"lcow.globalmode={spelled}"]).options.global_mode is False
    # lcow.sandboxsize is read only from CreateReadWrite's own options: ignored at init.
    make(tmp / "sandboxsize", ["lcow.sandboxsize=abc"])


# -- Create and layerchain.json ------------------------------------------------------------------


def test_create_layout(make: DriverFactory, tmp: Path) -> None:
    """Create makes a 0700 folder holding only a 0600 compact ``layerchain.json``: ``null`` for a
    base, else the absolute folders of all ancestors, nearest first."""
    root = tmp / "root"
    driver = make(root)
    driver.create("base", None)
    driver.create("mid", "base")
    driver.create("top", "mid", None)
    for layer_id, chain in (
        ("base", []),
        ("mid", [root / "base"]),
        ("top", [root / "mid", root / "base"]),
    ):
        folder = root / layer_id
        assert mode_of(folder) == 0o700
        assert os.listdir(folder) == [CHAIN], os.listdir(folder)
        assert mode_of(folder / CHAIN) == 0o600
        assert (folder / CHAIN).read_bytes() == chain_bytes(chain)
    assert (root / "base" / CHAIN).read_bytes() == b"null"
    assert leftovers(root) == []


def test_create_missing_parent(make: DriverFactory, tmp: Path) -> None:
    """A named parent without a folder: LCOW's exact error; nothing is created."""
    root = tmp / "root"
    driver = make(root)
    exc = raises(NotFound, lambda: driver.create("child", "ghost"))
    assert isinstance(exc, FileNotFoundError)
    assert str(exc) == "lcowdriver: cannot create layer folder with missing parent ghost"
    assert not (root / "child").exists()
    assert leftovers(root) == []


def test_create_again(make: DriverFactory, tmp: Path) -> None:
    """Create over a content-less folder rewrites its chain; over a layer with content it is a
    duplicate id (AlreadyExists) and the layer is untouched."""
    root = tmp / "root"
    driver = make(root)
    driver.create("p", None)
    driver.create("x", None)
    driver.create("x", "p")
    assert (root / "x" / CHAIN).read_bytes() == chain_bytes([root / "p"])
    driver.apply_diff("p", None, io.BytesIO(layer_tar({"f": b"1"})))
    before = sha256_of(root / "p" / LAYER_VHD)
    exc = raises(AlreadyExists, lambda: driver.create("p", None))
    assert isinstance(exc, FileExistsError)
    assert sha256_of(root / "p" / LAYER_VHD) == before
    assert read_view_file(driver, "p", "/f") == b"1"


def test_windows_chain(make: DriverFactory, tmp: Path) -> None:
    """A chain written by Docker on Windows (backslash paths) resolves by last component."""
    root = tmp / "root"
    driver = make(root)
    driver.create("base", None)
    driver.apply_diff("base", None, io.BytesIO(layer_tar({"base-file": b"b"})))
    driver.create("mid", "base")
    driver.apply_diff("mid", "base", io.BytesIO(layer_tar({"mid-file": b"m"})))
    (root / "win").mkdir(mode=0o700)
    windows = [r"C:\ProgramData\docker\lcow\mid", "C:\\ProgramData\\docker\\lcow\\base\\"]
    (root / "win" / CHAIN).write_text(json.dumps(windows))
    assert driver.parent_chain("win") == [root / "mid", root / "base"]
    assert sorted(view_names(driver, "win")) == ["base-file", "mid-file"]
    driver.create("child", "win")
    chain = [root / "win", root / "mid", root / "base"]
    assert (root / "child" / CHAIN).read_bytes() == chain_bytes(chain)
    assert read_view_file(driver, "child", "/base-file") == b"b"


def test_moved_root(make: DriverFactory, tmp: Path) -> None:
    """A data root moved elsewhere keeps working: recorded absolute paths resolve by name."""
    old = tmp / "old"
    driver = make(old)
    driver.create("base", None)
    driver.apply_diff("base", None, io.BytesIO(layer_tar({"f": b"base"})))
    driver.create("child", "base")
    driver.apply_diff("child", "base", io.BytesIO(layer_tar({"g": b"child"})))
    driver.cleanup()
    new = tmp / "new"
    os.rename(old, new)
    moved = make(new)
    assert moved.parent_chain("child") == [new / "base"]
    assert read_view_file(moved, "child", "/f") == b"base"
    assert read_view_file(moved, "child", "/g") == b"child"
    assert moved.changes("child", "base") != []
    moved.create("grandchild", "child")
    assert (new / "grandchild" / CHAIN).read_bytes() == chain_bytes([new / "child", new / "base"])


def test_corrupt_chain(make: DriverFactory, tmp: Path) -> None:
    """An unparsable ``layerchain.json`` gives LCOW's unmarshall error on every read of the
    chain; a child is not created; a missing file means no ancestors."""
    root = tmp / "root"
    driver = make(root)
    driver.create("bad", None)
    path = root / "bad" / CHAIN
    prefix = f"lcowdriver: getlayerchain: bad failed to unmarshall layerchain file {path}: "
    for content in (b"{not json", b'{"a":1}', b"[1,2]", b'"C:\\\\x"', b"[null]"):
        path.write_bytes(content)
        for call in (
            lambda: driver.get("bad"),
            lambda: driver.create("badchild", "bad"),
            lambda: driver.changes("bad", None),
            lambda: driver.diff_size("bad", None),
        ):
            exc = raises(CorruptImage, call)
            assert str(exc).startswith(prefix), (content, str(exc))
        assert not (root / "badchild").exists()
        assert driver.view_count("bad") == 0
    path.unlink()
    assert driver.parent_chain("bad") == []
    assert view_names(driver, "bad") == []


def test_bad_ids(make: DriverFactory, tmp: Path, layer_id: str) -> None:
    """Ids outside the rule of :func:`lcow.storage.dataroot.validate_id` (not one path
    component, a name of the root's own folders or temporaries, unprintable, too long) are
    rejected by every operation that takes one; nothing is created or removed."""
    root = tmp / "root"
    driver = make(root)
    driver.create("victim", None)
    before = visible_names(root)
    tar = layer_tar({"f": b"x"})
    calls: list[Callable[[], object]] = [
        lambda: driver.create(layer_id, None),
        lambda: driver.create("ok", layer_id),
        lambda: driver.create_read_write(layer_id, None, None),
        lambda: driver.apply_diff(layer_id, None, io.BytesIO(tar)),
        lambda: driver.get(layer_id),
        lambda: driver.remove(layer_id),
        lambda: driver.diff(layer_id, None),
        lambda: driver.changes(layer_id, None),
        lambda: driver.diff_size(layer_id, None),
        lambda: driver.diff("victim", layer_id),
        lambda: driver.changes("victim", layer_id),
        lambda: driver.diff_size("victim", layer_id),
        lambda: driver.get_layer_path(layer_id),
        lambda: driver.get_metadata(layer_id),
        lambda: driver.exists(layer_id),
        lambda: driver.put(layer_id),
    ]
    for call in calls:
        exc = raises(InvalidArgument, call)
        assert isinstance(exc, ValueError)
    assert visible_names(root) == before
    assert leftovers(root) == []
    assert driver.exists("victim")
