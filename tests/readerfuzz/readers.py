"""Every reader of a layer image, run on one mutant, each outcome classified.

A :class:`Target` is a data root holding a valid base layer ``base`` and, above it, the layer
``m`` whose ``layer.vhd`` is the mutant. :data:`READERS` are what reads a layer image, as a
client would call them:

``walk``      ``Ext4Reader.walk`` (stat, link targets, xattrs), ``scan``, ``content_size``
``cat``       every regular file read through ``Ext4Reader.open_file``, every link target
``tree``      ``lcow --root R tree m`` (the command line, in process)
``view``      ``Driver.get`` with the userspace backend: ``readdir``/``lstat``/``stat``/
              ``readlink``/``open``+read of every entry, ``archive_path("/")``, ``lcow cat`` of
              a few files, ``put``
``fsspec``    ``ViewFileSystem`` over the view: ``find``, ``walk``, ``ls``, ``cat_file``
``diff``      ``Driver.write_diff`` against ``None`` (merged views) and against ``base`` (export)
``changes``   ``Driver.changes`` against ``None`` and ``base``
``diffsize``  ``Driver.diff_size`` against ``None`` and ``base``
``vhd2tar``   ``lcow vhd2tar -i layer.vhd -o OUT`` (the command line, in process)

A reader **passes** when it returns, or raises an :class:`~lcow.errors.LcowError` with a message
(for the command line: exit 3, 4 or 5 with an ``lcow: `` message). Two bounds are the harness's,
not lcow's: output stops at :data:`OUTPUT_CAP` bytes (``capped``: a hostile image may declare a
terabyte of sparse file, which a Diff must then stream), and reading a file stops at
:data:`READ_CAP`. ``stat`` may raise ``OSError(ELOOP)`` for a symlink cycle, as the kernel does
(documented; counted apart as ``ELOOP``). Anything else — another exception, exit 1 — is a
``crash`` with its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lcow.backends.fsspec_view import ViewFileSystem
from lcow.cli.main import main as lcow_main
from lcow.cli.tree_cmd import walk as tree_walk
from lcow.errors import LcowError
from lcow.formats.ext4.reader import Ext4Reader
from lcow.graphdriver.driver import Driver

__all__ = ["OUTPUT_CAP", "READERS", "READ_CAP", "OutputCapped", "Target", "run_reader"]

OUTPUT_CAP = 64 << 20  # bytes of tar one export may write before the harness stops it
READ_CAP = 16 << 20  # bytes of one file a reader reads
_TOTAL_READ_CAP = 64 << 20  # bytes of all files one reader reads
_CLI_CAT_FILES = 3
LAYER = "m"
PARENT = "base"


class OutputCapped(Exception):
    """The harness stopped an export at :data:`OUTPUT_CAP` bytes (not a failure)."""


@dataclass(frozen=True)
class Target:
    """Where the mutant lies: ``root/m/layer.vhd`` in a data root, and a scratch folder."""

    root: Path
    scratch: Path

    @property
    def image(self) -> Path:
        """The mutant."""
        return self.root / LAYER / "layer.vhd"


class _Budget:
    def __init__(self, total: int) -> None:
        self.left = total

    def take(self, n: int) -> bool:
        self.left -= n
        return self.left > 0


def _capped_writer() -> Callable[[bytes], object]:
    written = 0

    def write(data: bytes) -> None:
        nonlocal written
        written += len(data)
        if written > OUTPUT_CAP:
            raise OutputCapped(f"output past {OUTPUT_CAP} bytes")

    return write


def _read_stream(stream: BinaryIO | io.BufferedIOBase | io.RawIOBase, budget: _Budget) -> None:
    done = 0
    while done < READ_CAP:
        chunk = stream.read(1 << 20)
        if not chunk:
            return
        done += len(chunk)
        if not budget.take(len(chunk)):
            return


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """Swallow stdout (bytes too), capture stderr for the command line's message."""
    err = io.StringIO()
    with open(os.devnull, "wb") as sink:
        out = io.TextIOWrapper(sink, write_through=True)
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        try:
            yield err
        finally:
            sys.stdout, sys.stderr = saved
            out.detach()


class CliFailure(Exception):
    """The command line exited 1 (an internal error or an unmapped exception)."""


def _cli(*argv: str) -> str:
    """Run ``lcow argv`` in process; the outcome for exits 3, 4 and 5 (errors with a message)."""
    with _quiet() as err:
        status = lcow_main(list(argv))
    text = err.getvalue()
    if status == 0:
        return "ok"
    # One "lcow: <message>" (a name in it may hold a newline: escaping is the output's job).
    if status in (3, 4, 5) and text.startswith("lcow: ") and len(text.strip()) > 6:
        return f"exit {status}"
    if "File too large" in text:
        raise OutputCapped(text.strip())
    raise CliFailure(f"exit {status}: {text[-3000:]}")


# -- the readers -------------------------------------------------------------------------------


def _walk(t: Target) -> str:
    with Ext4Reader.open(t.image) as reader:
        for entry in reader.walk(b"/"):
            _ = entry.xattrs, entry.link_target
        for _ in reader.scan(b"/", capability=True):
            pass
        reader.content_size(b"/")
    return "ok"


def _cat(t: Target) -> str:
    budget = _Budget(_TOTAL_READ_CAP)
    with Ext4Reader.open(t.image) as reader:
        for path, inode in reader.walk_inodes(b"/"):
            if inode.is_reg:
                with reader.open_file(inode, path=path) as fh:
                    _read_stream(fh, budget)
            elif inode.is_symlink:
                reader.readlink(inode, path=path)
    return "ok"


def _tree(t: Target) -> str:
    # --json: the plain listing prints names as they are, which is the output escaping work's
    return _cli("--root", str(t.root), "tree", "--json", LAYER)


def _view(t: Target) -> str:
    driver = Driver(t.root)
    view = driver.get(LAYER)
    budget = _Budget(_TOTAL_READ_CAP)
    small_files: list[str] = []
    try:
        for _, path, info in tree_walk(view, "/"):
            view.lstat(path)
            if stat.S_ISLNK(info.mode):
                view.readlink(path)
                try:
                    view.stat(path)
                except LcowError:
                    pass  # a dangling link is no failure; the walk goes on
                except OSError as exc:
                    if exc.errno != errno.ELOOP:  # a cycle of links: the kernel's ELOOP
                        raise
            elif stat.S_ISREG(info.mode):
                with view.open(path) as fh:
                    _read_stream(fh, budget)
                if info.size <= 1 << 20 and len(small_files) < _CLI_CAT_FILES:
                    small_files.append(path)
        view.archive_path("/", _capped_writer())
    finally:
        driver.put(LAYER)
    for path in small_files:
        _cli("--root", str(t.root), "cat", LAYER, path)
    return "ok"


def _fsspec(t: Target) -> str:
    driver = Driver(t.root)
    view = driver.get(LAYER)
    try:
        fs = ViewFileSystem(view)
        found = fs.find("/", detail=True, withdirs=True)
        for _ in fs.walk("/", detail=True):
            pass
        for name, info in list(found.items())[:200]:
            if info["type"] == "directory":
                fs.ls(name)
            elif info["type"] == "file":
                fs.cat_file(name, 0, 1 << 16)
    finally:
        driver.put(LAYER)
    return "ok"


def _diff(t: Target) -> str:
    driver = Driver(t.root)
    outcomes = []
    for parent in (None, PARENT):
        try:
            driver.write_diff(LAYER, parent, _capped_writer())
            outcomes.append("ok")
        except OutputCapped:
            outcomes.append("capped")
    return "ok" if outcomes == ["ok", "ok"] else "/".join(outcomes)


def _changes(t: Target) -> str:
    driver = Driver(t.root)
    driver.changes(LAYER, None)
    driver.changes(LAYER, PARENT)
    return "ok"


def _diffsize(t: Target) -> str:
    driver = Driver(t.root)
    driver.diff_size(LAYER, None)
    driver.diff_size(LAYER, PARENT)
    return "ok"


def _vhd2tar(t: Target) -> str:
    out = t.scratch / "vhd2tar.tar"
    try:
        return _cli("vhd2tar", "-i", str(t.image), "-o", str(out))
    finally:
        with contextlib.suppress(FileNotFoundError):
            out.unlink()


READERS: dict[str, Callable[[Target], str]] = {
    "walk": _walk,
    "cat": _cat,
    "tree": _tree,
    "view": _view,
    "fsspec": _fsspec,
    "diff": _diff,
    "changes": _changes,
    "diffsize": _diffsize,
    "vhd2tar": _vhd2tar,
}


def run_reader(name: str, target: Target) -> tuple[str, str]:  # noqa: PLR0911 - one return per outcome class a reader may end in
    """Run reader ``name`` on ``target``: ``(outcome, detail)``.

    Outcomes: ``ok``, ``exit N`` (the command line's clean error), the ``LcowError`` category's
    name, ``capped``, ``ELOOP`` — all passes — or ``crash`` (detail: the traceback) and
    ``empty-message`` (an LcowError without a message): failures.
    """
    try:
        return READERS[name](target), ""
    except OutputCapped as exc:
        return "capped", str(exc)
    except LcowError as exc:
        if not str(exc).strip():
            return "empty-message", traceback.format_exc()
        return type(exc).__name__, str(exc)[:500]
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "ELOOP", str(exc)[:500]
        if exc.errno == errno.EFBIG:
            return "capped", str(exc)
        return "crash", traceback.format_exc()
    except CliFailure as exc:
        return "crash", str(exc)
    except Exception:
        return "crash", traceback.format_exc()
