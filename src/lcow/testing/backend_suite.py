"""Driver conformance suite: LCOW's exact results and data-root layout on any backend (SPEC §1-§3).

Every case takes a :class:`DriverFactory` (``make(home, options)`` returns a driver on ``home``
using the backend under test) and a scratch directory, and checks only what SPEC §1-§3 fix:
the operations' results and error texts, the folders and files of the data root after each
operation, ``layerchain.json`` byte for byte, sandbox sizes, option parsing, crash-safe writes
(no temporaries left by a failed ApplyDiff) and the reference counts of Get and Put. Content is
put into layers with ApplyDiff only, so read-only backends run every case.

The on-disk names (``layer.vhd``, ``sandbox.vhdx``, ``layerchain.json``, ``-removing``) are
spelled out here rather than imported, so the suite is an oracle independent of
:mod:`lcow.storage`. Cases are plain functions using ``assert``; a test module runs each one
per backend (``tests/conformance/test_driver.py``). Cases that make sandboxes need ``mke2fs``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from lcow.errors import AlreadyExists, CorruptImage, InvalidArgument, LcowError, NotFound
from lcow.formats.ext4.reader import Ext4Reader
from lcow.formats.source import open_source
from lcow.formats.vhd.footer import FOOTER_SIZE, read_footer
from lcow.formats.vhd.vhdx import VhdxImage

if TYPE_CHECKING:
    from lcow.graphdriver.driver import Driver

__all__ = [
    "BAD_IDS",
    "CHAIN",
    "DEFAULT_SANDBOX",
    "INIT_OPTION_ERRORS",
    "LAYER_VHD",
    "LONGEST_ID",
    "OWN_METADATA",
    "REMOVING",
    "SANDBOX_OPTION_ERRORS",
    "SANDBOX_VHDX",
    "DriverFactory",
    "layer_tar",
    "leftovers",
    "unpack_size",
]

GIB = 1 << 30
MIB = 1 << 20
LAYER_VHD = "layer.vhd"
SANDBOX_VHDX = "sandbox.vhdx"
CHAIN = "layerchain.json"
REMOVING = "-removing"
OWN_METADATA = frozenset({"lcow-layer.json"})  # lcow's own file beside LCOW's (SPEC §1.1)
DEFAULT_SANDBOX = 20 * GIB
SANDBOX_ON_DISK_LIMIT = 8 * MIB  # "a new 20 GB sandbox occupies only a few MB"

BAD_IDS = (
    *("", ".", "..", "a/b", "../escape", "a\\b", "nul\x00id", "cache", "scratch", "mounts"),
    # Names the driver makes for itself: a layer with such an id was swept or removed with
    # another (data-safety issue item 1).
    *("x-removing", ".y.tmp-z", ".hidden", "a-removing"),
    # Not printable, not portable, or longer than every derived name allows.
    *("a b", "a\nb", "\x1b]0;x\x07", "caf\u00e9", "-lead", "_lead", "L" * 129, "L" * 255),
)
#: The longest valid id: every operation works with it (derived names stay under NAME_MAX).
LONGEST_ID = "L" * 128

# (options, exact message) of InitDriver (SPEC §2).
INIT_OPTION_ERRORS: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("lcow.globalmode=maybe",),
        "lcowdriver: init: failed to parse value for 'lcow.globalmode' - must be 'true' or 'false'",
    ),
    (
        ("lcow.globalmode=yes",),
        "lcowdriver: init: failed to parse value for 'lcow.globalmode' - must be 'true' or 'false'",
    ),
    (("lcow.timeout=abc",), "lcow.timeout option could not be interpreted as an integer"),
    (("lcow.timeout=1.5",), "lcow.timeout option could not be interpreted as an integer"),
    (("lcow.timeout=",), "lcow.timeout option could not be interpreted as an integer"),
    # Go's strconv.Atoi takes no spaces, underscores or non-ASCII digits.
    (("lcow.timeout= 5",), "lcow.timeout option could not be interpreted as an integer"),
    (("lcow.timeout=5_0",), "lcow.timeout option could not be interpreted as an integer"),
    (("lcow.timeout=-1",), "lcow.timeout option cannot be negative"),
    (("LCOW.Timeout=-7",), "lcow.timeout option cannot be negative"),
)

# (value, message template with {id}) of CreateReadWrite's lcow.sandboxsize (SPEC §2).
_PARSE = "lcowdriver: createreadwrite: id {id} failed to parse value '{v}' for 'lcow.sandboxsize'"
_LESS = "lcowdriver: createreadwrite: id {id} 'lcow.sandboxsize' option cannot be less than 20"
SANDBOX_OPTION_ERRORS: tuple[tuple[str, str], ...] = (
    ("abc", _PARSE),
    ("", _PARSE),
    ("-1", _PARSE),
    ("20.5", _PARSE),
    ("4294967296", _PARSE),  # strconv.ParseUint(v, 10, 32): beyond uint32
    # ParseUint takes no sign, spaces, underscores or non-ASCII digits.
    ("+25", _PARSE),
    (" 25", _PARSE),
    ("2_5", _PARSE),
    ("\uff12\uff15", _PARSE),
    ("19", _LESS),
    ("0", _LESS),
)


class DriverFactory(Protocol):
    """Makes a driver on ``home`` with the backend under test; ``options`` go to InitDriver."""

    def __call__(self, home: Path, options: Sequence[str] | None = None) -> Driver:
        """A new driver (InitDriver) on ``home``."""
        ...


# -- helpers ------------------------------------------------------------------------------------


def layer_tar(
    files: dict[str, bytes | None],
    *,
    whiteouts: Sequence[str] = (),
    symlinks: dict[str, str] | None = None,
    hardlinks: dict[str, str] | None = None,
    mtime: int = 1_600_000_000,
) -> bytes:
    """A PAX layer tar: ``files`` maps paths to content (``None`` = directory, 0755), then
    symlinks, hard links (``name -> target``) and AUFS whiteouts (``.wh.<name>`` markers)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.mode, info.size = 0o644, len(data)
                tar.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, mtime
            tar.addfile(info)
        for name, target in (hardlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = tarfile.LNKTYPE, target, mtime
            tar.addfile(info)
        for name in whiteouts:
            parent, base = os.path.split(name)
            info = tarfile.TarInfo(os.path.join(parent, ".wh." + base))
            info.mtime = mtime
            tar.addfile(info, io.BytesIO(b""))
    return buf.getvalue()


def unpack_size(data: bytes) -> int:
    """moby's unpack size: the sum of the size field of every tar entry (SPEC §5.8)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return sum(member.size for member in tar.getmembers())


def leftovers(root: Path) -> list[str]:
    """Temporaries (``*.tmp-*``) and ``-removing`` folders anywhere below ``root``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            if ".tmp-" in name or name.endswith(REMOVING):
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def _listing(folder: Path) -> set[str]:
    """A layer folder's names, lcow's own metadata file left out."""
    return set(os.listdir(folder)) - OWN_METADATA


def _visible(folder: Path) -> list[str]:
    """Names in a folder, dot files (lcow's lock, temporaries) left out."""
    return sorted(n for n in os.listdir(folder) if not n.startswith("."))


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _chain_bytes(folders: Sequence[Path]) -> bytes:
    """``layerchain.json`` as LCOW writes it: compact, no newline, ``null`` for a base."""
    value = [str(f) for f in folders] if folders else None
    return json.dumps(value, separators=(",", ":")).encode()


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _names(driver: Driver, layer_id: str, path: str = "/") -> list[str]:
    """Names in a directory of the view; the image's empty root ``lost+found`` (shown by a
    host-mounted single layer) is not content and is left out, as graphtest's readDir does."""
    view = driver.get(layer_id)
    try:
        names = [i.name for i in view.readdir(path)]
    finally:
        driver.put(layer_id)
    if path.strip("/") == "":
        names = [n for n in names if n != "lost+found"]
    return names


def _read(driver: Driver, layer_id: str, path: str) -> bytes:
    view = driver.get(layer_id)
    try:
        return view.readfile(path)
    finally:
        driver.put(layer_id)


def _raises(kind: type[BaseException], call: Callable[[], object]) -> BaseException:
    try:
        call()
    except kind as exc:
        return exc
    raise AssertionError(f"expected {kind.__name__}, nothing was raised")


def _vhdx_virtual_size(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    with VhdxImage(fd, name=str(path), owns_fd=True) as image:
        return image.size


def _sandbox_root_names(path: Path) -> list[bytes]:
    """Names in the root directory of the ext4 inside a sandbox."""
    with Ext4Reader(open_source(path), close_source=True) as reader:
        return sorted(e.name for e in reader.iterdir(reader.lookup(b"/")))


def _check_layer_vhd(path: Path) -> None:
    footer = read_footer(path)
    assert footer is not None, f"{path}: no valid VHD footer"
    assert footer.disk_type == 2, f"{path}: footer disk type {footer.disk_type}, not fixed"
    assert footer.current_size == path.stat().st_size - FOOTER_SIZE
    assert footer.original_size == footer.current_size


@contextlib.contextmanager
def _pipe_feeder(data: bytes) -> Iterator[tuple[int, list[int]]]:
    """A pipe whose write end a thread fills with ``data``; yields (read fd, [bytes written])."""
    read_fd, write_fd = os.pipe()
    written = [0]

    def feed() -> None:
        try:
            view = memoryview(data)
            while view:
                n = os.write(write_fd, view)
                written[0] += n
                view = view[n:]
        except BrokenPipeError:
            pass
        finally:
            os.close(write_fd)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    try:
        yield read_fd, written
    finally:
        os.close(read_fd)
        thread.join(10)


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
        _raises(InvalidArgument, functools.partial(driver.get_metadata, bad))


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
        _raises(InvalidArgument, functools.partial(driver.exists, bad))


# -- InitDriver and options -----------------------------------------------------------------------


def test_init_layout(make: DriverFactory, tmp: Path) -> None:
    """Init makes root, cache/ and scratch/ 0700 and deletes stale ``scratch/**/*.vhdx``."""
    root = tmp / "deep" / "root"
    make(root)
    for path in (root, root / "cache", root / "scratch"):
        assert path.is_dir() and _mode(path) == 0o700, (path, oct(_mode(path)))
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
    exc = _raises(InvalidArgument, lambda: make(tmp / "root", list(options)))
    assert isinstance(exc, ValueError)
    assert str(exc) == message


def test_init_unknown_lcow_key(make: DriverFactory, tmp: Path) -> None:
    """An unknown ``lcow.*`` key is an error naming the key, whatever its case."""
    for key in ("lcow.foo", "LCOW.Foo", "lcow.sandbox_size"):
        exc = _raises(InvalidArgument, functools.partial(make, tmp / "root", [f"{key}=1"]))
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
        assert _mode(folder) == 0o700
        assert os.listdir(folder) == [CHAIN], os.listdir(folder)
        assert _mode(folder / CHAIN) == 0o600
        assert (folder / CHAIN).read_bytes() == _chain_bytes(chain)
    assert (root / "base" / CHAIN).read_bytes() == b"null"
    assert leftovers(root) == []


def test_create_missing_parent(make: DriverFactory, tmp: Path) -> None:
    """A named parent without a folder: LCOW's exact error; nothing is created."""
    root = tmp / "root"
    driver = make(root)
    exc = _raises(NotFound, lambda: driver.create("child", "ghost"))
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
    assert (root / "x" / CHAIN).read_bytes() == _chain_bytes([root / "p"])
    driver.apply_diff("p", None, io.BytesIO(layer_tar({"f": b"1"})))
    before = _sha256(root / "p" / LAYER_VHD)
    exc = _raises(AlreadyExists, lambda: driver.create("p", None))
    assert isinstance(exc, FileExistsError)
    assert _sha256(root / "p" / LAYER_VHD) == before
    assert _read(driver, "p", "/f") == b"1"


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
    assert sorted(_names(driver, "win")) == ["base-file", "mid-file"]
    driver.create("child", "win")
    chain = [root / "win", root / "mid", root / "base"]
    assert (root / "child" / CHAIN).read_bytes() == _chain_bytes(chain)
    assert _read(driver, "child", "/base-file") == b"b"


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
    assert _read(moved, "child", "/f") == b"base"
    assert _read(moved, "child", "/g") == b"child"
    assert moved.changes("child", "base") != []
    moved.create("grandchild", "child")
    assert (new / "grandchild" / CHAIN).read_bytes() == _chain_bytes([new / "child", new / "base"])


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
            exc = _raises(CorruptImage, call)
            assert str(exc).startswith(prefix), (content, str(exc))
        assert not (root / "badchild").exists()
        assert driver.view_count("bad") == 0
    path.unlink()
    assert driver.parent_chain("bad") == []
    assert _names(driver, "bad") == []


def test_bad_ids(make: DriverFactory, tmp: Path, layer_id: str) -> None:
    """Ids outside the rule of :func:`lcow.storage.dataroot.validate_id` (not one path
    component, a name of the root's own folders or temporaries, unprintable, too long) are
    rejected by every operation that takes one; nothing is created or removed."""
    root = tmp / "root"
    driver = make(root)
    driver.create("victim", None)
    before = _visible(root)
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
        exc = _raises(InvalidArgument, call)
        assert isinstance(exc, ValueError)
    assert _visible(root) == before
    assert leftovers(root) == []
    assert driver.exists("victim")


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
    assert _listing(folder) == {CHAIN, LAYER_VHD}
    assert _mode(folder) == 0o700
    assert (folder / CHAIN).read_bytes() == b"null"
    _check_layer_vhd(folder / LAYER_VHD)
    assert leftovers(root) == []
    assert sorted(_names(driver, "base")) == ["big", "etc"]
    assert _read(driver, "base", "/etc/hostname") == b"lcow\n"


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
    with _pipe_feeder(padded) as (fd, written):
        assert driver.apply_diff("upper", "base", fd) == unpack_size(data)
        assert os.read(fd, 1) == b"", "ApplyDiff did not read the stream to its end"
        assert written[0] == len(padded)
    assert sorted(_names(driver, "upper")) == ["d", "hard", "link", "z"]
    assert _names(driver, "upper", "/d") == ["new"]


def test_apply_diff_replaces_sandbox(make: DriverFactory, tmp: Path) -> None:
    """ApplyDiff on a layer with a sandbox replaces it by ``layer.vhd``."""
    root = tmp / "root"
    driver = make(root)
    driver.create_read_write("rw", None, None)
    assert (root / "rw" / SANDBOX_VHDX).exists()
    data = layer_tar({"applied": b"yes"})
    assert driver.apply_diff("rw", None, io.BytesIO(data)) == unpack_size(data)
    assert _listing(root / "rw") == {CHAIN, LAYER_VHD}
    _check_layer_vhd(root / "rw" / LAYER_VHD)
    assert _names(driver, "rw") == ["applied"]
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
        _raises(LcowError, functools.partial(driver.apply_diff, "fresh", None, io.BytesIO(stream)))
        assert os.listdir(root / "fresh") == [CHAIN]
    assert _names(driver, "fresh") == []

    driver.create("ro", None)
    driver.apply_diff("ro", None, io.BytesIO(good))
    before = _sha256(root / "ro" / LAYER_VHD)
    for stream in broken:
        _raises(LcowError, functools.partial(driver.apply_diff, "ro", None, io.BytesIO(stream)))
        assert _sha256(root / "ro" / LAYER_VHD) == before
        assert _listing(root / "ro") == {CHAIN, LAYER_VHD}
    assert _read(driver, "ro", "/keep") == b"k" * 3000
    assert leftovers(root) == []


def test_apply_diff_failure_keeps_sandbox(make: DriverFactory, tmp: Path) -> None:
    """A failed ApplyDiff on a writable layer keeps its sandbox."""
    root = tmp / "root"
    driver = make(root)
    driver.create_read_write("rw", None, None)
    before = _sha256(root / "rw" / SANDBOX_VHDX)
    truncated = layer_tar({"a": b"a" * 10_000})[:4000]
    _raises(LcowError, lambda: driver.apply_diff("rw", None, io.BytesIO(truncated)))
    assert _listing(root / "rw") == {CHAIN, SANDBOX_VHDX}
    assert _sha256(root / "rw" / SANDBOX_VHDX) == before
    assert leftovers(root) == []


def test_apply_diff_missing_layer(make: DriverFactory, tmp: Path) -> None:
    """ApplyDiff into an id that was never created fails and creates nothing."""
    root = tmp / "root"
    driver = make(root)
    _raises(NotFound, lambda: driver.apply_diff("ghost", None, io.BytesIO(layer_tar({}))))
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
    assert _listing(root / "rw") == {CHAIN, SANDBOX_VHDX}
    assert (root / "rw" / CHAIN).read_bytes() == _chain_bytes([root / "base"])
    assert template.is_file()
    for path in (sandbox, template):
        assert _vhdx_virtual_size(path) == DEFAULT_SANDBOX
        assert os.stat(path).st_blocks * 512 <= SANDBOX_ON_DISK_LIMIT, path
    assert _sha256(sandbox) == _sha256(template)
    assert _sandbox_root_names(sandbox) == [b"lost+found"]
    driver.create_read_write("rw2", None, {})
    assert _sha256(root / "rw2" / SANDBOX_VHDX) == _sha256(template)
    assert (root / "rw2" / CHAIN).read_bytes() == b"null"
    assert leftovers(root) == []


def test_create_read_write_sized(make: DriverFactory, tmp: Path) -> None:
    """``lcow.sandboxsize=25`` (any key case) gives a 25 GiB sandbox that is never cached;
    ``lcow.sandboxsize=20`` is the default."""
    root = tmp / "root"
    driver = make(root)
    driver.create_read_write("big", None, {"lcow.sandboxsize": "25"})
    assert _vhdx_virtual_size(root / "big" / SANDBOX_VHDX) == 25 * GIB
    assert os.stat(root / "big" / SANDBOX_VHDX).st_blocks * 512 <= SANDBOX_ON_DISK_LIMIT
    assert not (root / "cache" / SANDBOX_VHDX).exists(), "a 25 GB sandbox seeded the cache"
    driver.create_read_write("bigger", None, {"LCOW.SandboxSize": "30"})
    assert _vhdx_virtual_size(root / "bigger" / SANDBOX_VHDX) == 30 * GIB
    driver.create_read_write("twenty", None, {"lcow.sandboxsize": "20"})
    assert _vhdx_virtual_size(root / "twenty" / SANDBOX_VHDX) == DEFAULT_SANDBOX
    assert (root / "cache" / SANDBOX_VHDX).is_file()
    assert leftovers(root) == []


def test_create_read_write_exact_size(make: DriverFactory, tmp: Path) -> None:
    """Docker's ``size`` sets the sandbox's exact virtual size (binary multiples), below 20 GB
    too, and wins over ``lcow.sandboxsize``; never cached."""
    root = tmp / "root"
    driver = make(root)
    driver.create_read_write("small", None, {"size": "512M"})
    assert _vhdx_virtual_size(root / "small" / SANDBOX_VHDX) == 512 * MIB
    driver.create_read_write("both", None, {"size": "1G", "lcow.sandboxsize": "25"})
    assert _vhdx_virtual_size(root / "both" / SANDBOX_VHDX) == GIB
    assert not (root / "cache" / SANDBOX_VHDX).exists()
    assert leftovers(root) == []


def test_sandbox_option_error(make: DriverFactory, tmp: Path, value: str, template: str) -> None:
    """A bad ``lcow.sandboxsize`` fails with LCOW's exact message and, unlike LCOW, leaves no
    layer behind; a Create-only folder that existed before is kept as it was (one row of
    :data:`SANDBOX_OPTION_ERRORS`)."""
    root = tmp / "root"
    driver = make(root)
    exc = _raises(
        InvalidArgument, lambda: driver.create_read_write("sb", None, {"lcow.sandboxsize": value})
    )
    assert str(exc) == template.format(id="sb", v=value)
    assert not driver.exists("sb")
    driver.create("kept", None)
    _raises(
        InvalidArgument, lambda: driver.create_read_write("kept", None, {"lcow.sandboxsize": value})
    )
    assert driver.exists("kept")
    assert not (root / "kept" / SANDBOX_VHDX).exists()
    assert leftovers(root) == []


# -- Remove and Cleanup --------------------------------------------------------------------------


def test_remove(make: DriverFactory, tmp: Path) -> None:
    """Remove deletes read-only, writable and content-less layers without a ``-removing``
    trace; an unknown id succeeds and changes nothing."""
    root = tmp / "root"
    driver = make(root)
    before = _visible(root)
    driver.remove("never-created")
    assert _visible(root) == before
    driver.create("empty", None)
    driver.create("ro", None)
    driver.apply_diff("ro", None, io.BytesIO(layer_tar({"f": b"x"})))
    driver.create_read_write("rw", "ro", None)
    for layer_id in ("rw", "ro", "empty"):
        driver.remove(layer_id)
        assert not (root / layer_id).exists()
        assert not (root / (layer_id + REMOVING)).exists()
        assert not driver.exists(layer_id)
    driver.remove("ro")
    assert leftovers(root) == []
    assert (root / "cache" / SANDBOX_VHDX).is_file(), "Remove must not touch the template"


def test_cleanup_sweeps(make: DriverFactory, tmp: Path) -> None:
    """Cleanup deletes every ``*-removing`` directory and the temporaries interrupted writes
    leave, and nothing else; on a missing root it succeeds."""
    root = tmp / "root"
    driver = make(root)
    driver.create("keep", None)
    driver.apply_diff("keep", None, io.BytesIO(layer_tar({"f": b"x"})))
    (root / ("gone" + REMOVING) / "sub").mkdir(parents=True)
    (root / ("gone" + REMOVING) / "sub" / LAYER_VHD).write_bytes(b"x" * 100)
    (root / ("empty" + REMOVING)).mkdir()
    (root / ("plainfile" + REMOVING)).write_bytes(b"a file, not a folder")
    (root / "keep" / ".layer.vhd.tmp-0123456789ab").write_bytes(b"partial")
    (root / "keep" / ".layerchain.json.tmp-0123456789ab").write_bytes(b"partial")
    (root / "cache" / ".sandbox.vhdx.tmp-0123456789ab.raw").write_bytes(b"partial")
    driver.cleanup()
    assert not (root / ("gone" + REMOVING)).exists()
    assert not (root / ("empty" + REMOVING)).exists()
    assert (root / ("plainfile" + REMOVING)).is_file()
    (root / ("plainfile" + REMOVING)).unlink()
    assert leftovers(root) == []
    assert _listing(root / "keep") == {CHAIN, LAYER_VHD}
    assert _read(driver, "keep", "/f") == b"x"
    other = make(tmp / "vanishing")
    os.rename(tmp / "vanishing", tmp / "elsewhere")
    other.cleanup()


# -- Get and Put ---------------------------------------------------------------------------------


def test_get_put_counts(make: DriverFactory, tmp: Path) -> None:
    """Two Gets and one Put keep the view; the second Put releases it; Put without Get is a
    no-op; Cleanup releases every view."""
    driver = make(tmp / "root")
    driver.create("l", None)
    driver.apply_diff("l", None, io.BytesIO(layer_tar({"f": b"data"})))
    driver.put("l")
    driver.put("never-created")
    assert driver.view_count("l") == 0
    first = driver.get("l")
    second = driver.get("l", "mount-label-ignored")
    assert driver.view_count("l") == 2
    assert first.path == second.path
    driver.put("l")
    assert driver.view_count("l") == 1
    assert first.readfile("/f") == b"data"
    driver.put("l")
    assert driver.view_count("l") == 0
    driver.put("l")
    assert driver.view_count("l") == 0
    driver.get("l")
    driver.get("l")
    driver.cleanup()
    assert driver.view_count("l") == 0
    assert _read(driver, "l", "/f") == b"data"


def test_remove_tears_down_views(make: DriverFactory, tmp: Path) -> None:
    """Remove drops every view of the id whatever the count; later Puts are no-ops and a
    re-created id starts empty."""
    root = tmp / "root"
    driver = make(root)
    driver.create("l", None)
    driver.apply_diff("l", None, io.BytesIO(layer_tar({"f": b"data"})))
    driver.get("l")
    driver.get("l")
    driver.remove("l")
    assert driver.view_count("l") == 0
    assert not (root / "l").exists() and leftovers(root) == []
    driver.put("l")
    driver.create("l", None)
    assert _names(driver, "l") == []


def test_get_create_only(make: DriverFactory, tmp: Path) -> None:
    """Get on a Create-only layer gives an empty root 0755 owned by 0:0 (the original failed);
    a Create-only child shows its parent's content."""
    driver = make(tmp / "root")
    driver.create("empty", None)
    view = driver.get("empty")
    try:
        info = view.lstat("/")
        assert stat.S_ISDIR(info.mode) and stat.S_IMODE(info.mode) == 0o755
        assert (info.uid, info.gid) == (0, 0)
        assert view.readdir("/") == []
        _raises(NotFound, lambda: view.lstat("/missing"))
    finally:
        driver.put("empty")
    driver.apply_diff("empty", None, io.BytesIO(layer_tar({"f": b"x"})))
    driver.create("child", "empty")
    assert _names(driver, "child") == ["f"]


def test_get_missing_ancestor(make: DriverFactory, tmp: Path) -> None:
    """A chain naming a folder that no longer exists fails Get with LCOW's layer-details error
    rather than silently dropping that layer's content."""
    root = tmp / "root"
    driver = make(root)
    driver.create("base", None)
    driver.apply_diff("base", None, io.BytesIO(layer_tar({"f": b"x"})))
    driver.create("child", "base")
    os.rename(root / "base", tmp / "base-moved-away")
    exc = _raises(LcowError, lambda: driver.get("child"))
    expected = f"lcowdriver: get: child failed to get layer details for {root / 'base'}"
    assert str(exc).startswith(expected), str(exc)
    assert driver.view_count("child") == 0


def test_longest_id(make: DriverFactory, tmp: Path) -> None:
    """An id of :data:`LONGEST_ID`'s length works in every operation: the temporary and
    ``-removing`` names derived from it fit ``NAME_MAX``."""
    root = tmp / "root"
    driver = make(root)
    base, child = LONGEST_ID, "C" * len(LONGEST_ID)
    driver.create(base, None)
    data = layer_tar({"f": b"long"})
    assert driver.apply_diff(base, None, io.BytesIO(data)) == unpack_size(data)
    assert _read(driver, base, "/f") == b"long"
    driver.create(child, base)
    assert [str(c) for c in driver.changes(child, base)] == []
    assert driver.diff_size(base, None) == 4
    driver.remove(child)
    driver.remove(base)
    driver.cleanup()
    assert not driver.exists(base)
    assert leftovers(root) == []


# -- Diff, Changes, DiffSize ---------------------------------------------------------------------


def test_empty_layer_diff(make: DriverFactory, tmp: Path) -> None:
    """An empty layer has an empty Diff (a valid tar with no entries), no Changes and DiffSize
    0, against no parent and against its direct parent."""
    driver = make(tmp / "root")
    driver.create("base", None)
    driver.create("child", "base")
    for layer_id, parent in (("base", None), ("child", "base")):
        with driver.diff(layer_id, parent) as stream:
            data = stream.read()
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            assert tar.getmembers() == []
        assert driver.changes(layer_id, parent) == []
        assert driver.diff_size(layer_id, parent) == 0


def test_empty_child_of_content(make: DriverFactory, tmp: Path) -> None:
    """An empty child of a populated base: nothing against the base; against no parent (not
    the direct one) the view's whole content."""
    driver = make(tmp / "root")
    driver.create("base", None)
    data = layer_tar({"d": None, "d/f": b"12345", "g": b"67"})
    driver.apply_diff("base", None, io.BytesIO(data))
    driver.create("child", "base")
    assert driver.changes("child", "base") == []
    assert driver.diff_size("child", "base") == 0
    changes = sorted((c.path, int(c.kind)) for c in driver.changes("child", None))
    assert changes == [("/d", 1), ("/d/f", 1), ("/g", 1)]
    assert driver.diff_size("child", None) == 7
    with driver.diff("child", None) as stream:
        exported = stream.read()
    with tarfile.open(fileobj=io.BytesIO(exported), mode="r:") as tar:
        assert sorted(m.name.rstrip("/") for m in tar.getmembers()) == ["d", "d/f", "g"]


def test_missing_parent_is_not_found(make: DriverFactory, tmp: Path) -> None:
    """Diff, Changes and DiffSize against a parent that does not exist (or whose chain names a
    folder that is gone) fail NotFound naming it, instead of comparing with an empty tree."""
    root = tmp / "root"
    driver = make(root)
    driver.create("base", None)
    driver.apply_diff("base", None, io.BytesIO(layer_tar({"f": b"x"})))
    driver.create("top", "base")
    calls: list[Callable[[], object]] = [
        lambda: driver.changes("top", "deadbeef"),
        lambda: driver.diff_size("top", "deadbeef"),
        lambda: driver.diff("top", "deadbeef"),
    ]
    for call in calls:
        exc = _raises(NotFound, call)
        assert "deadbeef" in str(exc), str(exc)
    driver.create("other", None)
    os.rename(root / "base", tmp / "base-moved-away")
    for op in ("changes", "diff_size", "diff"):
        exc = _raises(NotFound, functools.partial(getattr(driver, op), "top", "other"))
        assert str(root / "base") in str(exc), str(exc)
