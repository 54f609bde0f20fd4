"""``lcow --root DIR tree ID [PATH] [-L N]``: the tree of a layer's view, read through Get's union.

Prints the merged directory tree under PATH (default ``/``) like ``tree``: symlinks with their
targets, then a count of directories and files. ``-L N`` stops N levels down. ``--json``: a flat
list, depth first, of ``{"Path", "Type", "Mode", "Size", "Uid", "Gid", "Target"}`` (``Mode``: the
permission bits; ``Target``: symlinks only).
"""

from __future__ import annotations

import argparse
import posixpath
import stat
from collections.abc import Iterator
from typing import Any

from lcow.backends.base import ContainerFS, FileInfo
from lcow.cli._driver import add_id, add_json, emit, open_driver
from lcow.cli.status import ExitStatus

__all__ = ["SUMMARY", "add_arguments", "run", "walk"]

SUMMARY = "print the tree of a layer's view under a path"

_TYPES = {
    stat.S_IFDIR: "dir",
    stat.S_IFREG: "file",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``lcow tree``.

    Args:
        parser: the command's parser.
    """
    add_id(parser)
    parser.add_argument("path", metavar="PATH", nargs="?", default="/", help="default: /")
    parser.add_argument(
        "-L", "--level", type=int, default=None, metavar="N", help="descend at most N levels"
    )
    add_json(parser)


def walk(
    view: ContainerFS, path: str, *, level: int | None = None, depth: int = 1
) -> Iterator[tuple[int, str, FileInfo]]:
    """Yield ``(depth, path, info)`` for everything under directory ``path``, depth first.

    Iterative, so an image's depth never meets the interpreter's recursion limit; how deep a
    view goes, and that it holds no loops, is the view's to bound.
    """
    if level is not None and depth > level:
        return
    stack = [(depth, path, iter(view.readdir(path)))]
    while stack:
        at, parent, listing = stack[-1]
        info = next(listing, None)
        if info is None:
            stack.pop()
            continue
        child = posixpath.join(parent, info.name)
        yield at, child, info
        if info.is_dir and (level is None or at < level):
            stack.append((at + 1, child, iter(view.readdir(child))))


def _record(view: ContainerFS, path: str, shown: str, info: FileInfo) -> dict[str, Any]:
    record: dict[str, Any] = {
        "Path": shown,
        "Type": _TYPES.get(stat.S_IFMT(info.mode), "unknown"),
        "Mode": stat.S_IMODE(info.mode),
        "Size": info.size,
        "Uid": info.uid,
        "Gid": info.gid,
    }
    if stat.S_ISLNK(info.mode):
        record["Target"] = view.readlink(path)
    return record


def run(args: argparse.Namespace) -> int:
    """Run ``lcow tree``.

    Args:
        args: the parsed command line.

    Returns:
        :attr:`ExitStatus.OK`; failures are raised for the CLI boundary to map.
    """
    driver = open_driver(args)
    view = driver.get(args.id)
    shown = posixpath.normpath("/" + args.path.lstrip("/"))
    try:
        start = view.resolve_path(args.path)  # a symlinked directory is listed as given
        top = view.stat(start)
        entries = list(walk(view, start, level=args.level)) if top.is_dir else []
        records = [
            _record(view, path, posixpath.join(shown, posixpath.relpath(path, start)), info)
            for _, path, info in entries
        ]
    finally:
        driver.put(args.id)
    if args.json:
        emit(args, records, None)
        return ExitStatus.OK
    lines = [args.path]
    last_at: dict[int, bool] = {}
    for index, ((depth, _, info), record) in enumerate(zip(entries, records, strict=True)):
        later = entries[index + 1 :]
        is_last = next((d for d, _, _ in later if d <= depth), 0) < depth
        last_at[depth] = is_last
        prefix = "".join("    " if last_at[d] else "│   " for d in range(1, depth))
        name = info.name + (f" -> {record['Target']}" if "Target" in record else "")
        lines.append(f"{prefix}{'└── ' if is_last else '├── '}{name}")
    dirs = sum(1 for r in records if r["Type"] == "dir")
    lines += ["", f"{dirs} directories, {len(records) - dirs} files"]
    emit(args, records, lines)
    return ExitStatus.OK
